"""RPC against a real trainer process from an in-process node on the same loopback swarm."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct

import httpx
import pytest
import trio

from conftest import Swarm, bootmesh_roles
from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node, RpcError
from fedswarm.protocol.messages import BlobDigest, Chat, EchoBlob, Ping, Pong, Role
from fedswarm.protocol.topics import MARKET_TOPIC

pytestmark = pytest.mark.slow


async def _probe_node(tmp_path, swarm: Swarm, nursery: trio.Nursery, name: str = "probe") -> Node:
    node = Node(load_identity(tmp_path / name), Role.CLIENT, bootstrap=[swarm.bootstrap.addr],
                heartbeat_interval=0.5)
    await nursery.start(node.serve)
    with trio.fail_after(15):
        while not {t.peer_id for t in swarm.trainers} <= {r.peer_id for r in node.directory.records()}:
            await trio.sleep(0.1)
    return node


async def test_rpc_round_trip_and_32mib_blob(tmp_path, swarm: Swarm) -> None:
    async with trio.open_nursery() as nursery:
        node = await _probe_node(tmp_path, swarm, nursery)
        target = swarm.trainers[0].peer_id

        reply, _ = await node.request(target, Ping(nonce=42))
        assert isinstance(reply, Pong) and reply.nonce == 42 and reply.role == Role.TRAINER

        payload = os.urandom(32 << 20)
        reply, _ = await node.request(target, EchoBlob(size=len(payload)), payload, timeout=120)
        assert isinstance(reply, BlobDigest)
        assert reply.size == len(payload) and reply.sha256 == hashlib.sha256(payload).hexdigest()

        # and the 32 MiB payload streamed back to us (a reply as large as its request)
        reply, blob = await node.request(target, EchoBlob(size=len(payload), echo=True), payload, timeout=120)
        assert blob == payload
        nursery.cancel_scope.cancel()


async def test_hostile_input_keeps_nodes_serving(tmp_path, swarm: Swarm) -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    from fedswarm.protocol.topics import RPC_PROTOCOL

    target = swarm.trainers[1]
    # 1) random bytes and an oversized garbage stream straight at the TCP port
    host, port = target.addr.split("/")[2], int(target.addr.split("/")[4])
    for junk in (os.urandom(4096), b"\x13/multistream/1.0.0\n" + os.urandom(1 << 16), b""):
        with socket.create_connection((host, port), timeout=5) as s, contextlib.suppress(OSError):
            s.sendall(junk)  # the node may reset the connection before it has read it all

    async with trio.open_nursery() as nursery:
        node = await _probe_node(tmp_path, swarm, nursery)
        pid = ID.from_base58(target.peer_id)
        node.remember_addrs(target.peer_id)

        async def raw(data: bytes, read: bool = True) -> bytes:
            stream = await node.host.new_stream(pid, [TProtocol(RPC_PROTOCOL)])
            await stream.write(data)
            out = b""
            if read:
                with trio.move_on_after(5):
                    try:
                        while True:
                            out += await stream.read(65536)
                    except Exception:
                        pass
            with contextlib.suppress(Exception):
                await stream.close()
            return out

        # 2) malformed RPC frames: random bytes, truncated, oversized, wrong type, bad JSON
        await raw(os.urandom(1000))
        await raw(struct.pack(">I", 100) + b'{"m":', read=False)  # truncated, then closed
        await raw(struct.pack(">I", 1 << 30) + b"x" * 100)  # oversized frame header
        answer = await raw(struct.pack(">I", 20) + b'{"m":{"type":"pong"}')
        unknown = await raw(_frame({"m": {"type": "does_not_exist"}, "b": None}))
        assert b"unknown" in unknown
        wrong = await raw(_frame({"m": {"type": "ping", "nonce": "NaN-ish"}, "b": None}))
        assert b"bad_request" in wrong
        del answer

        # 3) junk on the topics: random bytes, wrong types, a heartbeat forged for another peer
        for data in (os.urandom(300), b'{"type":"heartbeat"}', b'{"type":"chat","text":1}',
                     b'{"type":"heartbeat","peer_id":"%s","role":"bootstrap","addrs":[],"seq":1}' % target.peer_id.encode()):
            await node.pubsub.publish(MARKET_TOPIC, data)
            await node.pubsub.publish("fedswarm/job/burst/1", data)
        await node.publish("fedswarm/job/burst/1", Chat(text="still fine"))
        await trio.sleep(1.0)

        # Assert: that much garbage got the probe banned (its requests are refused now), and the
        # target still serves everyone else.
        with pytest.raises(RpcError):
            await node.request(target.peer_id, Ping(nonce=6), timeout=5)
        other = await _probe_node(tmp_path, swarm, nursery, "probe2")
        reply, _ = await other.request(target.peer_id, Ping(nonce=7))
        assert reply.nonce == 7  # type: ignore[attr-defined]
        with pytest.raises(RpcError):
            await other.request(target.peer_id, EchoBlob(size=10), b"12345")  # size lie -> structured error
        nursery.cancel_scope.cancel()

    assert target.popen.poll() is None
    limits = httpx.get(f"{target.api}/status", timeout=10).json()["limits"]
    assert node.peer_id in limits["banned"] and limits["counters"]["bans"] >= 1
    assert limits["counters"]["rpc_oversize"] >= 1 and limits["counters"]["gossip_invalid"] >= 1
    assert limits["recursion_limit"] <= 1000
    stats = (await trio.to_thread.run_sync(lambda: target.command("local")))
    assert stats["status"] == "ok"
    roles = await trio.to_thread.run_sync(bootmesh_roles, swarm.client)
    assert roles.get(target.peer_id) == "TRAINER"  # forged heartbeat did not change its role


def _frame(obj: dict) -> bytes:
    import json

    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data
