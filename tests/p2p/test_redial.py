"""A peer that comes back from a restart is reachable again at once: on a new port (the
peerstore keeps only its fresh addresses, freshest first) and on its old one (the 60 s block
py-libp2p puts on a peer whose every address failed is lifted by the request's retry).

In-process, two real nodes on loopback (~5 s). The client is stopped and started again on the
same key, as ``fedswarm node`` does after a crash; the trainer is the side that dials it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.p2p.rpc import RpcError
from fedswarm.protocol.messages import Ping, Pong, Role


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_client(tmp_path: Path, nursery: trio.Nursery, port: int = 0) -> tuple[Node, trio.CancelScope]:
    """The client node on ``port`` (0: a free one), with a scope that stops it."""
    node = Node(load_identity(tmp_path / "client"), Role.CLIENT, listen=f"/ip4/127.0.0.1/tcp/{port}",
                heartbeat_interval=0.5)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.serve(task_status=task_status)

    await nursery.start(run)
    return node, scope


async def _ping(trainer: Node, client: Node, timeout: float = 5.0) -> None:
    reply, _ = await trainer.request(client.peer_id, Ping(nonce=7), timeout=timeout, expect=(Pong,))
    assert isinstance(reply, Pong)


async def _restart(tmp_path: Path, nursery: trio.Nursery, trainer: Node, old: Node,
                   scope: trio.CancelScope, port: int = 0) -> Node:
    """Stop ``old``, fail to reach it once (the dial that earns py-libp2p's block), start it again."""
    scope.cancel()
    with trio.fail_after(10):
        while trainer.host.get_network().get_connections(old.host.get_id()):
            await trio.sleep(0.1)
    try:
        await _ping(trainer, old, timeout=2.0)
        raise AssertionError("a stopped client answered")
    except RpcError as exc:
        assert exc.code in ("unreachable", "timeout"), exc
    new, _ = await _start_client(tmp_path, nursery, port)
    assert new.peer_id == old.peer_id
    return new


@pytest.mark.parametrize("via", ["request", "redial"])
async def test_a_client_back_on_a_new_port_is_dialled_there(tmp_path: Path, via: str) -> None:
    async with trio.open_nursery() as nursery:
        trainer = Node(load_identity(tmp_path / "trainer"), Role.TRAINER, heartbeat_interval=0.5)
        await nursery.start(trainer.serve)
        client, scope = await _start_client(tmp_path, nursery)
        trainer.remember_addrs(client.peer_id, client.addrs)
        await _ping(trainer, client)

        moved = await _restart(tmp_path, nursery, trainer, client, scope)
        assert moved.addrs != client.addrs
        if via == "request":
            # What the client's announcement (or the directory's next heartbeat) tells the trainer.
            trainer.remember_addrs(moved.peer_id, moved.addrs)
        else:
            # The presence loop's redial of a peer it keeps a link with, from its directory record.
            await trainer._dial(moved.peer_id, moved.addrs)
            assert trainer.host.get_network().get_connections(moved.host.get_id())
        await _ping(trainer, moved)
        stored = [str(a).split("/p2p/")[0] for a in trainer.host.get_peerstore().addrs(moved.host.get_id())]
        assert [a.split("/p2p/")[0] for a in moved.addrs] == stored[:1]
        assert not any(a.split("/p2p/")[0] in stored for a in client.addrs)
        assert trainer.stats["peer_addrs_replaced"] == 1
        await _ping(trainer, moved)  # the same addresses again replace nothing
        assert trainer.stats["peer_addrs_replaced"] == 1
        nursery.cancel_scope.cancel()


async def test_a_client_back_on_its_old_port_is_not_blocked(tmp_path: Path) -> None:
    # A killed client's port refuses connections until it is back. (An in-process node stopped
    # by cancellation leaves its listener accepting, so the outage is the time before it
    # first listens.)
    async with trio.open_nursery() as nursery:
        trainer = Node(load_identity(tmp_path / "trainer"), Role.TRAINER, heartbeat_interval=0.5)
        await nursery.start(trainer.serve)
        port = _free_port()
        peer_id = load_identity(tmp_path / "client").peer_id
        trainer.remember_addrs(peer_id, [f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"])
        try:
            reply, _ = await trainer.request(peer_id, Ping(nonce=1), timeout=3.0)
            raise AssertionError(f"nobody listens yet, yet {reply!r}")
        except RpcError as exc:
            assert exc.code == "unreachable", exc

        client, _ = await _start_client(tmp_path, nursery, port)
        with trio.fail_after(5):  # py-libp2p alone refuses to dial it for 60 s
            await _ping(trainer, client)
        nursery.cancel_scope.cancel()
