"""Gossipsub stays healthy: joining twice delivers once, the heartbeat keeps its configured
interval, and a stalled heartbeat is caught and the message cache aged (replay stays bounded).

In-process and fast (~3 s in all); the end-to-end churn test is in test_gossip_health_e2e.py,
and what pubsub keeps when a stream dies is in test_teardown.py."""

from __future__ import annotations

import collections
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import trio
from libp2p.pubsub.mcache import MessageCache
from libp2p.pubsub.pb import rpc_pb2

from conftest import wait_until
from fedswarm.api.app import create_app
from fedswarm.identity import load_identity
from fedswarm.p2p.gossip_health import GossipHealth
from fedswarm.p2p.node import GOSSIP_HEARTBEAT_S, Node
from fedswarm.protocol.messages import Chat, Role

TOPIC = "fedswarm/job/twice/1"


async def test_joining_a_topic_twice_delivers_each_message_once(tmp_path: Path) -> None:
    # Prepare: a bootstrap that publishes and a listener whose API joins the topic twice.
    async with trio.open_nursery() as nursery:
        boot = Node(load_identity(tmp_path / "boot"), Role.BOOTSTRAP, heartbeat_interval=0.5)
        await nursery.start(boot.serve)
        listener = Node(load_identity(tmp_path / "listener"), Role.CLIENT, bootstrap=[boot.addrs[0]],
                        heartbeat_interval=0.5)
        await nursery.start(listener.serve)
        app = create_app(listener)
        got: list[str] = []

        async def direct(sender: str, msg: Any) -> None:
            got.append(msg.text)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8123") as c:
            for _ in range(2):
                r = await c.post("/command", json={"cmd": "join", "args": [TOPIC]})
                assert r.status_code == 200 and r.json()["joined"] == TOPIC, r.text
            # ...and the node-level call with one handler, twice.
            await listener.subscribe(TOPIC, direct)
            await listener.subscribe(TOPIC, direct)
            await wait_until(lambda: any(listener.peer_id == p.to_base58() for p in boot.pubsub.peer_topics.get(TOPIC, ())),
                        15, "the bootstrap sees the subscription")

            # Execute
            for i in range(3):
                await boot.publish(TOPIC, Chat(text=f"m{i}"))
            await wait_until(lambda: len(got) >= 3, 15, "three messages")
            await trio.sleep(1.0)  # a second copy, if any, comes right behind the first

            # Assert: each message once, through the API and through the direct handler.
            texts = [m["data"]["text"] for m in (await c.post("/command", json={"cmd": "messages", "args": [TOPIC]})).json()["messages"]]
            assert sorted(texts) == ["m0", "m1", "m2"]
            assert sorted(got) == ["m0", "m1", "m2"]
            # leave + join again still delivers once
            await c.post("/command", json={"cmd": "leave", "args": [TOPIC]})
            await c.post("/command", json={"cmd": "join", "args": [TOPIC]})
            assert len(listener._topic_handlers[TOPIC]) == 1
        nursery.cancel_scope.cancel()


async def test_a_stopped_node_leaves_its_neighbours_connections_and_mesh(tmp_path: Path) -> None:
    # py-libp2p's host, cancelled, left its sockets open: the bootstrap kept a node that had
    # stopped (inside a process that goes on) connected and in its gossip mesh for good.
    async with trio.open_nursery() as nursery:
        boot = Node(load_identity(tmp_path / "boot"), Role.BOOTSTRAP, heartbeat_interval=0.5)
        await nursery.start(boot.serve)
        async with trio.open_nursery() as inner:
            peer = Node(load_identity(tmp_path / "peer"), Role.TRAINER, bootstrap=[boot.addrs[0]],
                        heartbeat_interval=0.5)
            await inner.start(peer.serve)
            in_mesh = lambda: any(peer.peer_id in {p.to_base58() for p in ps}  # noqa: E731
                                  for ps in boot.pubsub.router.mesh.values())
            await wait_until(in_mesh, 15, "the peer in the bootstrap's mesh")
            inner.cancel_scope.cancel()  # stop the peer; this process goes on
        await wait_until(lambda: peer.peer_id not in boot.connected_peers() and not in_mesh(), 5,
                    "the stopped peer dropped by the bootstrap")
        nursery.cancel_scope.cancel()


def test_adaptive_gossip_cannot_stretch_the_heartbeat(tmp_path: Path) -> None:
    # py-libp2p's adaptive gossip rescored a small network as unhealthy and set a 30 s heartbeat
    # (the message cache then kept 90 s of messages for every new subscriber).
    node = Node(load_identity(tmp_path / "n"), Role.BOOTSTRAP)
    _, _, router = node._build_host()
    router.mesh = {"fedswarm/market/1": set(), "fedswarm/directory/1": set()}  # joined, no peers yet
    router.last_health_update = 0  # due for a rescoring
    router._update_network_health()
    router._adapt_gossip_parameters()
    assert router.heartbeat_interval == GOSSIP_HEARTBEAT_S == 1
    assert node.gossip_status()["configured_interval_s"] == 1


def _msg(i: int, topic: str = "t") -> rpc_pb2.Message:
    return rpc_pb2.Message(from_id=b"peer", seqno=i.to_bytes(8, "big"), data=b"x", topicIDs=[topic])


def test_a_stalled_heartbeat_is_noticed_and_the_cache_aged() -> None:
    # Prepare: a router whose heartbeat (the only caller of mcache.shift) never runs.
    now = [0.0]
    stats: collections.Counter[str] = collections.Counter()
    router = SimpleNamespace(mcache=MessageCache(3, 5), heartbeat_interval=30, mesh={"t": set()})
    health = GossipHealth(1.0, stats, stall_after=5.0, clock=lambda: now[0])
    health.attach(router)
    router.mcache.shift()  # a real heartbeat: counted
    assert health.heartbeats == 1 and not health.check()

    # Execute: a message a second for 20 s, the watchdog checking each second.
    for i in range(20):
        router.mcache.put(_msg(i))
        now[0] += 1.0
        health.check()

    # Assert: stalled after 5 s, then the cache aged once a second: a new subscriber is
    # replayed the last 3 s (the window), not all 20 messages; the interval is put back.
    assert stats["gossip_heartbeat_stalled"] == 15 and health.forced_shifts == 15
    assert len(router.mcache.window("t")) == 2  # put after the last shift (1) + the slot before
    assert router.heartbeat_interval == 1
    assert health.heartbeats == 1  # our shifts are not counted as heartbeats
    st = health.status(["t"])
    assert st["replay_window"] == {"t": 2} and st["since_heartbeat_s"] == 20.0

    # A heartbeat again: no longer stalled.
    router.mcache.shift()
    assert not health.check() and health.heartbeats == 2

