"""Typed values of FedSwarmEscrowV2: job terms, trainer terms, verdicts, views, enums.

Each type converts to the tuple the contract's ABI takes (``as_tuple``) or from the tuple a
view returns (``from_tuple``); amounts are in contract units.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_utils import to_checksum_address

from fedswarm.ledger.evm import LedgerEvent, TxReceipt

V2_CONTRACT_NAME = "FedSwarmEscrowV2"
ZERO32 = b"\0" * 32
ZERO_ADDRESS = "0x" + "00" * 20


class JobStatusV2(IntEnum):
    """``FedSwarmEscrowV2.JobStatus``."""

    NONE = 0
    OPEN = 1
    COMPLETED = 2
    CANCELLED = 3
    RELEASED = 4


class UnitStatusV2(IntEnum):
    """``FedSwarmEscrowV2.UnitStatus``."""

    NONE = 0
    ACCEPTED = 1
    REJECTED = 2
    CLAIMED = 3


class SkipReason(IntEnum):
    """Why ``settle`` skipped a verdict (``UnitSkipped.reason``)."""

    NONE = 0
    ALREADY_DONE = 1  # the unit was settled or claimed before
    BUDGET_USED = 2  # the trainer's unit budget is used up


@dataclass(frozen=True)
class JobTerms:
    """What the payer fixes when funding: operator, deadline (unix s), settle and claim windows
    (s), price cap per unit and the total unit budget of all trainers (redo budget included)."""

    operator: str
    deadline: int
    settle_window: int
    claim_window: int
    price_cap: int
    unit_budget: int

    def as_tuple(self) -> tuple[str, int, int, int, int, int]:
        return (to_checksum_address(self.operator), self.deadline, self.settle_window,
                self.claim_window, self.price_cap, self.unit_budget)


@dataclass(frozen=True)
class TrainerTerms:
    """One trainer to register: its price per unit and how many units it may be paid."""

    trainer: str
    price: int
    units: int

    def as_tuple(self) -> tuple[str, int, int]:
        return (to_checksum_address(self.trainer), self.price, self.units)


@dataclass(frozen=True)
class Verdict:
    """The operator's judgement of one unit; ``reason_hash`` says why it was rejected."""

    round: int
    unit: int
    trainer: str
    update_hash: bytes
    accepted: bool
    reason_hash: bytes = ZERO32

    def as_tuple(self) -> tuple[int, int, str, bytes, bool, bytes]:
        return (self.round, self.unit, to_checksum_address(self.trainer), bytes(self.update_hash),
                bool(self.accepted), bytes(self.reason_hash))


@dataclass(frozen=True)
class JobView:
    """A job as the contract's ``job`` view returns it."""

    payer: str
    operator: str
    status: JobStatusV2
    deadline: int
    close_at: int
    settle_window: int
    claim_window: int
    release_at: int
    price_cap: int
    unit_budget: int
    units_registered: int
    units_done: int
    escrow: int
    free: int
    reserved: int

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> JobView:
        return cls(t[0], t[1], JobStatusV2(t[2]), *(int(x) for x in t[3:15]))


@dataclass(frozen=True)
class Registration:
    """A trainer's registration for one job."""

    price: int
    units: int
    used: int
    registered: bool

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> Registration:
        return cls(int(t[0]), int(t[1]), int(t[2]), bool(t[3]))


@dataclass(frozen=True)
class UnitState:
    """Who did a unit (zero address if nobody yet) and how it ended."""

    trainer: str
    status: UnitStatusV2

    @classmethod
    def from_tuple(cls, t: tuple[Any, ...]) -> UnitState:
        return cls(str(t[0]), UnitStatusV2(t[1]))


@dataclass(frozen=True)
class SettleOutcome:
    """What one settle transaction did: settled units ``(round, unit, trainer, accepted,
    amount)`` and skipped ones ``(round, unit, trainer, reason)``."""

    receipt: TxReceipt
    settled: tuple[tuple[int, int, str, bool, int], ...]
    skipped: tuple[tuple[int, int, str, SkipReason], ...]

    @classmethod
    def from_events(cls, receipt: TxReceipt, events: list[LedgerEvent]) -> SettleOutcome:
        settled = tuple(
            (e.args["round"], e.args["unit"], e.args["trainer"], e.args["accepted"], e.args["amount"])
            for e in events if e.name == "UnitSettled"
        )
        skipped = tuple(
            (e.args["round"], e.args["unit"], e.args["trainer"], SkipReason(e.args["reason"]))
            for e in events if e.name == "UnitSkipped"
        )
        return cls(receipt, settled, skipped)
