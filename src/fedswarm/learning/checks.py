"""Checking trainers' updates before paying for them (docs/ARCHITECTURE.md §5).

Each check is a pure function returning a :class:`Verdict`; :func:`check_round` runs them over a
round, cheapest first, and stops at a unit's first rejection. Model code is injected as callables
(``evaluate(params) -> loss``, ``reexecute(unit_id) -> params``), so this module knows nothing
about torch. A rejected unit is not paid; :func:`reason_hash` gives the bytes32 that goes on
chain next to it.

:func:`check_round` judges norms and losses against the round's median, which Sybils can move;
it stays for its existing callers. New code reviews a round with
:func:`fedswarm.learning.review.review_round`, which judges every update against the client's own
re-executed reference and reuses the single checks and verdict types defined here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedswarm.learning.strategies import Strategy

__all__ = [
    "CheckConfig",
    "RoundReport",
    "UnitReport",
    "Verdict",
    "check_finite",
    "check_flagged",
    "check_loss",
    "check_norm",
    "check_reexecution",
    "check_round",
    "check_shape",
    "delta_norm",
    "reason_hash",
    "select_for_reexecution",
]

Evaluate = Callable[[np.ndarray], float]
Reexecute = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check on one update: accepted or not, and why."""

    accepted: bool
    reason: str
    check: str


@dataclass(frozen=True)
class CheckConfig:
    """Tolerances of the update checks.

    Parameters
    ----------
    norm_factor:
        Reject a delta whose L2 norm exceeds ``norm_factor`` x the round's median delta norm.
    loss_rel_tolerance, loss_abs_tolerance:
        Reject when ``loss(update) > loss(global) + abs + rel * |loss(global)|``. Some slack is
        needed: an honest trainer on a skewed shard may do a little worse on the client's data.
    reexec_fraction:
        Share of the round's units the client re-trains itself (rounded up; 0 disables).
    reexec_rtol, reexec_atol:
        Accept a re-executed unit when ``|update - redo| <= atol + rtol * |redo - global|``.
        CPU training is bit-identical, so the default is tight; raise ``rtol`` for GPU trainers.
    """

    norm_factor: float = 3.0
    loss_rel_tolerance: float = 0.1
    loss_abs_tolerance: float = 0.0
    reexec_fraction: float = 0.1
    reexec_rtol: float = 1e-3
    reexec_atol: float = 1e-7

    def __post_init__(self) -> None:
        if not (math.isfinite(self.norm_factor) and self.norm_factor >= 1.0):
            raise ValueError(f"norm_factor must be a finite number >= 1, got {self.norm_factor}")
        for name in ("loss_rel_tolerance", "loss_abs_tolerance", "reexec_rtol", "reexec_atol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.reexec_fraction <= 1.0:
            raise ValueError(f"reexec_fraction must be in [0, 1], got {self.reexec_fraction}")


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


def delta_norm(update: np.ndarray, global_params: np.ndarray) -> float:
    """L2 norm of ``update - global_params``, accumulated in float64."""
    diff = update.astype(np.float64) - global_params.astype(np.float64)
    return float(np.sqrt(np.dot(diff, diff)))


def check_norm(norm: float, round_median: float, factor: float = 3.0) -> Verdict:
    """Reject a delta norm above ``factor`` x the round's median, or a zero delta when others
    moved (an update identical to the global model did no work)."""
    if not math.isfinite(norm):
        return Verdict(False, f"delta norm is {norm}", "norm")
    if norm > factor * round_median:
        return Verdict(
            False,
            f"delta norm {norm:.6g} exceeds {factor:g} x the round median {round_median:.6g}",
            "norm",
        )
    if norm == 0.0 and round_median > 0.0:
        return Verdict(False, "update equals the global model (no training done)", "norm")
    return Verdict(
        True, f"delta norm {norm:.6g} within {factor:g} x the round median {round_median:.6g}",
        "norm",
    )


def check_loss(
    update_loss: float,
    global_loss: float,
    rel_tolerance: float = 0.1,
    abs_tolerance: float = 0.0,
    round_median: float | None = None,
) -> Verdict:
    """Reject when the update's validation loss is worse than the reference by more than
    ``abs_tolerance + rel_tolerance * |reference|``.

    The reference is the global model's loss, or the round's median update loss when that is
    higher: after a few rounds the average (the global model) is often better than every
    single trainer's update, and honest updates must not be judged against it alone. A
    poisoned or broken update still sits far above the round's median."""
    if not math.isfinite(update_loss):
        return Verdict(False, f"validation loss is {update_loss}", "loss")
    ref = global_loss if round_median is None or not math.isfinite(round_median) else max(global_loss, round_median)
    what = f"the global model's {global_loss:.6g}" if ref == global_loss else \
        f"the round's median {ref:.6g} (global model {global_loss:.6g})"
    bound = ref + abs_tolerance + rel_tolerance * abs(ref)
    if update_loss > bound:
        return Verdict(
            False,
            f"validation loss {update_loss:.6g} exceeds {what} beyond the tolerance (bound {bound:.6g})",
            "loss",
        )
    return Verdict(True, f"validation loss {update_loss:.6g} vs {what} (bound {bound:.6g})", "loss")


def check_flagged(is_flagged: bool, strategy: str) -> Verdict:
    """Reject an update a robust strategy flagged as an outlier."""
    if is_flagged:
        return Verdict(False, f"flagged as an outlier by {strategy}", "flagged")
    return Verdict(True, f"not flagged by {strategy}", "flagged")


def check_reexecution(
    update: np.ndarray,
    reexecuted: np.ndarray,
    global_params: np.ndarray,
    rtol: float = 1e-3,
    atol: float = 1e-7,
) -> Verdict:
    """Compare a trainer's update with the client's own re-run of the same unit.

    Accept when ``|update - reexecuted| <= atol + rtol * |reexecuted - global|``; a lazy trainer
    (update = global) or one returning noise is told apart in the reason.
    """
    redo = np.asarray(reexecuted)
    if redo.shape != update.shape or not np.isfinite(redo).all():
        raise ValueError(
            "the re-executed parameters are malformed (wrong shape or not finite); "
            "fix the client's reexecute callable"
        )
    redo_norm = delta_norm(redo, global_params)
    diff = delta_norm(update, redo)
    bound = atol + rtol * redo_norm
    if diff <= bound:
        return Verdict(True, f"matches re-execution (difference {diff:.3g} <= {bound:.3g})",
                       "reexec")
    if delta_norm(update, global_params) <= atol:
        return Verdict(
            False,
            f"returned the global model unchanged while re-execution moved {redo_norm:.6g} "
            "(lazy trainer)",
            "reexec",
        )
    return Verdict(
        False,
        f"differs from re-execution by {diff:.6g} (allowed {bound:.3g}; re-executed delta "
        f"norm {redo_norm:.6g})",
        "reexec",
    )


def select_for_reexecution(
    unit_ids: Sequence[str], fraction: float, secret: bytes, round_index: int
) -> list[str]:
    """Pick ``ceil(fraction * n)`` units to re-execute, deterministically but unpredictably.

    Each unit is ranked by HMAC-SHA256(secret, round, unit id): the client can reproduce (and
    later prove) the choice, while a trainer without the secret cannot tell whether its unit
    will be re-run, and the choice does not depend on the order of ``unit_ids``. Returned in
    the order of ``unit_ids``.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
        raise ValueError("the re-execution secret must be at least 16 random bytes")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ids = [str(u) for u in unit_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("unit ids must be unique")
    count = math.ceil(fraction * len(ids) - 1e-9)
    if count == 0:
        return []

    def rank(uid: str) -> bytes:
        msg = f"fedswarm-reexec/1|{round_index}|{uid}".encode()
        return hmac.new(bytes(secret), msg, hashlib.sha256).digest()

    chosen = set(sorted(ids, key=rank)[:count])
    return [u for u in ids if u in chosen]


def reason_hash(verdict: Verdict) -> bytes:
    """keccak256 of the verdict's reason string (UTF-8): the bytes32 recorded on chain."""
    from eth_utils import keccak  # lazy: eth_utils is a slowish import not needed elsewhere

    return keccak(verdict.reason.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# A whole round


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


@dataclass
class RoundReport:
    """Per-unit verdicts of one round plus what the round's checks measured."""

    units: dict[str, UnitReport]
    median_norm: float | None = None
    global_loss: float | None = None
    reexecuted: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[str]:
        """Ids of the units to pay and aggregate."""
        return [u for u, r in self.units.items() if r.accepted]

    @property
    def rejected(self) -> list[str]:
        """Ids of the units refused."""
        return [u for u, r in self.units.items() if not r.accepted]


def check_round(
    global_params: np.ndarray,
    updates: Mapping[str, np.ndarray],
    *,
    round_index: int,
    secret: bytes,
    config: CheckConfig | None = None,
    evaluate: Evaluate | None = None,
    reexecute: Reexecute | None = None,
    detector: Strategy | None = None,
    num_samples: Mapping[str, int] | None = None,
    flagged: Collection[str] = (),
) -> RoundReport:
    """Check every update of a round and return per-unit verdicts.

    The checks run cheapest first and a unit stops at its first rejection: shape/dtype, finite,
    delta norm vs the median of the units still in, outliers (``flagged`` ids, plus those a
    robust ``detector`` strategy flags among the units still in), validation loss (when
    ``evaluate`` is given) and re-execution of the units :func:`select_for_reexecution` picks
    (when ``reexecute`` is given and ``config.reexec_fraction > 0``).

    Parameters
    ----------
    global_params:
        The parameters the trainers started from (flat float32).
    updates:
        Unit id -> the parameters a trainer returned.
    round_index, secret:
        Seed the re-execution choice (keep ``secret`` private to the client).
    evaluate:
        ``evaluate(params) -> validation loss``; called once for the global model and once per
        unit still accepted.
    reexecute:
        ``reexecute(unit_id) -> params``: the client's own run of that unit.
    detector:
        A stateless robust strategy (median, trimmed_mean, krum, multikrum) used only for its
        outlier flags; its aggregate is discarded.
    num_samples:
        Unit id -> sample count, passed to ``detector`` (default 1 each).
    flagged:
        Unit ids already flagged (e.g. by the strategy that aggregated the round).
    """
    cfg = config or CheckConfig()
    g = np.asarray(global_params)
    if g.ndim != 1 or g.dtype != np.float32:
        raise ValueError(f"global_params must be a flat float32 vector, got {g.dtype} {g.shape}")
    if detector is not None and (detector.stateful or not detector.robust):
        raise ValueError(
            f"strategy {detector.name!r} cannot flag outliers; use median, trimmed_mean, krum "
            "or multikrum as the detector"
        )
    verdicts: dict[str, list[Verdict]] = {str(u): [] for u in updates}
    arrays = {str(u): a for u, a in updates.items()}

    def alive() -> list[str]:
        return [u for u, vs in verdicts.items() if all(v.accepted for v in vs)]

    for uid in alive():
        verdicts[uid].append(check_shape(arrays[uid], g))
    for uid in alive():
        verdicts[uid].append(check_finite(arrays[uid]))

    norms = {uid: delta_norm(arrays[uid], g) for uid in alive()}
    median_norm = float(np.median(list(norms.values()))) if norms else None
    for uid, norm in norms.items():
        assert median_norm is not None
        verdicts[uid].append(check_norm(norm, median_norm, cfg.norm_factor))

    flagged_ids = {str(u) for u in flagged}
    source = "the aggregation strategy"
    candidates = alive()
    if detector is not None:
        source = detector.name
        if len(candidates) >= 2:
            counts = [int((num_samples or {}).get(u, 1)) for u in candidates]
            result = detector.aggregate_result(g, [arrays[u] for u in candidates], counts)
            flagged_ids |= {candidates[i] for i in result.flagged}
    for uid in candidates:
        verdicts[uid].append(check_flagged(uid in flagged_ids, source))

    global_loss: float | None = None
    if evaluate is not None:
        global_loss = float(evaluate(g))
        if not math.isfinite(global_loss):
            raise ValueError(f"the global model's validation loss is {global_loss}; cannot judge")
        losses = {uid: float(evaluate(arrays[uid])) for uid in alive()}
        finite = [v for v in losses.values() if math.isfinite(v)]
        # The lower median: with an even count the better of the two middle updates.
        median = statistics.median_low(finite) if finite else None
        for uid, loss in losses.items():
            verdicts[uid].append(
                check_loss(loss, global_loss, cfg.loss_rel_tolerance, cfg.loss_abs_tolerance, median)
            )

    reexecuted: list[str] = []
    if reexecute is not None and cfg.reexec_fraction > 0:
        # Chosen among all units, not only survivors, so one trainer's failure cannot shift
        # which others are re-run.
        chosen = select_for_reexecution(list(verdicts), cfg.reexec_fraction, secret, round_index)
        still_in = set(alive())
        for uid in chosen:
            if uid not in still_in:
                continue
            redo = reexecute(uid)
            reexecuted.append(uid)
            verdicts[uid].append(
                check_reexecution(arrays[uid], redo, g, cfg.reexec_rtol, cfg.reexec_atol)
            )

    units = {u: UnitReport(u, tuple(vs)) for u, vs in verdicts.items()}
    return RoundReport(
        units=units,
        median_norm=median_norm,
        global_loss=global_loss,
        reexecuted=reexecuted,
        flagged=sorted(u for u in flagged_ids if u in units),
    )
