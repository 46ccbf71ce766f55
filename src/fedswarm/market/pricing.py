"""What a job costs: the escrow the client funds and each trainer's reservation.

The contract reserves ``pricePerUnit * maxUnits`` per registered trainer out of the job's
escrow (``addTrainers`` reverts with ``InsufficientFunds`` otherwise), so the quote is exactly
that sum: each chosen trainer one unit per round, each standby ``reassign_reserve_units`` units
for work reassigned from a failed trainer. All amounts are integers in contract units (wei on
anvil, tinybar inside Hedera's EVM): never floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fedswarm.market.bids import MAX_PRICE_WEI
from fedswarm.market.selection import Selection

MAX_UNITS = (1 << 32) - 1  # the contract's maxUnits is a uint32


@dataclass(frozen=True)
class TrainerQuote:
    """One trainer's line in the quote."""

    peer_id: str
    address: str
    role: Literal["trainer", "standby"]
    price_wei: int
    max_units: int
    reserved_wei: int


@dataclass(frozen=True)
class Quote:
    """The escrow of a job: per-trainer lines, their sum and a breakdown by role."""

    rounds: int
    reassign_reserve_units: int
    trainers: list[TrainerQuote]
    total_wei: int
    breakdown: dict[str, int] = field(default_factory=dict)

    def add_trainers_args(self) -> tuple[list[str], list[int], list[int]]:
        """``(addresses, prices, max_units)`` for ``Ledger.add_trainers``.

        Standbys with no reserved units are left out: the contract refuses ``maxUnits == 0``,
        and such a standby could never be paid anyway.
        """
        lines = [t for t in self.trainers if t.max_units > 0]
        return ([t.address for t in lines], [t.price_wei for t in lines],
                [t.max_units for t in lines])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (amounts as integers) for the REST API and the CLI."""
        return {
            "rounds": self.rounds,
            "reassign_reserve_units": self.reassign_reserve_units,
            "total_wei": self.total_wei,
            "breakdown": dict(self.breakdown),
            "trainers": [t.__dict__.copy() for t in self.trainers],
        }


def _line(bid: Any, role: Literal["trainer", "standby"], units: int) -> TrainerQuote:
    price = bid.price_wei
    if not isinstance(price, int) or isinstance(price, bool) or not 0 < price <= MAX_PRICE_WEI:
        raise ValueError(f"bid from {bid.address} has price {price!r}: not 1..2^128-1 wei")
    return TrainerQuote(
        peer_id=bid.peer_id, address=bid.address, role=role,
        price_wei=price, max_units=units, reserved_wei=price * units,
    )


def quote(selection: Selection, rounds: int, reassign_reserve_units: int) -> Quote:
    """The escrow for ``selection`` over ``rounds`` rounds.

    total = Σ chosen price × rounds + Σ standby price × ``reassign_reserve_units``.
    Raises ValueError (one line) for a non-positive round count, a negative reserve, unit
    counts beyond the contract's uint32 or an empty selection.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if (isinstance(reassign_reserve_units, bool) or not isinstance(reassign_reserve_units, int)
            or reassign_reserve_units < 0):
        raise ValueError(
            f"reassign_reserve_units must be a non-negative integer, got {reassign_reserve_units!r}"
        )
    if max(rounds, reassign_reserve_units) > MAX_UNITS:
        raise ValueError(f"at most {MAX_UNITS} units per trainer fit the contract")
    if not selection.chosen:
        raise ValueError("cannot quote a selection without chosen trainers")
    lines = [_line(b, "trainer", rounds) for b in selection.chosen]
    lines += [_line(b, "standby", reassign_reserve_units) for b in selection.standby]
    trainers_wei = sum(t.reserved_wei for t in lines if t.role == "trainer")
    standby_wei = sum(t.reserved_wei for t in lines if t.role == "standby")
    return Quote(
        rounds=rounds,
        reassign_reserve_units=reassign_reserve_units,
        trainers=lines,
        total_wei=trainers_wei + standby_wei,
        breakdown={
            "trainers_wei": trainers_wei,
            "standby_wei": standby_wei,
            "trainer_units": rounds * len(selection.chosen),
            "standby_units": reassign_reserve_units * len(selection.standby),
        },
    )
