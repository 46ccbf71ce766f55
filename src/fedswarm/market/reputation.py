"""Trainer reputation from settled history on chain (FedSwarmEscrow events).

Only the contract's own events count: ``UnitSettled`` (the job owner accepted or rejected a
committed unit) and ``UnitClaimed`` (the trainer claimed a unit its client left unsettled past
the settle window). Nothing a trainer says about itself enters its reputation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

SETTLED_EVENT = "UnitSettled"  # args: jobId, round, unit, trainer, accepted, amount, reasonHash
CLAIMED_EVENT = "UnitClaimed"  # args: jobId, round, unit, trainer, amount


@dataclass(frozen=True)
class Reputation:
    """A trainer's settled track record across all jobs on one contract.

    ``accepted`` and ``rejected`` count units its clients settled; ``claimed`` counts units it
    claimed after a client never settled. Claims say the *client* failed, not whether the update
    was good, so they are kept for display but do not move the score.
    """

    accepted: int = 0
    rejected: int = 0
    claimed: int = 0

    @property
    def weight(self) -> Fraction:
        """The smoothed acceptance rate, exact: (accepted + 1) / (accepted + rejected + 2).

        Laplace (Beta(1, 1)) smoothing: a newcomer gets a neutral 1/2, one lucky unit does not
        make a trainer perfect, and the value stays in (0, 1) so it can divide a price.
        """
        return Fraction(self.accepted + 1, self.accepted + self.rejected + 2)

    @property
    def score(self) -> float:
        """:attr:`weight` as a float in (0, 1); 0.5 for a trainer with no history."""
        return float(self.weight)

    @property
    def settled(self) -> int:
        """Units settled either way."""
        return self.accepted + self.rejected


NEW_TRAINER = Reputation()


def _field(event: Any, key: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(key)
    return getattr(event, key, None)


def _key_part(value: Any) -> Any:
    # jobId arrives as bytes / HexBytes from web3 and as hex text from JSON; unify for dedup.
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, str):
        return value.lower().removeprefix("0x")
    return value


def reputation_from_events(events: Iterable[Any]) -> dict[str, Reputation]:
    """Reputation per trainer address (lowercase) from contract events.

    ``events``: :class:`fedswarm.ledger.evm.LedgerEvent` objects or mappings with ``name`` and
    ``args`` (the contract's argument names). Other events are ignored. A unit is settled or
    claimed at most once by the contract, so events are de-duplicated by (job, round, unit):
    reading an overlapping block range twice does not inflate anyone's record.

    Raises ValueError (one line) for a settlement/claim event that lacks its arguments.
    """
    counts: dict[str, list[int]] = {}
    seen: set[tuple[Any, ...]] = set()
    for event in events:
        name = _field(event, "name")
        if name not in (SETTLED_EVENT, CLAIMED_EVENT):
            continue
        args = _field(event, "args")
        if not isinstance(args, Mapping):
            raise ValueError(f"{name} event without args: pass LedgerEvent or {{'name','args'}}")
        try:
            trainer = str(args["trainer"]).lower()
            unit_key = (_key_part(args["jobId"]), int(args["round"]), int(args["unit"]))
            accepted = bool(args["accepted"]) if name == SETTLED_EVENT else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name} event is missing or has a bad argument: {exc}") from None
        if (name, *unit_key) in seen:
            continue
        seen.add((name, *unit_key))
        acc_rej_claim = counts.setdefault(trainer, [0, 0, 0])
        if name == CLAIMED_EVENT:
            acc_rej_claim[2] += 1
        elif accepted:
            acc_rej_claim[0] += 1
        else:
            acc_rej_claim[1] += 1
    return {addr: Reputation(*c) for addr, c in counts.items()}
