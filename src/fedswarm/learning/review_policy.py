"""Which units the client re-executes, and how many (docs/ARCHITECTURE.md §5).

Every choice is drawn from HMAC-SHA256(client secret, round, unit, purpose): reproducible by the
client (and provable later by revealing the secret), unpredictable to a trainer, and independent
of the order units arrive in. The reference is picked only once every delivery is in, so no
trainer can know while working whether its unit will be the yardstick.

After the round's updates are measured against the reference, :func:`plan_audits` spends the
rest of a bounded budget: ambiguous copy pairs first (re-execution tells the original from the
copy), then doubtful units (a statistic near its bound, on either side), then a trainer's first
units, then a small base rate.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "AuditPlan",
    "ReexecPolicy",
    "TrainerRecord",
    "TrainerRecords",
    "draw",
    "pick_reference_unit",
    "plan_audits",
    "reexec_budget",
]

# Priorities, most urgent first.
PRIORITY_COPY, PRIORITY_DOUBT, PRIORITY_NEW, PRIORITY_BASE = 0, 1, 2, 3
_PRIORITY_NAMES = {PRIORITY_COPY: "copy", PRIORITY_DOUBT: "doubtful", PRIORITY_NEW: "new trainer",
                   PRIORITY_BASE: "random"}


@dataclass(frozen=True)
class ReexecPolicy:
    """Re-execution probabilities and the per-round budget.

    ``max_per_round`` bounds the client's extra training work per round, the reference included
    (each re-execution costs one trainer's unit of CPU time); ``max_fraction`` bounds it relative
    to the round's units (rounded up). The budget is ``min(max_per_round, ceil(max_fraction * n))``
    and never below 1: the reference is always re-executed.
    """

    base_probability: float = 0.1
    new_trainer_probability: float = 0.5
    new_trainer_units: int = 3
    doubt_probability: float = 1.0
    copy_probability: float = 1.0
    max_per_round: int = 4
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("base_probability", "new_trainer_probability", "doubt_probability",
                     "copy_probability", "max_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_per_round < 1 or self.new_trainer_units < 0:
            raise ValueError("max_per_round must be >= 1 and new_trainer_units >= 0")


@dataclass
class TrainerRecord:
    """What the client has seen of one trainer in this job."""

    reviewed: int = 0
    accepted: int = 0
    rejected: int = 0
    doubtful: int = 0
    reexecuted: int = 0
    weight_mismatches: int = 0


@dataclass
class TrainerRecords:
    """Per-trainer records; JSON-ready through :meth:`to_dict` / :meth:`from_dict`."""

    by_trainer: dict[str, TrainerRecord] = field(default_factory=dict)

    def get(self, trainer: str) -> TrainerRecord:
        """The trainer's record (a new one if unseen)."""
        return self.by_trainer.setdefault(trainer, TrainerRecord())

    def to_dict(self) -> dict[str, dict[str, int]]:
        """``{trainer: {field: count}}``."""
        return {t: dict(r.__dict__) for t, r in self.by_trainer.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> TrainerRecords:
        """Inverse of :meth:`to_dict` (unknown fields are ignored)."""
        known = set(TrainerRecord().__dict__)
        return cls({str(t): TrainerRecord(**{k: int(v) for k, v in r.items() if k in known})
                    for t, r in data.items()})


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
        raise ValueError("the re-execution secret must be at least 16 random bytes")


def draw(secret: bytes, round_index: int, unit_id: str, purpose: str) -> float:
    """A uniform number in [0, 1) from HMAC-SHA256(secret, purpose | round | unit)."""
    _check_secret(secret)
    msg = f"fedswarm-review/1|{purpose}|{round_index}|{unit_id}".encode()
    digest = hmac.new(bytes(secret), msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pick_reference_unit(unit_ids: Collection[str], secret: bytes, round_index: int) -> str:
    """The unit the client re-executes as the round's reference.

    Call it only after every delivery of the round is in (the set of candidates must be final):
    each delivered unit is equally likely, and a trainer cannot predict the pick.
    """
    ids = [str(u) for u in unit_ids]
    if not ids:
        raise ValueError("no delivered units to pick a reference from")
    if len(set(ids)) != len(ids):
        raise ValueError("unit ids must be unique")
    return min(ids, key=lambda u: draw(secret, round_index, u, "reference"))


def reexec_budget(num_units: int, policy: ReexecPolicy) -> int:
    """Re-executions allowed this round, the reference included (at least 1)."""
    return max(1, min(policy.max_per_round, math.ceil(policy.max_fraction * num_units - 1e-9)))


@dataclass(frozen=True)
class AuditPlan:
    """The units to re-execute besides the reference, and what was wanted but over budget."""

    audits: list[str]
    reasons: dict[str, str]
    skipped: list[str]
    budget: int


def plan_audits(
    trainer_of: Mapping[str, str],
    *,
    secret: bytes,
    round_index: int,
    records: TrainerRecords,
    policy: ReexecPolicy,
    already: Sequence[str] = (),
    doubtful: Collection[str] = (),
    copies: Collection[str] = (),
) -> AuditPlan:
    """Choose which further units to re-execute this round.

    ``trainer_of`` maps every delivered unit to its trainer; ``already`` are the units re-executed
    (the reference); ``doubtful`` units had a statistic near a bound; ``copies`` are members of a
    nearly-equal pair the own-chunk test could not decide. Each unit is wanted with the highest
    probability that applies to it (copy, doubt, new trainer, base), drawn from the secret; wanted
    units are taken most urgent first, then by their draw, up to the budget.
    """
    budget = reexec_budget(len(trainer_of), policy)
    left = budget - len(already)
    wanted: list[tuple[int, float, str]] = []
    for uid, trainer in trainer_of.items():
        if uid in already:
            continue
        if uid in copies:
            prio, prob = PRIORITY_COPY, policy.copy_probability
        elif uid in doubtful:
            prio, prob = PRIORITY_DOUBT, policy.doubt_probability
        elif records.get(trainer).reviewed < policy.new_trainer_units:
            prio, prob = PRIORITY_NEW, policy.new_trainer_probability
        else:
            prio, prob = PRIORITY_BASE, policy.base_probability
        u = draw(secret, round_index, uid, "audit")
        if u < prob:
            wanted.append((prio, u, uid))
    wanted.sort()
    chosen = [uid for _, _, uid in wanted[: max(left, 0)]]
    return AuditPlan(
        audits=chosen,
        reasons={uid: _PRIORITY_NAMES[p] for p, _, uid in wanted},
        skipped=[uid for _, _, uid in wanted[max(left, 0):]],
        budget=budget,
    )
