"""Connections that a dead link keeps from closing are aborted, and pubsub never keeps a stream
on a connection that is gone.

In-process (two nodes on loopback, ~10 s). The dead link is a fake of the layer below: the yamux
session's frame writer of one connection blocks forever, as a write on a blackholed socket with
a full send buffer does. The real thing runs in ``tests/net`` (the bootstrap's 60 s outage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.p2p.teardown import close_connection, in_swarm, socket_stream_of
from fedswarm.protocol.messages import Chat, Role

TOPIC = "fedswarm/job/teardown/1"


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def _pair(tmp_path: Path, nursery: trio.Nursery) -> tuple[Node, Node, list[str]]:
    """A bootstrap and a client on one topic; what the bootstrap hears on it."""
    boot = Node(load_identity(tmp_path / "boot"), Role.BOOTSTRAP, heartbeat_interval=0.5)
    await nursery.start(boot.serve)
    client = Node(load_identity(tmp_path / "client"), Role.CLIENT, bootstrap=[boot.addrs[0]],
                  heartbeat_interval=0.5)
    await nursery.start(client.serve)
    heard: list[str] = []

    async def on_chat(sender: str, msg: Any) -> None:
        heard.append(msg.text)

    await boot.subscribe(TOPIC, on_chat)
    await client.subscribe(TOPIC, on_chat)
    bid = boot.host.get_id()
    await _wait(lambda: bid in client.pubsub.peer_topics.get(TOPIC, ()) and bid in client.pubsub.router.mesh.get(TOPIC, ()),
                15, "the bootstrap in the client's mesh")
    return boot, client, heard


async def _heard_after(client: Node, heard: list[str], text: str, timeout: float) -> None:
    """Publish ``text`` from the client until the bootstrap hears it (each try a new message)."""
    with trio.fail_after(timeout):
        i = 0
        while not any(h.startswith(text) for h in heard):
            await client.publish(TOPIC, Chat(text=f"{text} {i}"))
            i += 1
            await trio.sleep(0.5)


def _block_writes(conn: Any) -> None:
    async def blocked(data: bytes) -> None:
        await trio.sleep_forever()

    conn.muxed_conn._write_frame = blocked


async def test_a_connection_whose_close_blocks_is_aborted_and_redialled(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        boot, client, heard = await _pair(tmp_path, nursery)
        [conn] = client.host.get_network().get_connections(boot.host.get_id())
        assert socket_stream_of(conn) is not None
        _block_writes(conn)

        # The trap: a graceful close with a deadline is cut short and leaves the connection
        # listed ("connected"), and every later close() returns at once.
        with trio.move_on_after(0.5):
            await conn.close()
        assert in_swarm(conn)
        with trio.move_on_after(0.5):
            await conn.close()
        assert in_swarm(conn)

        # Execute: the product's close.
        with trio.fail_after(5):
            aborted = await close_connection(conn, grace=0.5)

        # Assert: aborted, gone from the swarm; the bootstrap sees the reset; the client
        # redials and the bootstrap hears its gossip again on the new connection.
        assert aborted and not in_swarm(conn)
        await _heard_after(client, heard, "after the abort", 15)
        [new] = client.host.get_network().get_connections(boot.host.get_id())
        assert new is not conn
        assert client.pubsub.peers[boot.host.get_id()].muxed_conn is new.muxed_conn
        # An abort is ours, not the peer's fault: nobody counts it as bad input.
        assert not [k for k in (*boot.limits.counters, *client.limits.counters) if k.startswith("gossip_")], (
            boot.limits.counters, client.limits.counters)
        nursery.cancel_scope.cancel()


async def test_dropping_a_peer_whose_link_is_dead_really_drops_it(tmp_path: Path) -> None:
    # The silence rules drop a peer's connections; on a dead link that did nothing before.
    async with trio.open_nursery() as nursery:
        boot, client, heard = await _pair(tmp_path, nursery)
        bid = boot.host.get_id()
        [conn] = client.host.get_network().get_connections(bid)
        _block_writes(conn)
        with trio.fail_after(10):
            await client._drop_connections(boot.peer_id)
        assert not in_swarm(conn) and client.stats["connections_aborted"] == 1
        await _heard_after(client, heard, "after the drop", 15)
        nursery.cancel_scope.cancel()


async def test_a_pubsub_stream_on_a_connection_that_is_gone_is_replaced(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        boot, client, heard = await _pair(tmp_path, nursery)
        bid = boot.host.get_id()
        network = client.host.get_network()
        [conn] = network.get_connections(bid)
        stale = client.pubsub.peers[bid]
        # A connection that left the swarm without pubsub being told (a close cut short after
        # the swarm forgot it); its socket keeps blocking every write.
        _block_writes(conn)
        network.remove_conn(conn)

        # Assert: the client redials (py-libp2p alone would then keep its stream on the old
        # connection: it opens a stream only for a peer it has none for); the reconnect loop's
        # check replaces the stream, and gossip flows again.
        await _wait(lambda: bool(network.get_connections(bid)), 15, "the client redialled")
        await _wait(lambda: client.pubsub.peers.get(bid) not in (None, stale), 10, "a new pubsub stream")
        assert client.pubsub.peers[bid].muxed_conn is network.get_connections(bid)[0].muxed_conn
        assert client.stats["pubsub_streams_repaired"] >= 1
        await _heard_after(client, heard, "on the new stream", 15)
        nursery.cancel_scope.cancel()
