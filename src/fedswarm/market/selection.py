"""Choosing trainers from bids: a small policy interface and the default policy.

In the spirit of Flower's ``Strategy``: :class:`SelectionPolicy` runs one template
(:meth:`~SelectionPolicy.select`: drop duplicates, check each bid, rank, take the head) and a
policy overrides the two hooks, :meth:`~SelectionPolicy.check` and
:meth:`~SelectionPolicy.rank_key`. Bids reaching a policy are already verified
(:func:`fedswarm.market.bids.verify_bid`); policies are pure and deterministic, so a restarted
client that re-runs selection over its stored bids picks the same trainers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from fedswarm.market.bids import BidLike
from fedswarm.market.reputation import NEW_TRAINER, Reputation


class SelectionError(ValueError):
    """Not enough bids qualify for the job; the message is one line with the numbers."""


@dataclass(frozen=True)
class JobRequirements:
    """What the job needs from the market: counts, the price cap per unit and the machine."""

    trainers: int
    standby: int
    price_cap_wei: int
    min_ram_mb: int = 0
    needs_gpu: bool = False
    min_reputation: float = 0.0

    def __post_init__(self) -> None:
        if self.trainers < 1:
            raise ValueError(f"a job needs at least 1 trainer, got {self.trainers}")
        if self.standby < 0:
            raise ValueError(f"standby trainers cannot be negative, got {self.standby}")
        if self.price_cap_wei <= 0:
            raise ValueError(f"the price cap must be positive, got {self.price_cap_wei} wei")
        if not 0.0 <= self.min_reputation <= 1.0:
            raise ValueError(f"min_reputation must be in [0, 1], got {self.min_reputation}")


@dataclass
class Selection:
    """The outcome: ``chosen`` train, ``standby`` take reassigned units, ``rejected`` pairs each
    other bid with a one-line reason (to tell the trainer, and to explain a failed job)."""

    chosen: list[Any] = field(default_factory=list)
    standby: list[Any] = field(default_factory=list)
    rejected: list[tuple[Any, str]] = field(default_factory=list)


def reputation_of(bid: BidLike, reputation: Mapping[str, Reputation]) -> Reputation:
    """The bid's address's record; a newcomer's neutral prior when it has none."""
    return reputation.get(bid.address.lower(), NEW_TRAINER)


def has_gpu(bid: BidLike) -> bool:
    """Whether the bid offers an accelerator."""
    caps = bid.capabilities
    return caps.device != "cpu" or bool(caps.gpu_name)


def speed_key(bid: BidLike) -> tuple[float, int, int, int]:
    """Larger is faster: a measured ``speed`` when the bid carries one, then GPU over CPU,
    GPU memory, CPU cores."""
    speed = getattr(bid, "speed", None)
    caps = bid.capabilities
    return (
        float(speed) if isinstance(speed, int | float) else 0.0,
        int(has_gpu(bid)),
        caps.gpu_memory_mb or 0,
        caps.cpu_cores,
    )


class SelectionPolicy(ABC):
    """Chooses trainers and standbys from verified bids.

    Subclasses implement :meth:`check` (why a bid cannot serve this job, or None) and
    :meth:`rank_key` (smaller is better; must be a total order for determinism).
    """

    name: str = "policy"

    @abstractmethod
    def check(
        self, bid: BidLike, req: JobRequirements, reputation: Mapping[str, Reputation]
    ) -> str | None:
        """A one-line reason ``bid`` is unfit for the job, or None when it qualifies."""

    @abstractmethod
    def rank_key(self, bid: BidLike, reputation: Mapping[str, Reputation]) -> Any:
        """Sort key of a qualified bid: the head of the order is chosen first."""

    def select(
        self,
        bids: list[Any],
        req: JobRequirements,
        reputation: Mapping[str, Reputation],
    ) -> Selection:
        """Pick ``req.trainers`` chosen and up to ``req.standby`` standbys from ``bids``.

        Parameters: ``bids`` (verified bids), ``req`` the job's requirements, ``reputation``
        by lowercase address. Returns a :class:`Selection`; the order of ``bids`` does not
        matter. Raises :class:`SelectionError` when fewer than ``req.trainers`` qualify.
        """
        out = Selection()
        # One registration per address and per peer in the contract and the role: keep the best
        # bid of each, so a trainer re-bidding lower replaces its own earlier offer.
        ordered = sorted(bids, key=lambda b: self.rank_key(b, reputation))
        seen_addr: set[str] = set()
        seen_peer: set[str] = set()
        qualified: list[Any] = []
        for bid in ordered:
            addr = bid.address.lower()
            if addr in seen_addr or bid.peer_id in seen_peer:
                out.rejected.append((bid, "duplicate: this address or peer has a better bid"))
                continue
            seen_addr.add(addr)
            seen_peer.add(bid.peer_id)
            reason = self.check(bid, req, reputation)
            if reason is None:
                qualified.append(bid)
            else:
                out.rejected.append((bid, reason))
        if len(qualified) < req.trainers:
            raise SelectionError(self._shortfall(bids, qualified, out.rejected, req))
        out.chosen = qualified[: req.trainers]
        out.standby = qualified[req.trainers : req.trainers + req.standby]
        for bid in qualified[req.trainers + req.standby :]:
            out.rejected.append((bid, "outbid: cheaper or more reputable bids filled the job"))
        return out

    def _shortfall(
        self,
        bids: list[Any],
        qualified: list[Any],
        rejected: list[tuple[Any, str]],
        req: JobRequirements,
    ) -> str:
        if not bids:
            return (f"no bids arrived for a job needing {req.trainers} trainer(s): "
                    "start more trainers or wait longer for bids")
        cheapest = min(b.price_wei for b in bids)
        why = Counter(reason.split(":")[0] for _, reason in rejected)
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(why.items()))
        head = (f"only {len(qualified)} of {len(bids)} bids qualify but the job needs "
                f"{req.trainers} trainer(s)")
        prices = f"cheapest bid {cheapest} wei, price cap {req.price_cap_wei} wei"
        if cheapest > req.price_cap_wei:
            return (f"{head}: price cap below every bid ({prices}); "
                    f"raise the cap to at least {cheapest} wei")
        return f"{head} ({prices}; rejected: {reasons}); relax the requirements or add trainers"


class CheapestReputable(SelectionPolicy):
    """The default policy (docs/ARCHITECTURE.md §1 step 3).

    A bid qualifies when its price is within the cap, its machine has the RAM (and GPU) the job
    needs and its reputation reaches ``min_reputation``. Qualified bids are ordered by effective
    price = price / reputation weight (exact rationals, so no float ties), then by speed (faster
    first), then by price, address and peer id so the order is total and deterministic.
    """

    name = "cheapest"

    def check(
        self, bid: BidLike, req: JobRequirements, reputation: Mapping[str, Reputation]
    ) -> str | None:
        """Why ``bid`` cannot serve this job, or None."""
        if bid.price_wei > req.price_cap_wei:
            return f"over the price cap: {bid.price_wei} wei > {req.price_cap_wei} wei"
        caps = bid.capabilities
        if caps.ram_mb < req.min_ram_mb:
            return f"too little RAM: {caps.ram_mb} MB < {req.min_ram_mb} MB"
        if req.needs_gpu and not has_gpu(bid):
            return "no GPU: the job needs one"
        rep = reputation_of(bid, reputation)
        if rep.score < req.min_reputation:
            return (f"reputation too low: {rep.score:.3f} < {req.min_reputation:.3f} "
                    f"({rep.accepted} accepted, {rep.rejected} rejected)")
        return None

    def rank_key(self, bid: BidLike, reputation: Mapping[str, Reputation]) -> Any:
        """(effective price, -speed, price, address, peer id)."""
        effective = Fraction(bid.price_wei) / reputation_of(bid, reputation).weight
        speed = tuple(-s for s in speed_key(bid))
        return (effective, speed, bid.price_wei, bid.address.lower(), bid.peer_id)


_POLICIES: dict[str, Callable[[], SelectionPolicy]] = {
    CheapestReputable.name: CheapestReputable,
}


def make_policy(name: str = "cheapest") -> SelectionPolicy:
    """A ready selection policy by name (``cheapest``: :class:`CheapestReputable`).

    Raises ValueError naming the known policies for an unknown name.
    """
    try:
        return _POLICIES[name]()
    except KeyError:
        known = ", ".join(sorted(_POLICIES))
        raise ValueError(f"unknown selection policy {name!r}: choose one of {known}") from None
