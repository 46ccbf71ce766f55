"""Presence, liveness and reconnect for :class:`~fedswarm.p2p.node.Node` (a mixin).

py-libp2p has no liveness and never redials, so a node publishes heartbeats on the presence
topic, keeps a directory from them (or from the bootstrap's mesh summary), and redials the
bootstrap and the peers it keeps links with (:func:`~fedswarm.p2p.directory.keeps_link`): links
form a star around the bootstrap and the clients. A connected peer silent for longer than
``peer_drop_after`` has its connections closed (:class:`SilenceWatch`), so that gossipsub drops
it from its mesh; it dials again when it comes back. Kept apart from the node's host, RPC and
pubsub plumbing so that each part reads on its own.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import multiaddr
import trio

from fedswarm.p2p.directory import Directory, keeps_link
from fedswarm.p2p.limits import PeerLimits
from fedswarm.p2p.rpc import RpcError
from fedswarm.p2p.teardown import close_connection
from fedswarm.protocol.messages import (
    Capabilities,
    Heartbeat,
    MeshRequest,
    MeshSummary,
    PeerEntry,
    Role,
    WireModel,
)
from fedswarm.protocol.topics import DIRECTORY_TOPIC, PRESENCE_TOPIC

log = logging.getLogger("fedswarm.p2p")

# A connected peer silent this many peer timeouts loses its connections (unless configured).
DROP_SILENT_AFTER_TIMEOUTS = 3.0


def drop_after(peer_timeout: float, configured: float | None = None) -> float:
    """Seconds of silence after which a connected peer's connections are closed: ``configured``
    (``FEDSWARM_PEER_DROP_S``), else 3 peer timeouts; never less than one peer timeout plus a
    second, so that a peer is always judged unresponsive (and a client has taken its units
    away) before its connections go."""
    want = configured if configured else DROP_SILENT_AFTER_TIMEOUTS * peer_timeout
    return max(want, peer_timeout + 1.0)


class SilenceWatch:
    """When each connected peer was last heard, to find those silent for too long (pure; the
    clock and the facts are the caller's).

    A peer counts as heard at its newest heartbeat (first-hand, or as a bootstrap's summary
    dates it) and, at the latest, when we first saw it connected: a peer that has just
    (re)connected is never judged by an old record, and one that never says anything is silent
    from its connection on. Its record may be forgotten meanwhile (the directory forgets after
    30 s); the time it was last heard is kept here as long as it stays connected."""

    def __init__(self) -> None:
        self._heard: dict[str, float] = {}

    def silent(self, now: float, connected: Iterable[str], last_seen: Callable[[str], float | None],
               hearing_for: float, after: float) -> list[str]:
        """The connected peers silent for more than ``after`` seconds. ``hearing_for`` is how
        long we have been hearing the others without a gap (:meth:`Presence.hearing_for`): a
        silence counts only while we heard the others, so an outage of our own link, which
        silences everyone, never makes a peer silent."""
        connected = set(connected)
        for pid in list(self._heard):
            if pid not in connected:
                del self._heard[pid]  # gone: a new connection starts a new count
        out = []
        for pid in sorted(connected):
            seen = last_seen(pid)
            heard = max(self._heard.get(pid, now), seen if seen is not None else -1e18)
            self._heard[pid] = heard
            if min(now - heard, hearing_for) > after:
                out.append(pid)
        return out

    def forget(self, peer_id: str) -> None:
        """Start ``peer_id``'s count again (its connections were just closed)."""
        self._heard.pop(peer_id, None)


class Presence:
    """Heartbeats, the mesh summary, the validators of the presence topics and the reconnect
    loop. Mixed into :class:`~fedswarm.p2p.node.Node`, which provides the state below."""

    # State the node sets up in its ``__init__`` (declared here for type checkers).
    peer_id: str
    role: Role
    host: Any
    pubsub: Any
    capabilities: Capabilities | None
    price_wei: int | None
    api_addr: str | None
    bootstrap_addrs: list[str]
    bootstrap_ids: set[str]
    heartbeat_interval: float
    directory: Directory
    limits: PeerLimits
    stats: collections.Counter[str]
    last_summary: MeshSummary | None
    _hb_seq: int
    _bootstrap_heard_at: float
    _bootstrap_reset_at: float
    dial_timeout: float = 3.0  # seconds a dial may take (a blackholed address never answers)
    peer_drop_after: float = 12.0  # seconds of silence before a connected peer's links are closed
    silence: SilenceWatch
    # When we last heard any peer, and since when without a gap (class defaults: the node's
    # constructor need not know them).
    _heard_at: float = -1e9
    _hearing_since: float = 0.0

    if TYPE_CHECKING:  # provided by the node's host, RPC and pubsub parts
        @property
        def addrs(self) -> list[str]: ...
        @property
        def topics(self) -> list[str]: ...
        async def publish(self, topic: str, msg: WireModel | bytes, *, presence: bool = False) -> None: ...
        async def request(self, peer_id: str, msg: WireModel, blob: bytes | None = None, *,
                          timeout: float | None = None,
                          expect: tuple[type[WireModel], ...] | None = None) -> tuple[WireModel, bytes | None]: ...

    def heartbeat(self) -> Heartbeat:
        self._hb_seq += 1
        return Heartbeat(
            peer_id=self.peer_id,
            role=self.role,
            addrs=self.addrs[:16],
            api=self.api_addr,
            topics=self.topics[:256],
            capabilities=self.capabilities,
            price_wei=self.price_wei,
            seq=self._hb_seq,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.publish(PRESENCE_TOPIC, self.heartbeat(), presence=True)
            # Nodes that do not hear heartbeats (trainers) keep their directory from this one
            # summary per heartbeat: one message of N entries instead of N messages.
            if self.role == Role.BOOTSTRAP:
                await self.publish(DIRECTORY_TOPIC, self.mesh_summary(), presence=True)
            self.directory.expire()
            await trio.sleep(self.heartbeat_interval)

    def _validate_market(self, sender: str, msg: WireModel) -> bool:
        if isinstance(msg, Heartbeat):
            return msg.peer_id == sender  # nobody speaks for another peer
        if isinstance(msg, MeshSummary):
            return sender in self.bootstrap_ids
        return True

    def _validate_directory(self, sender: str, msg: WireModel) -> bool:
        return isinstance(msg, MeshSummary) and sender in self.bootstrap_ids

    def _heard_someone(self) -> None:
        now = time.monotonic()
        if now - self._heard_at > self.directory.timeout / 2:
            self._hearing_since = now  # a gap: we were cut off (or everyone was silent)
        self._heard_at = now

    def hearing_for(self) -> float:
        """Seconds this node has been hearing its peers without a gap of more than half the peer
        timeout; 0 while it hears nobody. A node whose own link is down hears nobody, and must
        not take everyone else's silence for theirs: judge a peer silent only once we have
        been hearing the others for a whole peer timeout."""
        now = time.monotonic()
        if now - self._heard_at > self.directory.timeout / 2:
            return 0.0
        return now - self._hearing_since

    async def _on_market(self, sender: str, msg: Any) -> None:
        self._heard_someone()
        if sender in self.bootstrap_ids:
            self._bootstrap_heard_at = time.monotonic()
        if isinstance(msg, Heartbeat):
            self.directory.observe(msg)
        elif isinstance(msg, MeshSummary):
            self.last_summary = msg
            self.directory.merge_summary(msg.peers, self.peer_id)

    def self_entry(self) -> PeerEntry:
        hb = self.heartbeat()
        return PeerEntry(age_s=0.0,
            peer_id=self.peer_id, role=self.role, addrs=hb.addrs, topics=hb.topics,
            capabilities=self.capabilities, price_wei=self.price_wei, api=hb.api, last_seen=time.monotonic(),
        )

    def mesh_summary(self) -> MeshSummary:
        """This node's view: itself plus every online peer it has heard."""
        return MeshSummary(peers=[self.self_entry(), *self.directory.entries()], at=time.time())

    async def bootmesh(self, timeout: float = 5.0) -> MeshSummary:
        """The bootstrap's mesh summary (by RPC; the last one heard on the market topic if the
        bootstrap does not answer; our own view if we are the bootstrap)."""
        if self.role == Role.BOOTSTRAP or not self.bootstrap_ids:
            return self.mesh_summary()
        for bid in self.bootstrap_ids:
            try:
                reply, _ = await self.request(bid, MeshRequest(), timeout=timeout, expect=(MeshSummary,))
                return reply  # type: ignore[return-value]
            except RpcError as exc:
                log.debug("bootmesh from %s failed: %s", bid, exc)
        if self.last_summary is not None:
            return self.last_summary
        return self.mesh_summary()

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self.host.get_connected_peers()] if self.host else []

    async def _reconnect_loop(self) -> None:
        # py-libp2p never redials: after a bootstrap restart peers stay apart for good and a
        # 60 s negative dial cache blocks redials (notes, item 8). Unblock and dial ourselves.
        while True:
            targets: dict[str, list[str]] = {}
            for addr in self.bootstrap_addrs:
                pid = multiaddr.Multiaddr(addr).value_for_protocol("p2p")
                targets.setdefault(pid, []).append(addr)
            for rec in self.directory.records(online_only=True):
                # Only one side of a pair dials: two simultaneous dials leave py-libp2p with
                # duplicate connections, one of which can be half-dead, and streams opened on
                # it hang until their timeout. Everyone dials the bootstrap (never the other
                # way round); between other peers the smaller peer id dials.
                if self.role == Role.BOOTSTRAP or rec.role == Role.BOOTSTRAP:
                    continue
                if not keeps_link(self.role, rec.role):
                    continue
                if self.peer_id < rec.peer_id:
                    targets.setdefault(rec.peer_id, []).extend(rec.addrs)
            await self._prune_duplicate_connections()
            self._repair_pubsub_streams()
            await self._reset_silent_bootstrap_link()
            await self._drop_silent_peers()
            connected = set(self.connected_peers())
            missing = {p: a for p, a in targets.items() if p != self.peer_id and p not in connected}
            if missing:
                async with trio.open_nursery() as n:
                    for pid, addrs in list(missing.items())[:32]:
                        n.start_soon(self._dial, pid, addrs)
            await trio.sleep(1.0)

    async def _reset_silent_bootstrap_link(self) -> None:
        """Drop our connections to the bootstrap when nothing of it (its summary comes every
        heartbeat) has arrived for a while: py-libp2p can keep a connection whose handshake
        timed out under load, "connected" but carrying nothing, and would never redial."""
        if self.role == Role.BOOTSTRAP or not self.bootstrap_ids:
            return
        now = time.monotonic()
        silence = max(10.0, 3 * self.directory.timeout)
        if now - self._bootstrap_heard_at < silence or now - self._bootstrap_reset_at < silence:
            return
        self._bootstrap_reset_at = now
        self.stats["bootstrap_link_resets"] += 1
        log.info("nothing heard from the bootstrap for %.0f s: redialling it", now - self._bootstrap_heard_at)
        for bid in self.bootstrap_ids:
            await self._drop_connections(bid)

    async def _drop_silent_peers(self) -> None:
        """Close our connections to every connected peer silent for ``peer_drop_after``.

        py-libp2p has no liveness: a peer whose link is blackholed (or that is frozen) stays
        connected, and in our gossipsub mesh, for as long as TCP does not give up (up to a
        quarter of an hour), and gossip keeps queueing messages for it. Closing its connections
        takes it out of the mesh; when it is back it dials again (every node dials the
        bootstrap; between other peers the smaller id dials, once the peer is heard again).
        The bootstraps we dial ourselves have their own rule (:meth:`_reset_silent_bootstrap_link`)."""
        now = time.monotonic()

        def last_seen(pid: str) -> float | None:
            rec = self.directory.get(pid)
            return rec.last_seen if rec is not None else None

        connected = [p for p in self.connected_peers() if p not in self.bootstrap_ids]
        silent = self.silence.silent(now, connected, last_seen, self.hearing_for(), self.peer_drop_after)
        if not silent:
            return
        async with trio.open_nursery() as n:
            for pid in silent:
                self.silence.forget(pid)
                self.stats["silent_peers_dropped"] += 1
                log.info("peer %s silent for more than %.0f s: closing its connections", pid, self.peer_drop_after)
                n.start_soon(self._drop_connections, pid)

    async def _prune_duplicate_connections(self) -> None:
        """Keep one connection per peer, the same one on both sides: the newest of those the
        smaller peer id initiated, or the newest of all when the larger one dialled every one
        (a bootstrap never dials). py-libp2p keeps both after a simultaneous dial and may open
        streams on one the other side has given up on (they then hang until their timeout).
        The newest, because a peer dials again only once it gave up on its older connections:
        after its link was blackholed and came back, those hang in TCP retransmission backoff
        for tens of seconds, and every stream opened on one (gossip's included) hangs too."""
        try:
            conns_by_peer = self.host.get_network().get_connections_map()
        except Exception:
            return
        for pid, conns in list(conns_by_peer.items()):
            if len(conns) < 2:
                continue
            i_am_smaller = self.peer_id < pid.to_base58()
            keep = [c for c in conns if bool(getattr(c.muxed_conn, "is_initiator_value", False)) == i_am_smaller]
            newest = (keep or conns)[-1]  # py-libp2p appends each new connection
            for conn in conns:
                if conn is not newest:
                    self.stats["duplicate_connections_closed"] += 1
                    if await close_connection(conn):
                        self.stats["connections_aborted"] += 1

    async def _drop_connections(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (aborting those a dead link keeps from closing
        gracefully: :func:`~fedswarm.p2p.teardown.close_connection`), so that it leaves our
        gossipsub mesh and either side can dial afresh."""
        from libp2p.peer.id import ID

        try:
            pid = ID.from_base58(peer_id)
            network = self.host.get_network()

            async def close(conn: Any) -> None:
                if await close_connection(conn):
                    self.stats["connections_aborted"] += 1

            async with trio.open_nursery() as n:
                for conn in list(network.get_connections(pid)):
                    n.start_soon(close, conn)
            network.unblock_peer(pid)
        except Exception as exc:
            log.debug("dropping connections to %s failed: %r", peer_id, exc)
        self._repair_pubsub_streams()

    def _repair_pubsub_streams(self) -> None:
        """Give up pubsub streams that live on a connection we no longer have.

        py-libp2p opens one pubsub stream per peer and, while it has one, opens no other: a
        stream left on a connection that died without pubsub being told (a close cut short)
        would carry every later gossip message to that peer into a dead socket, even after the
        peer reconnected. Such a stream is dropped the way py-libp2p drops a failed one, which
        opens a new stream on a live connection when there is one."""
        if self.pubsub is None or self.host is None:
            return
        try:
            conns = self.host.get_network().get_connections_map()
        except Exception:
            return
        for pid, stream in list(self.pubsub.peers.items()):
            muxed = getattr(stream, "muxed_conn", None)
            live = [c.muxed_conn for c in conns.get(pid, ()) if not getattr(c.muxed_conn, "is_closed", False)]
            if muxed is not None and any(m is muxed for m in live):
                continue
            self.stats["pubsub_streams_repaired"] += 1
            log.info("pubsub stream to %s is on a connection that is gone: opening a new one", pid)
            try:
                self.pubsub._handle_dead_peer(pid)
            except Exception as exc:
                log.debug("dropping the stale pubsub stream to %s failed: %r", pid, exc)

    def _set_peer_addrs(self, peer_id: str, addrs: list[str]) -> list[multiaddr.Multiaddr]:
        """Make ``addrs`` (freshest first; any naming another peer ignored) the addresses a dial
        of ``peer_id`` tries; returns them as multiaddrs.

        py-libp2p only ever appends to a peer's addresses, and dials one per transport, the
        oldest: after a peer restarted on a new port, its stale address would be dialled for
        good. So a changed list replaces the old one, and the 60 s "every address failed" block
        the stale address earned is lifted."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerstore import PeerStoreError

        maddrs: list[multiaddr.Multiaddr] = []
        for a in addrs:
            base, _, owner = a.partition("/p2p/")
            if owner and owner != peer_id:
                continue
            with contextlib.suppress(Exception):
                ma = multiaddr.Multiaddr(base)
                if ma not in maddrs:
                    maddrs.append(ma)
        if not maddrs:
            return maddrs
        pid = ID.from_base58(peer_id)
        store = self.host.get_peerstore()
        try:
            current = list(store.addrs(pid))
        except PeerStoreError:
            current = []
        # (identify stores the same addresses with a /p2p/ suffix: compare without it)
        if current and [str(a).split("/p2p/")[0] for a in current[:len(maddrs)]] != [str(a) for a in maddrs]:
            store.clear_addrs(pid)
            self.stats["peer_addrs_replaced"] += 1
            with contextlib.suppress(Exception):
                self.host.get_network().unblock_peer(pid)
        store.add_addrs(pid, maddrs, 3600)
        return maddrs

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        if self.limits.is_banned(peer_id):
            return
        try:
            pid = ID.from_base58(peer_id)
            maddrs = self._set_peer_addrs(peer_id, addrs)
            self.host.get_network().unblock_peer(pid)
            with trio.move_on_after(self.dial_timeout):
                await self.host.connect(PeerInfo(pid, maddrs))
                self.stats["dials_ok"] += 1
        except Exception as exc:
            self.stats["dials_failed"] += 1
            log.debug("dial %s failed: %r", peer_id, exc)
