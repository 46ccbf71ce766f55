"""An outside peer with a fresh key that joins a fedswarm network and sends it garbage.

Run as its own process (``python tests/p2p/hostile_peer.py HOME BOOTSTRAP_ADDR PEER_ID...``);
prints one JSON line: what it sent and what came back. It uses fedswarm's node only to join
(connect, learn addresses from the bootstrap's summary); everything hostile goes through raw
py-libp2p calls: ``pubsub.publish`` of arbitrary bytes on every topic, and raw RPC streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from pathlib import Path

import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Role
from fedswarm.protocol.topics import DIRECTORY_TOPIC, MARKET_TOPIC, PRESENCE_TOPIC, RPC_PROTOCOL

DEEP = b"[" * 100_000  # ~100 KB: once enough to SIGSEGV a node


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def gossip_payloads() -> list[bytes]:
    """Deep, huge and random messages, and well-formed JSON of the wrong shape."""
    return [DEEP, b'{"type":"chat","text":' + DEEP[:50_000], os.urandom(4096), os.urandom(400_000),
            b"x" * (2 << 20), b'{"type":"heartbeat"}', b'{"type":"mesh_summary","peers":[],"at":0}']


def rpc_payloads() -> list[bytes]:
    """Random and oversized frames, deep envelopes, a Ping declaring a 256 MiB blob."""
    ping_blob = json.dumps({"m": {"type": "ping", "nonce": 1}, "b": 256 << 20}).encode()
    amplify = json.dumps({"m": {"type": "ping", "nonce": 1, "payload_bytes": 256 << 20}, "b": None}).encode()
    return [os.urandom(1000), struct.pack(">I", 1 << 30) + os.urandom(1000), _frame(DEEP), _frame(ping_blob),
            _frame(amplify), _frame(b'{"m":{"type":"nope"},"b":null}'), _frame(os.urandom(5000))]


async def raw_rpc(node: Node, peer_id: str, data: bytes) -> str:
    """Send ``data`` on a fresh RPC stream; the first bytes of the answer (or what failed)."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    try:
        node.remember_addrs(peer_id)
        with trio.fail_after(10):
            stream = await node.host.new_stream(ID.from_base58(peer_id), [TProtocol(RPC_PROTOCOL)])
    except Exception as exc:
        return f"refused: {type(exc).__name__}"
    out = b""
    with contextlib.suppress(Exception):
        await stream.write(data)
        with trio.move_on_after(5):
            while len(out) < 4096:
                out += await stream.read(65536)
    with contextlib.suppress(Exception):
        await stream.reset()
    return out[4:200].decode("utf-8", "replace") or "reset"


async def attack(home: Path, bootstrap: str, targets: list[str]) -> dict[str, object]:
    node = Node(load_identity(home), Role.TRAINER, bootstrap=[bootstrap], heartbeat_interval=1.0)
    report: dict[str, object] = {"peer_id": node.peer_id}
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        others = set(targets) - node.bootstrap_ids
        with trio.move_on_after(30):  # learn every target's addresses from the bootstrap's summary
            while not others <= {r.peer_id for r in node.directory.records()}:
                await trio.sleep(0.2)
        published = 0
        for topic in (MARKET_TOPIC, PRESENCE_TOPIC, DIRECTORY_TOPIC):
            for data in gossip_payloads():
                with contextlib.suppress(Exception):
                    await node.pubsub.publish(topic, data)
                    published += 1
        report["published"] = published
        answers: dict[str, list[str]] = {}
        for peer in targets:
            answers[peer] = [await raw_rpc(node, peer, data) for data in rpc_payloads() * 2]
        report["rpc"] = answers
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    return report


def main(argv: list[str]) -> int:
    home, bootstrap, targets = Path(argv[0]), argv[1], argv[2:]
    report = trio.run(attack, home, bootstrap, targets)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
