"""Connections that a dead link keeps from closing are aborted, pubsub never keeps a stream on a
connection that is gone, and a dead stream costs a connected peer none of its subscriptions.

In-process (two nodes on loopback, ~10 s). The dead link is a fake of the layer below: the yamux
session's frame writer of one connection blocks forever, as a write on a blackholed socket with
a full send buffer does. The real thing runs in ``tests/net`` (the bootstrap's 60 s outage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from conftest import wait_until
from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.p2p.teardown import close_connection, in_swarm, socket_stream_of
from fedswarm.protocol.messages import Chat, Role

TOPIC = "fedswarm/job/teardown/1"


def _grafted(node: Node, peer: Node) -> bool:
    """Whether ``node``'s pubsub has ``peer`` joined to TOPIC and in its mesh there."""
    pid = peer.host.get_id()
    return pid in node.pubsub.peer_topics.get(TOPIC, ()) and pid in node.pubsub.router.mesh.get(TOPIC, ())


async def _pair(tmp_path: Path, nursery: trio.Nursery) -> tuple[Node, Node, list[str], list[str]]:
    """A bootstrap and a client on one topic, each in the other's mesh; what the bootstrap
    hears on it, and what the client hears."""
    boot = Node(load_identity(tmp_path / "boot"), Role.BOOTSTRAP, heartbeat_interval=0.5)
    await nursery.start(boot.serve)
    client = Node(load_identity(tmp_path / "client"), Role.CLIENT, bootstrap=[boot.addrs[0]],
                  heartbeat_interval=0.5)
    await nursery.start(client.serve)
    heard: tuple[list[str], list[str]] = ([], [])
    for node, got in zip((boot, client), heard, strict=True):
        async def on_chat(sender: str, msg: Any, got: list[str] = got) -> None:
            got.append(msg.text)

        await node.subscribe(TOPIC, on_chat)
    await wait_until(lambda: _grafted(client, boot) and _grafted(boot, client), 15, "each in the other's mesh")
    return boot, client, *heard


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
        boot, client, heard, _ = await _pair(tmp_path, nursery)
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
        boot, client, heard, _ = await _pair(tmp_path, nursery)
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
        boot, client, heard, _ = await _pair(tmp_path, nursery)
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
        await wait_until(lambda: bool(network.get_connections(bid)), 15, "the client redialled")
        await wait_until(lambda: client.pubsub.peers.get(bid) not in (None, stale), 10, "a new pubsub stream")
        assert client.pubsub.peers[bid].muxed_conn is network.get_connections(bid)[0].muxed_conn
        assert client.stats["pubsub_streams_repaired"] >= 1
        await _heard_after(client, heard, "on the new stream", 15)
        nursery.cancel_scope.cancel()


async def test_a_dead_pubsub_stream_keeps_a_connected_peers_subscriptions(tmp_path: Path) -> None:
    # py-libp2p, when a write on its pubsub stream to a peer fails while the peer stays
    # connected, opens a new stream but forgets what the peer joined (that came once, on the
    # peer's own stream, which lives on): it never forwarded to that peer again. Seen after a
    # redial left two connections and one died: a bootstrap's summary lost a node.
    async with trio.open_nursery() as nursery:
        boot, client, _, got = await _pair(tmp_path, nursery)
        cid = client.host.get_id()
        await boot.publish(TOPIC, Chat(text="before"))
        await wait_until(lambda: "before" in got, 10, "the first message")

        # Execute: our stream to the client dies; the connection stays.
        old = boot.pubsub.peers[cid]
        await old.reset()
        await boot.publish(TOPIC, Chat(text="into the dead stream"))  # the write that fails
        await wait_until(lambda: boot.pubsub.peers.get(cid) not in (None, old), 10, "a new stream to the client")
        assert client.peer_id in boot.connected_peers()

        # Assert: the client's subscription is kept, it is grafted again, and it hears us.
        await wait_until(lambda: _grafted(boot, client), 5, "the client grafted again")
        await boot.publish(TOPIC, Chat(text="after"))
        await wait_until(lambda: "after" in got, 10, "a message after the stream died")
        assert boot.stats["pubsub_subscriptions_kept"] >= 1
        view = boot.gossip_status()["peers"][client.peer_id]
        assert view["stream"] and TOPIC in view["topics"] and TOPIC in view["mesh"], view
        nursery.cancel_scope.cancel()
