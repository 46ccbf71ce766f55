"""Hostile input against in-process nodes: garbage gossip is dropped before relay, bad RPC
frames are refused by their caps, and a peer that keeps at it is banned and disconnected."""

from __future__ import annotations

import contextlib
import json
import os
import struct

import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.limits import LimitsConfig
from fedswarm.p2p.node import Node, RpcError
from fedswarm.protocol.messages import Chat, Ping, Pong, Role
from fedswarm.protocol.topics import MARKET_TOPIC, RPC_PROTOCOL


async def _until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def _raw_rpc(node: Node, peer_id: str, data: bytes) -> bytes:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    stream = await node.host.new_stream(ID.from_base58(peer_id), [TProtocol(RPC_PROTOCOL)])
    out = b""
    with contextlib.suppress(Exception):
        await stream.write(data)
        with trio.move_on_after(5):
            while True:
                out += await stream.read(65536)
    with contextlib.suppress(Exception):
        await stream.close()
    return out


async def test_garbage_is_not_relayed_and_its_sender_is_banned(tmp_path) -> None:
    async with trio.open_nursery() as nursery:
        boot = Node(load_identity(tmp_path / "b"), Role.BOOTSTRAP, heartbeat_interval=0.5,
                    limits=LimitsConfig(strikes_to_ban=10, ban_seconds=60))
        await nursery.start(boot.serve)
        trainer = Node(load_identity(tmp_path / "t"), Role.TRAINER, bootstrap=[boot.addrs[0]], heartbeat_interval=0.5)
        attacker = Node(load_identity(tmp_path / "a"), Role.TRAINER, bootstrap=[boot.addrs[0]], heartbeat_interval=0.5)
        await nursery.start(trainer.serve)
        await nursery.start(attacker.serve)
        await _until(lambda: boot.peer_id in attacker.connected_peers() and boot.peer_id in trainer.connected_peers(),
                     20, "both connecting to the bootstrap")

        # A valid message from the attacker reaches the trainer through the bootstrap...
        heard: list[str] = []

        async def on_market(sender: str, msg: object) -> None:
            if isinstance(msg, Chat):
                heard.append(msg.text)

        await trainer.subscribe(MARKET_TOPIC, on_market)
        await _until(lambda: trainer.peer_id in {p.to_base58() for p in boot.pubsub.peer_topics.get(MARKET_TOPIC, ())},
                     10, "the trainer joining the market topic")
        await trio.sleep(1.5)  # a gossipsub heartbeat: the mesh forms
        await attacker.publish(MARKET_TOPIC, Chat(text="hello"))
        await _until(lambda: "hello" in heard, 10, "a valid chat relayed by the bootstrap")

        # ... RPC garbage is refused by caps (a Ping may not carry a blob) and counted ...
        reply = await _raw_rpc(attacker, boot.peer_id, struct.pack(">I", 1 << 30) + b"x" * 100)
        assert b"too_large" in reply
        env = json.dumps({"m": {"type": "ping", "nonce": 1}, "b": 256 << 20}).encode()
        assert b"too_large" in await _raw_rpc(attacker, boot.peer_id, struct.pack(">I", len(env)) + env)
        deep = b"[" * 100_000
        await _raw_rpc(attacker, boot.peer_id, struct.pack(">I", len(deep)) + deep)
        pong, blob = await attacker.request(boot.peer_id, Ping(nonce=5))
        assert isinstance(pong, Pong) and blob is None
        assert boot.limits.counters["rpc_oversize"] == 2 and boot.limits.counters["rpc_bad_frame"] == 1

        # ... and garbage gossip (deep, random, wrong types, forged) is dropped, not relayed.
        garbage = [b"[" * 100_000, os.urandom(2000), b'{"type":"nope"}', b'{"type":"chat","text":1}',
                   b'{"type":"heartbeat","peer_id":"%s","role":"bootstrap","addrs":[],"seq":1}' % boot.peer_id.encode()]
        for data in garbage * 2:  # 3 RPC strikes + 10 gossip strikes > 10: banned
            await attacker.pubsub.publish(MARKET_TOPIC, data)
        await _until(lambda: boot.limits.is_banned(attacker.peer_id), 10, "the attacker's ban")
        assert boot.limits.counters["gossip_invalid"] + boot.limits.counters["gossip_rejected"] >= 7
        assert trainer.limits.counters["gossip_invalid"] == 0  # nothing was relayed to it
        assert trainer.limits.counters["gossip_rejected"] == 0 and trainer.stats["pubsub_invalid"] == 0
        assert heard == ["hello"]

        # The ban: connections closed and refused, RPC refused, status reports it.
        await _until(lambda: attacker.peer_id not in boot.connected_peers(), 10, "the attacker's disconnection")
        with contextlib.suppress(RpcError):
            await attacker.request(boot.peer_id, Ping(nonce=6), timeout=3)
        status = boot.limits_status()
        assert attacker.peer_id in status["banned"]  # type: ignore[operator]
        assert status["counters"]["bans"] == 1  # type: ignore[index]
        # The trainer is untouched and still talks to the bootstrap.
        pong, _ = await trainer.request(boot.peer_id, Ping(nonce=7))
        assert pong.nonce == 7  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_malformed_pubsub_frame_does_not_kill_the_node(tmp_path) -> None:
    # py-libp2p's pubsub reader lets a frame that is not a protobuf RPC raise out of its stream
    # handler, which kills the process (here: the test's trio run). Seen in the end-to-end
    # attack; sent here by hand on a raw meshsub stream. Now that stream ends, with a strike.
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    async with trio.open_nursery() as nursery:
        boot = Node(load_identity(tmp_path / "b"), Role.BOOTSTRAP, heartbeat_interval=0.5)
        await nursery.start(boot.serve)
        attacker = Node(load_identity(tmp_path / "a"), Role.TRAINER, bootstrap=[boot.addrs[0]], heartbeat_interval=0.5)
        await nursery.start(attacker.serve)
        await _until(lambda: boot.peer_id in attacker.connected_peers(), 20, "connecting")
        stream = await attacker.host.new_stream(ID.from_base58(boot.peer_id), [TProtocol("/meshsub/1.1.0")])
        junk = b"\xff" * 64  # a varint length, then bytes that do not parse as pubsub.pb.RPC
        await stream.write(bytes([len(junk)]) + junk)
        await _until(lambda: boot.limits.counters["gossip_bad_frame"] >= 1, 10, "the bad frame counted")
        other = Node(load_identity(tmp_path / "o"), Role.CLIENT, bootstrap=[boot.addrs[0]], heartbeat_interval=0.5)
        await nursery.start(other.serve)
        pong, _ = await other.request(boot.peer_id, Ping(nonce=9))
        assert pong.nonce == 9  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()
