"""Who is online: a pure, clock-injected table fed by heartbeats.

libp2p has no liveness (a SIGSTOPped peer stays "connected" for a minute), so a peer is
judged by its application heartbeats alone: silent past ``timeout`` it is *unresponsive*;
silent past ``forget_after`` it is dropped. A heartbeat brings it straight back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fedswarm.protocol.messages import Capabilities, Heartbeat, PeerEntry, Role


@dataclass
class PeerRecord:
    peer_id: str
    role: Role
    addrs: list[str]
    last_seen: float
    topics: list[str] = field(default_factory=list)
    capabilities: Capabilities | None = None
    price_wei: int | None = None
    api: str | None = None
    seq: int = -1

    def to_entry(self, online: bool, now: float | None = None) -> PeerEntry:
        age = 0.0 if now is None else min(max(now - self.last_seen, 0.0), 86_400.0)
        return PeerEntry(
            age_s=age,
            peer_id=self.peer_id,
            role=self.role,
            addrs=self.addrs,
            topics=self.topics,
            capabilities=self.capabilities,
            price_wei=self.price_wei,
            api=self.api,
            last_seen=self.last_seen,
            online=online,
        )


class Directory:
    """Peers seen through heartbeats (or a bootstrap's summary), with their freshness."""

    def __init__(
        self, clock: Callable[[], float], timeout: float = 4.0, forget_after: float = 30.0
    ) -> None:
        self._clock = clock
        self.timeout = timeout
        self.forget_after = forget_after
        self._peers: dict[str, PeerRecord] = {}

    def observe(self, hb: Heartbeat) -> bool:
        """Record a heartbeat; returns False for a stale or replayed one (older seq)."""
        rec = self._peers.get(hb.peer_id)
        if rec is not None and hb.seq <= rec.seq:
            return False
        self._peers[hb.peer_id] = PeerRecord(
            peer_id=hb.peer_id,
            role=hb.role,
            addrs=list(hb.addrs),
            last_seen=self._clock(),
            topics=list(hb.topics),
            capabilities=hb.capabilities,
            price_wei=hb.price_wei,
            api=hb.api,
            seq=hb.seq,
        )
        return True

    def merge_summary(self, entries: Iterable[PeerEntry], self_id: str) -> None:
        """Learn peers from a bootstrap's summary without overriding fresher first-hand data.

        A summary is second-hand: a peer counts as heard when the summarizer last heard it
        (``age_s`` ago), so a silent peer never looks alive for longer than ``timeout`` after
        its last heartbeat. Nodes that do not subscribe to heartbeats (trainers) keep their
        whole directory this way; for the others it only adds peers they have not heard yet."""
        now = self._clock()
        for e in entries:
            if e.peer_id == self_id or not e.online:
                continue
            heard = now - e.age_s
            rec = self._peers.get(e.peer_id)
            if rec is None:
                self._peers[e.peer_id] = PeerRecord(
                    peer_id=e.peer_id, role=e.role, addrs=list(e.addrs), last_seen=heard,
                    topics=list(e.topics), capabilities=e.capabilities, price_wei=e.price_wei,
                    api=e.api,
                )
                continue
            rec.topics = list(e.topics)
            rec.last_seen = max(rec.last_seen, heard)
            if rec.seq < 0:  # known only second-hand: the summary is the freshest we have
                rec.role, rec.addrs = e.role, list(e.addrs)
                rec.capabilities, rec.price_wei, rec.api = e.capabilities, e.price_wei, e.api

    def is_online(self, rec: PeerRecord) -> bool:
        return self._clock() - rec.last_seen <= self.timeout

    def expire(self) -> list[str]:
        """Drop peers silent past ``forget_after``; returns their ids."""
        now = self._clock()
        gone = [p for p, r in self._peers.items() if now - r.last_seen > self.forget_after]
        for p in gone:
            del self._peers[p]
        return gone

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def records(self, online_only: bool = True, role: Role | None = None) -> list[PeerRecord]:
        out = [
            r for r in self._peers.values()
            if (not online_only or self.is_online(r)) and (role is None or r.role == role)
        ]
        return sorted(out, key=lambda r: (r.role.value, r.peer_id))

    def entries(self, online_only: bool = True) -> list[PeerEntry]:
        now = self._clock()
        return [r.to_entry(self.is_online(r), now) for r in self.records(online_only)]


def keeps_link(a: Role, b: Role) -> bool:
    """Whether nodes of roles ``a`` and ``b`` keep a standing connection to each other.

    Every pair except two trainers: the protocol never has a trainer talk to another trainer
    (bids, units and results go between trainer and client; presence goes through the bootstrap),
    and N trainers linked pairwise cost N^2/2 handshakes at start and a gossipsub peer each to
    serve. At 32 trainers on one 2-core machine that full mesh alone saturated both cores.
    A trainer can still reach another one on demand (an RPC dials it).
    """
    return not (a == Role.TRAINER and b == Role.TRAINER)
