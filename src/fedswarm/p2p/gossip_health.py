"""Repairs for py-libp2p's gossipsub: a watched heartbeat that keeps the message cache aged,
and subscriptions kept while a peer stays connected (:func:`keep_subscriptions_while_connected`).

Gossipsub's heartbeat maintains the mesh and shifts the message cache (``mcache``) once per
interval. The cache's *window* (its newest ``gossip_window`` slots) is what a new subscriber is
sent on subscribing, and what IHAVE gossip advertises: with a 1 s heartbeat and a window of 3, a
new subscriber is replayed the last ~3 s of a topic. If the heartbeat stops or slows, the window
stops ageing and every new subscriber is replayed everything published since.

That is what py-libp2p 0.8.1 does by default: its "adaptive gossip" recomputes a network-health
score every 30 s from mesh size against the target degree, positive peer scores and churn, and on a
score under 0.4 sets the heartbeat interval to ``max(30, min(60, base // 2))`` s (under 0.7:
``max(60, ...)``), whatever the configured interval. A small network scores low (a lone bootstrap
scored 0.30), so 30 s after start the heartbeat went from 1 s to 30 s and a new subscriber was
replayed up to 90 s of messages. :class:`~fedswarm.p2p.node.Node` turns adaptive gossip off; this
module makes the heartbeat observable (``/status`` → ``gossip``) and, should it ever stall again,
ages the cache itself so that replay stays bounded by the window.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

log = logging.getLogger("fedswarm.p2p")


class _MessageCache(Protocol):
    window_size: int
    msgs: dict[bytes, Any]
    shift: Callable[[], None]

    def window(self, topic: str) -> list[bytes]: ...


class GossipHealth:
    """Counts gossipsub heartbeats (each one shifts the mcache) and repairs a stalled one.

    ``attach(router)`` wraps the router's ``mcache.shift`` on that instance; ``watch()`` runs in
    the node's nursery. A heartbeat is *stalled* when none came for ``stall_after`` configured
    intervals: the watchdog then puts the configured interval back (the only thing in py-libp2p
    that changes it is adaptive gossip) and shifts the cache itself, once per interval, until
    the heartbeat returns.
    """

    def __init__(self, interval: float, stats: collections.Counter[str], *, stall_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.stall_after = stall_after
        self.stats = stats
        self._clock = clock
        self._router: Any = None
        self._shift: Callable[[], None] | None = None
        self.heartbeats = 0
        self.last_heartbeat_at = clock()
        self.forced_shifts = 0

    def attach(self, router: Any) -> None:
        """Observe ``router`` (py-libp2p's ``GossipSub``): count each of its mcache shifts."""
        self._router = router
        mcache: _MessageCache = router.mcache
        original = mcache.shift
        self._shift = original

        def counted_shift() -> None:
            original()
            self.heartbeats += 1
            self.last_heartbeat_at = self._clock()

        mcache.shift = counted_shift  # an instance attribute: only this router's cache

    @property
    def since_heartbeat(self) -> float:
        """Seconds since gossipsub's last heartbeat."""
        return self._clock() - self.last_heartbeat_at

    def stalled(self) -> bool:
        return self.since_heartbeat > self.stall_after * self.interval

    def check(self) -> bool:
        """One watchdog step; True when it found the heartbeat stalled (and aged the cache)."""
        if self._router is None or self._shift is None or not self.stalled():
            return False
        self.stats["gossip_heartbeat_stalled"] += 1
        if self.forced_shifts == 0 or self.forced_shifts % 60 == 0:
            log.warning("gossipsub heartbeat silent for %.0f s (interval %s s): ageing its message cache here",
                        self.since_heartbeat, getattr(self._router, "heartbeat_interval", "?"))
        if getattr(self._router, "heartbeat_interval", self.interval) != self.interval:
            self._router.heartbeat_interval = self.interval
        self._shift()  # the original: not counted as a heartbeat
        self.forced_shifts += 1
        return True

    async def watch(self) -> None:
        """Run :meth:`check` once per configured interval, forever."""
        while True:
            await trio.sleep(self.interval)
            self.check()

    def status(self, topics: list[str]) -> dict[str, object]:
        """Heartbeat count and age, the router's interval now, and per topic how many cached
        messages a new subscriber would be replayed (the window) and the mesh size."""
        router = self._router
        if router is None:
            return {"attached": False}
        mcache: _MessageCache = router.mcache
        mesh = getattr(router, "mesh", {})
        return {
            "attached": True,
            "heartbeats": self.heartbeats,
            "since_heartbeat_s": round(self.since_heartbeat, 2),
            "interval_s": getattr(router, "heartbeat_interval", None),
            "configured_interval_s": self.interval,
            "forced_shifts": self.forced_shifts,
            "mcache_messages": len(mcache.msgs),
            "window_slots": mcache.window_size,
            "replay_window": {t: len(mcache.window(t)) for t in topics},
            "mesh": {t: len(mesh.get(t, ())) for t in topics},
        }


def keep_subscriptions_while_connected(pubsub: Any, stats: collections.Counter[str]) -> None:
    """Make py-libp2p's pubsub keep what a peer subscribed to while the peer stays connected.

    When a write on our pubsub stream to a peer fails, py-libp2p 0.8.1 (``_handle_dead_peer``)
    forgets every topic the peer joined and, if the peer is still connected on another
    connection, opens a new stream and sends *our* subscriptions again. The peer's subscriptions
    came once, in the hello on *its* stream to us, which is still alive: they never come back.
    From then on we believe it joined nothing: we never graft it, never forward or fan out a
    message to it, and it hears nothing from us (a bootstrap's summary lost a node until a
    silence rule closed the connection, 10-20 s). It happens whenever a peer has two
    connections and one dies: a redial after a blackholed link, a simultaneous dial, our own
    duplicate pruning. Wrapped on this instance only: when the peer is still connected
    afterwards, its subscriptions are put back (it did not leave any topic, and an unsubscribe
    it sends later still arrives on its stream). A peer with no connection left is forgotten
    as before."""
    original = pubsub._handle_dead_peer

    def handle_dead_peer(peer_id: Any) -> None:
        topics = [t for t, peers in pubsub.peer_topics.items() if peer_id in peers]
        count = pubsub._peer_subscription_count.get(peer_id)
        original(peer_id)
        if not topics or not pubsub._peer_is_connected(peer_id):
            return
        for topic in topics:
            pubsub.peer_topics.setdefault(topic, set()).add(peer_id)
        if count is not None:
            pubsub._peer_subscription_count[peer_id] = count
        stats["pubsub_subscriptions_kept"] += 1
        log.debug("pubsub stream to %s died while it stays connected: kept its %d topics", peer_id, len(topics))

    pubsub._handle_dead_peer = handle_dead_peer


__all__ = ["GossipHealth", "keep_subscriptions_while_connected"]
