"""Peer limits: what any one peer may cost this node, and what happens when it overdoes it.

One layer, pure logic on an injected clock (the libp2p glue is in :mod:`fedswarm.p2p.gate`):

- per-message-type RPC caps (:func:`rpc_cap`): how large a request's envelope and blob may be,
  checked from the frame header and the envelope's declared blob size *before* the bytes are
  buffered; a reply's blob is never larger than the request's own blob;
- per-peer concurrent RPC streams and request rate, per-origin gossip rate;
- a node-wide budget of request-blob bytes in flight (many peers at once cannot add up past it);
- strikes: every invalid frame or message costs its sender a strike; ``strikes_to_ban`` of them
  within ``strike_window`` seconds ban the peer for ``ban_seconds`` (its connections are closed,
  its streams reset, its gossip dropped, and nobody dials it);
- counters of all of it, reported in ``/status``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fedswarm.protocol.decode import MAX_GOSSIP_MESSAGE, MAX_RPC_FRAME


@dataclass(frozen=True)
class RpcCap:
    """How large one RPC message of a type may be: its JSON envelope and its blob (bytes)."""

    max_frame: int = 64 * 1024
    max_blob: int = 0


ECHO_BLOB_CAP = 64 << 20  # the test/benchmark echo: the one request type that carries a blob
_RPC_CAPS: dict[str, RpcCap] = {
    "mesh_summary": RpcCap(max_frame=MAX_RPC_FRAME),  # up to thousands of peer entries
    "work_unit": RpcCap(max_frame=MAX_RPC_FRAME),  # up to 1024 chunk URLs
    "echo_blob": RpcCap(max_blob=ECHO_BLOB_CAP),
    "blob_digest": RpcCap(max_blob=ECHO_BLOB_CAP),  # the echo's answer carries the blob back
}
DEFAULT_RPC_CAP = RpcCap()


def rpc_cap(type_name: str) -> RpcCap:
    """The caps of one RPC message type (every type not listed: 64 KiB envelope, no blob)."""
    return _RPC_CAPS.get(type_name, DEFAULT_RPC_CAP)


def rpc_caps() -> dict[str, RpcCap]:
    """Every type with caps of its own (for docs and ``/status``)."""
    return dict(_RPC_CAPS)


class TokenBucket:
    """``rate`` events per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if there are that many; False (nothing spent) otherwise."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


@dataclass
class _Peer:
    rpc: TokenBucket
    gossip: TokenBucket
    streams: int = 0
    strikes: collections.deque[float] = field(default_factory=collections.deque)


@dataclass(frozen=True)
class LimitsConfig:
    """The knobs (defaults sized for a node serving ~1000 peers on one core)."""

    max_streams_per_peer: int = 16  # concurrent inbound RPC streams; more are reset
    rpc_rate: float = 50.0  # requests per second per peer (a trainer sends a few per round)
    rpc_burst: float = 200.0
    gossip_rate: float = 50.0  # messages per second per origin (heartbeats are 1 per second)
    gossip_burst: float = 200.0
    strikes_to_ban: int = 10
    strike_window: float = 60.0
    ban_seconds: float = 300.0
    blob_budget: int = 256 << 20  # request-blob bytes buffered at once, all peers together
    max_tracked_peers: int = 4096  # peer states kept (least recently seen dropped first)
    max_gossip_message: int = MAX_GOSSIP_MESSAGE


class PeerLimits:
    """The per-peer accounting of one node. Not thread-safe: use from the node's trio loop.

    ``exempt`` peers (the bootstraps) are never banned: a node cut off from its bootstrap is
    cut off from the network, which is a worse outcome than any garbage it could relay.
    """

    def __init__(self, config: LimitsConfig | None = None, *, clock: Callable[[], float] = time.monotonic,
                 exempt: Iterable[str] = ()) -> None:
        self.config = config or LimitsConfig()
        self._clock = clock
        self.exempt = set(exempt)
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._bans: dict[str, float] = {}  # peer -> monotonic time the ban ends
        self._blob_in_flight = 0
        self.counters: collections.Counter[str] = collections.Counter()

    # -- bookkeeping ---------------------------------------------------------------------

    def _peer(self, peer: str) -> _Peer:
        state = self._peers.get(peer)
        now = self._clock()
        if state is None:
            c = self.config
            state = _Peer(TokenBucket(c.rpc_rate, c.rpc_burst, now), TokenBucket(c.gossip_rate, c.gossip_burst, now))
            self._peers[peer] = state
            while len(self._peers) > c.max_tracked_peers:
                old, old_state = next(iter(self._peers.items()))
                if old_state.streams:  # never forget a peer with streams open (its count must return to 0)
                    self._peers.move_to_end(old)
                    break
                del self._peers[old]
        else:
            self._peers.move_to_end(peer)
        return state

    def is_banned(self, peer: str) -> bool:
        """True while ``peer`` serves a ban."""
        until = self._bans.get(peer)
        if until is None:
            return False
        if self._clock() >= until:
            del self._bans[peer]
            self.counters["bans_expired"] += 1
            return False
        return True

    def banned(self) -> dict[str, float]:
        """Banned peers and the seconds each has left."""
        now = self._clock()
        for peer in [p for p, until in self._bans.items() if until <= now]:
            del self._bans[peer]
            self.counters["bans_expired"] += 1
        return {p: round(until - now, 1) for p, until in self._bans.items()}

    # -- RPC -----------------------------------------------------------------------------

    def open_stream(self, peer: str) -> str | None:
        """Admit one inbound RPC stream from ``peer``: None if admitted (then call
        :meth:`close_stream`), else why not (``"banned"``, ``"busy"``, ``"rate"``)."""
        if self.is_banned(peer):
            self.counters["rpc_refused_banned"] += 1
            return "banned"
        state = self._peer(peer)
        if state.streams >= self.config.max_streams_per_peer:
            self.counters["rpc_refused_busy"] += 1
            return "busy"
        if not state.rpc.take(self._clock()):
            self.counters["rpc_refused_rate"] += 1
            return "rate"
        state.streams += 1
        return None

    def close_stream(self, peer: str) -> None:
        """The end of a stream :meth:`open_stream` admitted."""
        state = self._peers.get(peer)
        if state is not None and state.streams > 0:
            state.streams -= 1

    def reserve_blob(self, size: int) -> bool:
        """Take ``size`` bytes of the node-wide blob budget (False: over budget, try later)."""
        if self._blob_in_flight + size > self.config.blob_budget:
            self.counters["rpc_refused_blob_budget"] += 1
            return False
        self._blob_in_flight += size
        return True

    def release_blob(self, size: int) -> None:
        self._blob_in_flight = max(0, self._blob_in_flight - size)

    # -- gossip --------------------------------------------------------------------------

    def allow_gossip(self, origin: str) -> bool:
        """Whether a message from ``origin`` may be delivered and relayed (ban and rate)."""
        if self.is_banned(origin):
            self.counters["gossip_dropped_banned"] += 1
            return False
        if not self._peer(origin).gossip.take(self._clock()):
            self.counters["gossip_dropped_rate"] += 1
            return False
        return True

    # -- strikes and bans ----------------------------------------------------------------

    def strike(self, peer: str, reason: str) -> bool:
        """Count one invalid frame or message against ``peer`` (``reason`` names the counter).
        True if this strike banned it (the caller then closes its connections)."""
        self.counters[reason] += 1
        if peer in self.exempt or self.is_banned(peer):
            return False
        now = self._clock()
        strikes = self._peer(peer).strikes
        strikes.append(now)
        while strikes and strikes[0] <= now - self.config.strike_window:
            strikes.popleft()
        if len(strikes) < self.config.strikes_to_ban:
            return False
        strikes.clear()
        self._bans[peer] = now + self.config.ban_seconds
        self.counters["bans"] += 1
        return True

    def status(self) -> dict[str, object]:
        """Counters, current bans and the caps in force (JSON-ready, for ``/status``)."""
        c = self.config
        return {
            "counters": dict(sorted(self.counters.items())),
            "banned": self.banned(),
            "blob_bytes_in_flight": self._blob_in_flight,
            "caps": {"max_streams_per_peer": c.max_streams_per_peer, "rpc_rate": c.rpc_rate,
                     "gossip_rate": c.gossip_rate, "strikes_to_ban": c.strikes_to_ban,
                     "strike_window_s": c.strike_window, "ban_s": c.ban_seconds,
                     "rpc_frame": MAX_RPC_FRAME, "gossip_message": c.max_gossip_message,
                     "blob_budget": c.blob_budget},
        }


__all__ = ["DEFAULT_RPC_CAP", "ECHO_BLOB_CAP", "LimitsConfig", "PeerLimits", "RpcCap", "TokenBucket",
           "rpc_cap", "rpc_caps"]
