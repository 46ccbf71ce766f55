"""Reputation both ways, from settled history on chain.

**Trainers.** Only the contract's settlements count (``UnitSettled``: the operator accepted or
rejected a committed unit; ``UnitClaimed``: the trainer claimed a unit its client left
unsettled). Nothing a trainer says about itself enters its reputation, and history it could
have made itself counts little:

- a unit whose payer or operator is the trainer itself counts nothing (self-dealing);
- an accepted unit counts by what was really paid for it (``amount / unit_credit_wei``, at most
  1): a unit paid a few wei is worth a few wei of evidence;
- each payer's contribution to a trainer is capped (``per_payer_cap`` units), and so is each
  operator's (``per_operator_cap``): one wallet, or one operator settling for many wallets,
  cannot vouch for a trainer alone;
- a payer that has paid no other trainer is a newcomer: all newcomers' evidence about a trainer
  together is capped at ``newcomer_cap`` units (bounded, however many fresh keys there are); a
  payer that has paid ``established_trainers`` other trainers counts fully, one in between
  partly.

So 50 units a trainer funds from 50 fresh keys are worth nothing when it settles them itself,
and at most ``newcomer_cap`` units through other operator keys, while an honest record built with
real, established payers keeps its full weight. The score is the smoothed acceptance rate over that
evidence (Laplace: a newcomer is 1/2). Claims say the *client* failed, not whether the work was
good: kept for display, never scored.

**Clients.** A payer's and an operator's rejection rate (rejected / settled units of their
jobs), shown with the sample size; :func:`client_refusal` says why a trainer should not bid for
a job (rate above ``max_rate`` once ``min_units`` were settled).

The scoring is pure functions over :class:`SettlementRecord`; :class:`SettlementBook` turns
contract events (v2 ``JobFunded`` / ``UnitSettled`` / ``UnitClaimed``, and the v1 contract's
``JobCreated``, whose owner is payer and operator) into records, incrementally: it remembers the
jobs it has seen, so events can be read page by page from a saved cursor.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from fedswarm.config import write_text_atomic

SETTLED_EVENT = "UnitSettled"  # v1 args: jobId, ...; v2: jobKey, round, unit, trainer, accepted, amount
CLAIMED_EVENT = "UnitClaimed"
FUNDED_EVENT = "JobFunded"  # v2: jobKey, payer, operator, ...
CREATED_EVENT = "JobCreated"  # v1: jobId, owner (payer and operator at once)
UNKNOWN = ""  # payer/operator of a job whose funding event was not seen


@dataclass(frozen=True)
class SettlementRecord:
    """One settled (or claimed) unit as the chain tells it."""

    job: str  # job key, lowercase hex without 0x
    round: int
    unit: int
    trainer: str  # lowercase addresses
    payer: str
    operator: str
    accepted: bool
    amount: int  # what the trainer was really paid for it (0 for a rejection)
    claimed: bool = False


@dataclass(frozen=True)
class ReputationPolicy:
    """How much evidence each kind of history is worth (see the module doc)."""

    unit_credit_wei: int = 10**15
    per_payer_cap: float = 5.0
    per_operator_cap: float = 10.0
    newcomer_cap: float = 2.0
    established_trainers: int = 2

    def __post_init__(self) -> None:
        if self.unit_credit_wei <= 0 or self.per_payer_cap <= 0 or self.per_operator_cap <= 0:
            raise ValueError("unit credit and caps must be positive")
        if self.newcomer_cap < 0 or self.established_trainers < 1:
            raise ValueError("newcomer_cap must be >= 0 and established_trainers >= 1")


@dataclass(frozen=True)
class Reputation:
    """A trainer's settled track record.

    ``accepted``, ``rejected`` and ``claimed`` are raw counts (for display). ``good`` and
    ``bad`` are the evidence the score uses (capped and weighted, see the module doc); when
    they are not given (a record built by hand) the raw counts are the evidence.
    """

    accepted: int = 0
    rejected: int = 0
    claimed: int = 0
    good: Fraction | None = field(default=None, compare=False)
    bad: Fraction | None = field(default=None, compare=False)

    @property
    def weight(self) -> Fraction:
        """The smoothed acceptance rate over the evidence, exact: (good + 1) / (good + bad + 2).

        A newcomer gets a neutral 1/2, a few units do not make a trainer perfect, and the value
        stays in (0, 1) so it can divide a price."""
        good = Fraction(self.accepted) if self.good is None else self.good
        bad = Fraction(self.rejected) if self.bad is None else self.bad
        return (good + 1) / (good + bad + 2)

    @property
    def score(self) -> float:
        """:attr:`weight` as a float in (0, 1); 0.5 for a trainer with no history."""
        return float(self.weight)

    @property
    def settled(self) -> int:
        """Units settled either way."""
        return self.accepted + self.rejected


NEW_TRAINER = Reputation()


def _frac(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10**6)


def trainer_reputation(records: Iterable[SettlementRecord],
                       policy: ReputationPolicy | None = None) -> dict[str, Reputation]:
    """Every trainer's :class:`Reputation` from settlement records (duplicates ignored)."""
    pol = policy or ReputationPolicy()
    recs = list({(r.job, r.round, r.unit, r.claimed): r for r in records}.values())
    paid_by: dict[str, set[str]] = defaultdict(set)  # payer -> trainers it paid
    for r in recs:
        if r.accepted and r.amount > 0 and not r.claimed:
            paid_by[r.payer].add(r.trainer)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    # trainer -> operator -> payer -> [good, bad] before the caps
    raw: dict[str, dict[str, dict[str, list[Fraction]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: [Fraction(0), Fraction(0)])))
    unit_credit = Fraction(pol.unit_credit_wei)
    for r in recs:
        c = counts[r.trainer]
        if r.claimed:
            c[2] += 1
            continue
        c[0 if r.accepted else 1] += 1
        if r.trainer in (r.payer, r.operator):
            continue  # self-dealing proves nothing
        cell = raw[r.trainer][r.operator][r.payer]
        if r.accepted:
            cell[0] += min(Fraction(r.amount) / unit_credit, Fraction(1))
        else:
            cell[1] += 1
    out: dict[str, Reputation] = {}
    payer_cap, op_cap = _frac(pol.per_payer_cap), _frac(pol.per_operator_cap)
    new_cap = _frac(pol.newcomer_cap)
    for trainer, c in counts.items():
        good = bad = new_good = new_bad = Fraction(0)
        for payers in raw.get(trainer, {}).values():
            op_good = op_bad = Fraction(0)
            for payer, (g, b) in payers.items():
                others = 0 if payer == UNKNOWN else len(paid_by.get(payer, set()) - {trainer})
                # The established share of a payer counts here, the rest in the newcomers' pool.
                w = Fraction(min(others, pol.established_trainers), pol.established_trainers)
                g, b = min(g, payer_cap), min(b, payer_cap)
                op_good, op_bad = op_good + w * g, op_bad + w * b
                new_good, new_bad = new_good + (1 - w) * g, new_bad + (1 - w) * b
            good += min(op_good, op_cap)
            bad += min(op_bad, op_cap)
        good += min(new_good, new_cap)
        bad += min(new_bad, new_cap)
        out[trainer] = Reputation(c[0], c[1], c[2], good, bad)
    return out


@dataclass(frozen=True)
class ClientRecord:
    """How a payer's or operator's jobs were settled: units settled and units rejected."""

    settled: int = 0
    rejected: int = 0

    @property
    def rejection_rate(self) -> float:
        """Rejected / settled (0.0 with no history)."""
        return self.rejected / self.settled if self.settled else 0.0

    def as_dict(self) -> dict[str, float | int]:
        """For the network view and bids."""
        return {"settled": self.settled, "rejected": self.rejected, "rejection_rate": round(self.rejection_rate, 4)}


def client_records(records: Iterable[SettlementRecord]) -> dict[str, ClientRecord]:
    """Each payer's and operator's record (one address may be both: its jobs count once each
    way, keyed by address). Claims are not verdicts and are left out."""
    seen: set[tuple[str, int, int]] = set()
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.claimed or (r.job, r.round, r.unit) in seen:
            continue
        seen.add((r.job, r.round, r.unit))
        for who in {r.payer, r.operator} - {UNKNOWN}:
            tally[who][0] += 1
            tally[who][1] += not r.accepted
    return {who: ClientRecord(s, j) for who, (s, j) in tally.items()}


def client_refusal(clients: Mapping[str, ClientRecord], parties: Iterable[str], *,
                   max_rate: float = 0.5, min_units: int = 20) -> str | None:
    """Why a trainer should not bid for a job whose payer and operator are ``parties``: one
    of them rejected more than ``max_rate`` of at least ``min_units`` settled units. None: bid."""
    for who in parties:
        rec = clients.get(who.lower())
        if rec is not None and rec.settled >= min_units and rec.rejection_rate > max_rate:
            return (f"{who} rejected {rec.rejected} of {rec.settled} settled units "
                    f"({rec.rejection_rate:.0%} > {max_rate:.0%})")
    return None


# --------------------------------------------------------------------------- chain adapters


def _field(event: Any, key: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(key)
    return getattr(event, key, None)


def _hex(value: Any) -> str:
    # Job keys arrive as bytes / HexBytes from web3 and as hex text from JSON.
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value).lower().removeprefix("0x")


@dataclass
class SettlementBook:
    """Settlement records built from contract events, fed page by page (:meth:`ingest`).

    Remembers each job's payer and operator from its funding event, so a later page's
    settlements are attributed; JSON-ready with :meth:`to_dict` / :meth:`from_dict` (and
    :meth:`save` / :meth:`load`) to sit beside the event cursor."""

    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)
    records: dict[tuple[str, int, int, bool], SettlementRecord] = field(default_factory=dict)

    def ingest(self, events: Iterable[Any]) -> None:
        """Add v1 or v2 contract events (``LedgerEvent`` or ``{'name', 'args'}``); others are
        ignored, repeats are harmless. ValueError (one line) for a malformed event of a kind
        that counts."""
        for event in events:
            name = _field(event, "name")
            if name not in (FUNDED_EVENT, CREATED_EVENT, SETTLED_EVENT, CLAIMED_EVENT):
                continue
            args = _field(event, "args")
            if not isinstance(args, Mapping):
                raise ValueError(f"{name} event without args: pass LedgerEvent or {{'name','args'}}")
            try:
                job = _hex(args["jobKey"] if "jobKey" in args else args["jobId"])
                if name == FUNDED_EVENT:
                    self.jobs[job] = (str(args["payer"]).lower(), str(args["operator"]).lower())
                    continue
                if name == CREATED_EVENT:
                    owner = str(args.get("owner", UNKNOWN)).lower()
                    self.jobs.setdefault(job, (owner, owner))
                    continue
                claimed = name == CLAIMED_EVENT
                accepted = True if claimed else bool(args["accepted"])
                payer, operator = self.jobs.get(job, (UNKNOWN, UNKNOWN))
                rec = SettlementRecord(job=job, round=int(args["round"]), unit=int(args["unit"]),
                                       trainer=str(args["trainer"]).lower(), payer=payer, operator=operator,
                                       accepted=accepted, amount=int(args.get("amount", 0)) if accepted else 0,
                                       claimed=claimed)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{name} event is missing or has a bad argument: {exc}") from None
            self.records.setdefault((rec.job, rec.round, rec.unit, rec.claimed), rec)

    def all(self) -> list[SettlementRecord]:
        """Every record so far."""
        return list(self.records.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"jobs": {k: list(v) for k, v in self.jobs.items()},
                "records": [asdict(r) for r in self.records.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SettlementBook:
        """Inverse of :meth:`to_dict`."""
        book = cls({str(k): (str(v[0]), str(v[1])) for k, v in data.get("jobs", {}).items()})
        for r in data.get("records", []):
            rec = SettlementRecord(**r)
            book.records[(rec.job, rec.round, rec.unit, rec.claimed)] = rec
        return book

    def save(self, path: Path) -> None:
        """Write atomically (save it *before* the event cursor, so a crash re-reads, never skips)."""
        write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> SettlementBook:
        """The saved book, or an empty one."""
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls()


def reputation_from_events(events: Iterable[Any], policy: ReputationPolicy | None = None) -> dict[str, Reputation]:
    """Reputation per trainer address (lowercase) straight from contract events (v1 or v2).

    Units are de-duplicated by (job, round, unit): reading an overlapping block range twice
    does not inflate anyone's record. Raises ValueError (one line) for a settlement/claim event
    that lacks its arguments."""
    book = SettlementBook()
    book.ingest(events)
    return trainer_reputation(book.all(), policy)
