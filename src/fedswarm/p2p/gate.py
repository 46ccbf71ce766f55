"""The libp2p side of :mod:`fedswarm.p2p.limits`: gossip validation before relay, bans enforced.

- :meth:`Gate.pubsub_validator` is registered with py-libp2p for every topic the node joins.
  py-libp2p runs topic validators *before* a message is relayed (``Pubsub.push_msg``), so a
  message that does not decode through the bounded decoder, breaks a topic rule, comes from a
  banned origin or over its origin's rate is neither delivered nor forwarded: one hostile
  publish no longer reaches every subscriber. The decoded message is kept for the node's
  subscription reader so that each message is decoded once.
- A ban (from :meth:`PeerLimits.strike`) puts the peer on pubsub's blacklist and closes its
  connections; connections it opens while banned are closed as they come (a notifee). When the
  ban ends the peer is taken off the blacklist.
- :func:`resource_manager` lowers py-libp2p's node-wide stream cap (10,000 by default).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import trio

from fedswarm.p2p.limits import PeerLimits
from fedswarm.protocol.messages import WireError, WireModel, decode

log = logging.getLogger("fedswarm.p2p")

MAX_STREAMS = 2048  # node-wide streams (in and out): a star hub has ~2 per peer plus RPCs
AppValidator = Callable[[str, WireModel], bool]


def resource_manager() -> Any:
    """py-libp2p's resource manager with a stream cap sized for fedswarm (None if unavailable)."""
    try:
        from libp2p.rcmgr import new_resource_manager
        from libp2p.rcmgr.manager import ResourceLimits
    except ImportError:  # an older py-libp2p: its defaults stay
        return None
    return new_resource_manager(limits=ResourceLimits(max_connections=1000, max_memory_mb=512,
                                                      max_streams=MAX_STREAMS))


class Gate:
    """Applies one node's :class:`PeerLimits` to its libp2p host and pubsub."""

    def __init__(self, limits: PeerLimits, self_id: str, *, max_gossip: int) -> None:
        self.limits = limits
        self.self_id = self_id
        self.max_gossip = max_gossip
        self._decoded: collections.OrderedDict[bytes, WireModel] = collections.OrderedDict()
        self._blacklisted: set[str] = set()
        self._host: Any = None
        self._pubsub: Any = None
        self._nursery: trio.Nursery | None = None

    def attach(self, host: Any, pubsub: Any, nursery: trio.Nursery) -> None:
        """Start enforcing on a running host (call once, from the node's nursery)."""
        self._host, self._pubsub, self._nursery = host, pubsub, nursery
        host.get_network().register_notifee(_ban_notifee(self))
        nursery.start_soon(self._expire_loop)

    def guard_pubsub(self, host: Any, pubsub: Any, protocols: Any) -> None:
        """Wrap pubsub's stream handler: py-libp2p lets a malformed RPC frame escape it
        (protobuf ``DecodeError``, a frame over its size limit whose body is then read as the
        next frame), and an exception out of a stream handler kills the process. One publish
        over 1 MiB from any direct peer did that. The wrapper ends that peer's stream instead,
        and counts a strike."""

        async def handler(stream: Any) -> None:
            peer = "?"
            try:
                peer = stream.muxed_conn.peer_id.to_base58()
                if self.limits.is_banned(peer):
                    self.limits.counters["gossip_refused_banned"] += 1
                    await _reset(stream)
                    return
                await pubsub.stream_handler(stream)
            except Exception as exc:
                log.debug("pubsub stream from %s failed: %r", peer, exc)
                self.strike(peer, "gossip_bad_frame")
                await _reset(stream)
                try:
                    pubsub._handle_dead_peer(stream.muxed_conn.peer_id)  # what py-libp2p does on a read error
                except Exception as dead_exc:
                    log.debug("dropping the pubsub peer %s failed: %r", peer, dead_exc)

        for protocol in protocols:
            host.set_stream_handler(protocol, handler)

    # -- strikes and bans ------------------------------------------------------------------

    def strike(self, peer: str, reason: str) -> None:
        """Count an invalid frame or message against ``peer``; ban and disconnect it at the limit."""
        if peer == self.self_id or not self.limits.strike(peer, reason):
            return
        log.warning("peer %s banned for %.0f s: it kept sending invalid input (last: %s)",
                    peer, self.limits.config.ban_seconds, reason)
        self._enforce(peer)

    def _enforce(self, peer: str) -> None:
        from libp2p.peer.id import ID

        try:
            pid = ID.from_base58(peer)
        except Exception:
            return
        if self._pubsub is not None and peer not in self._blacklisted:
            # The blacklist set itself, not add_to_blacklist(): that also starts a teardown task
            # which races pubsub's own dead-peer handling (``del self.peers[peer]`` -> KeyError
            # in a pubsub task, which stops the node). Closing the connections below is enough
            # for pubsub to drop the peer the normal way.
            self._pubsub.blacklisted_peers.add(pid)
            self._blacklisted.add(peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, pid: Any) -> None:
        try:
            with trio.move_on_after(2):
                await self._host.get_network().close_peer(pid)
            self.limits.counters["ban_disconnects"] += 1
        except Exception as exc:
            log.debug("closing a banned peer's connections failed: %r", exc)

    async def _expire_loop(self) -> None:
        from libp2p.peer.id import ID

        while True:
            await trio.sleep(1.0)
            current = set(self.limits.banned())
            for peer in self._blacklisted - current:
                self._blacklisted.discard(peer)
                try:
                    self._pubsub.remove_from_blacklist(ID.from_base58(peer))
                except Exception as exc:
                    log.debug("unbanning %s failed: %r", peer, exc)

    def on_connected(self, conn: Any) -> None:
        """A new connection: a banned peer's is closed at once."""
        try:
            peer = conn.muxed_conn.peer_id.to_base58()
        except Exception:
            return
        if self.limits.is_banned(peer):
            self.limits.counters["ban_refused_connections"] += 1
            if self._nursery is not None:
                self._nursery.start_soon(self._disconnect, conn.muxed_conn.peer_id)

    # -- gossip ----------------------------------------------------------------------------

    def pubsub_validator(self, topic: str, app_validator: Callable[[], AppValidator | None]) -> Callable[[Any, Any], bool]:
        """The synchronous py-libp2p validator for ``topic``. ``app_validator()`` returns the
        node's current rule for the topic (who may say what there), or None."""

        def validate(forwarder: Any, msg: Any) -> bool:
            try:
                return self._validate(topic, app_validator(), msg)
            except Exception:  # a validator must never raise into py-libp2p's reader
                log.exception("gossip validator for %s failed", topic)
                return False

        return validate

    def _validate(self, topic: str, rule: AppValidator | None, msg: Any) -> bool:
        from libp2p.peer.id import ID

        origin = ID(msg.from_id).to_base58()
        if origin == self.self_id:
            return True  # our own publish (py-libp2p validates those too)
        if not self.limits.allow_gossip(origin):
            return False
        data = bytes(msg.data)
        if len(data) > self.max_gossip:
            self.strike(origin, "gossip_oversize")
            return False
        try:
            decoded = decode(data, max_bytes=self.max_gossip)
        except WireError:
            self.strike(origin, "gossip_invalid")
            return False
        if rule is not None and not rule(origin, decoded):
            self.strike(origin, "gossip_rejected")
            return False
        self._decoded[bytes(msg.from_id) + bytes(msg.seqno) + topic.encode()] = decoded
        while len(self._decoded) > 1024:
            self._decoded.popitem(last=False)
        return True

    def take_decoded(self, from_id: bytes, seqno: bytes, topic: str) -> WireModel | None:
        """The message the validator decoded (once), or None if it is no longer kept."""
        return self._decoded.pop(bytes(from_id) + bytes(seqno) + topic.encode(), None)


async def _reset(stream: Any) -> None:
    try:
        with trio.move_on_after(2):
            await stream.reset()
    except Exception:
        pass


def _ban_notifee(gate: Gate) -> Any:
    """A py-libp2p notifee that closes connections from banned peers as they open."""
    from libp2p.abc import INotifee  # py-libp2p is imported lazily, like in node.py

    class BanNotifee(INotifee):
        async def connected(self, network: Any, conn: Any) -> None:
            gate.on_connected(conn)

        async def disconnected(self, network: Any, conn: Any) -> None:
            pass

        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    return BanNotifee()


__all__ = ["MAX_STREAMS", "Gate", "resource_manager"]
