"""Closing py-libp2p connections for good, even on a link that no longer carries anything.

py-libp2p closes a connection gracefully: yamux first writes a GO_AWAY frame, then the socket is
closed, then the connection leaves the swarm and its listeners (pubsub among them) are told. On a
blackholed link the socket's send buffer is full, so that first write blocks until TCP gives up
(up to a quarter of an hour). A caller with a deadline cancels it half-way, and py-libp2p has by
then marked the connection closed: every later ``close()`` returns at once, yet the connection
stays in the swarm ("connected"), so nobody redials, and pubsub keeps its stream on it, so every
gossip message to that peer waits behind the blocked write. Seen after a 60 s outage of a
bootstrap: each node's redial rule fired, "dropped" the dead connection, and nothing changed
until TCP's own retransmission got through 15-20 s after the link came back.

:func:`close_connection` closes gracefully within a grace period and otherwise aborts: the
socket is reset (``SO_LINGER`` 0: an RST, unsent data discarded, blocked reads and writes woken),
the connection's cleanup is run (it leaves the swarm, its streams are reset, listeners are
told), and, should that too be cut short, it is taken out of the swarm's table directly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from typing import Any

import trio

log = logging.getLogger("fedswarm.p2p")

# Attribute names that lead from a py-libp2p connection down to its trio socket stream:
# SwarmConn.muxed_conn (Yamux) .secured_conn (SecureSession) .conn (Noise reader/writer)
# .conn (RawConnection) .stream (TrioTCPStream) .stream (trio.SocketStream).
_DOWN = ("muxed_conn", "secured_conn", "conn", "read_writer", "stream")


def socket_stream_of(conn: Any) -> trio.SocketStream | None:
    """The trio socket stream under a py-libp2p connection (None if it has none, e.g. a test
    double or another transport)."""
    obj = conn
    for _ in range(10):
        if isinstance(obj, trio.SocketStream):
            return obj
        for attr in _DOWN:
            nxt = getattr(obj, attr, None)
            if nxt is not None and nxt is not obj:
                obj = nxt
                break
        else:
            return None
    return None


def abort_socket(conn: Any) -> bool:
    """Reset ``conn``'s TCP socket now (an RST; unsent data dropped). True if there was one."""
    stream = socket_stream_of(conn)
    if stream is None:
        return False
    sock = stream.socket
    with contextlib.suppress(OSError):  # already closed: close() below is harmless
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # trio wakes every task blocked on this socket
    return True


def in_swarm(conn: Any) -> bool:
    """Whether the swarm still lists ``conn`` among its peer's connections."""
    swarm = getattr(conn, "swarm", None)
    if swarm is None:
        return False
    try:
        return conn in swarm.get_connections(conn.muxed_conn.peer_id)
    except Exception:
        return False


async def close_connection(conn: Any, *, grace: float = 1.0) -> bool:
    """Close ``conn`` (a py-libp2p ``SwarmConn``): gracefully if that completes within
    ``grace`` seconds, else by aborting it. Returns True when it had to be aborted."""
    with trio.move_on_after(grace):
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing a connection failed: %r", exc)
    if not in_swarm(conn):
        return False
    abort_socket(conn)
    with trio.move_on_after(grace):
        try:
            await conn._cleanup()  # leaves the swarm, resets its streams, tells the listeners
        except Exception as exc:
            log.debug("cleaning up an aborted connection failed: %r", exc)
    if in_swarm(conn):
        try:
            conn.swarm.remove_conn(conn)
        except Exception as exc:
            log.debug("removing an aborted connection failed: %r", exc)
    return True


__all__ = ["abort_socket", "close_connection", "in_swarm", "socket_stream_of"]
