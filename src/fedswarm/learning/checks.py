"""The single checks and verdict types of an update review (docs/ARCHITECTURE.md §5).

A check is a pure function returning a :class:`Verdict`; :class:`UnitReport` collects one unit's
verdicts. Shape/dtype and finiteness are here; the rest of a round's review (against the
client's own re-executed reference, never against the median of untrusted updates) is
:func:`fedswarm.learning.review.review_round`. A rejected unit is not paid; :func:`reason_hash`
gives the bytes32 that goes on chain next to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "UnitReport",
    "Verdict",
    "check_finite",
    "check_shape",
    "reason_hash",
]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check on one update: accepted or not, and why."""

    accepted: bool
    reason: str
    check: str


# --------------------------------------------------------------------------------------------
# Single checks


def check_shape(
    update: np.ndarray, global_params: np.ndarray, dtype: np.dtype | type = np.float32
) -> Verdict:
    """Accept only a 1-D array with the global parameters' shape and the expected dtype."""
    arr = update if isinstance(update, np.ndarray) else None
    if arr is None:
        return Verdict(False, f"update is a {type(update).__name__}, not an array", "shape")
    if arr.shape != np.shape(global_params):
        return Verdict(
            False, f"shape {arr.shape} differs from the model's {np.shape(global_params)}", "shape"
        )
    if arr.dtype != np.dtype(dtype):
        return Verdict(False, f"dtype {arr.dtype} differs from the expected {np.dtype(dtype)}",
                       "shape")
    return Verdict(True, f"shape {arr.shape} and dtype {arr.dtype} match", "shape")


def check_finite(update: np.ndarray) -> Verdict:
    """Reject an update with any NaN or infinity."""
    bad = int(update.size - np.count_nonzero(np.isfinite(update)))
    if bad:
        return Verdict(False, f"{bad} of {update.size} values are NaN or infinite", "finite")
    return Verdict(True, "all values finite", "finite")


def reason_hash(verdict: Verdict) -> bytes:
    """keccak256 of the verdict's reason string (UTF-8): the bytes32 recorded on chain."""
    from eth_utils import keccak  # lazy: eth_utils is a slowish import not needed elsewhere

    return keccak(verdict.reason.encode("utf-8"))


@dataclass(frozen=True)
class UnitReport:
    """All verdicts on one unit's update, in the order the checks ran."""

    unit_id: str
    verdicts: tuple[Verdict, ...]

    @property
    def accepted(self) -> bool:
        """True when every check that ran accepted the update."""
        return all(v.accepted for v in self.verdicts)

    @property
    def verdict(self) -> Verdict:
        """The deciding verdict: the first rejection, or a summary of the checks passed."""
        for v in self.verdicts:
            if not v.accepted:
                return v
        passed = ", ".join(v.check for v in self.verdicts)
        return Verdict(True, f"passed: {passed}", "round")
