"""One round's review against the client's own reference (docs/ARCHITECTURE.md §5).

:func:`review_round` judges a round against the client's own reference: shape and
finiteness, aggregation weights from the client's records, one unit re-executed as the trusted
reference (picked after every delivery is in), every update measured against it (norm ratio,
direction, validation-loss effect, own-chunk share and gap), replays of earlier rounds, copies
between trainers, and further re-executions for doubtful, copied and new trainers' units within
a bounded budget. A unit whose update matches the client's re-execution is accepted: that is
the strongest evidence there is. Model code is injected (``evaluate``, ``reexecute``), so this
module stays free of torch and I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedswarm.learning.checks import UnitReport, Verdict, check_finite, check_shape
from fedswarm.learning.chunks import decode_chunk, encode_chunk
from fedswarm.learning.reference import (
    Thresholds,
    UnitStats,
    UpdateHistory,
    aggregation_weight,
    cosine,
    delta,
    params_hash,
    reexecution_matches,
    relative_drop,
    sketch,
    unit_stats,
)
from fedswarm.learning.review_policy import (
    ReexecPolicy,
    TrainerRecords,
    pick_reference_unit,
    plan_audits,
)

__all__ = ["SAMPLE_ROWS", "VALIDATION", "ReviewReport", "UnitInput", "review_round", "write_sample_chunk"]

VALIDATION = "validation"
SAMPLE_ROWS = 256  # rows per evaluation sample: the review's cost per update is two such passes
Evaluate = Callable[[np.ndarray, str], float]
Reexecute = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class UnitInput:
    """One delivered unit as the client knows it.

    ``chunk``: the sample key of the chunk the client assigned (``evaluate(params, chunk)`` gives
    the loss on a bounded sample of it); ``assigned_rows`` and ``epochs`` come from the client's
    records, ``reported_samples`` from the trainer (only compared). ``cross_device``: the trainer
    trains on another device than the client re-executes on (e.g. CUDA vs CPU).
    """

    unit_id: str
    trainer: str
    chunk: str
    params: np.ndarray
    assigned_rows: int
    epochs: int
    reported_samples: int | None = None
    cross_device: bool = False


@dataclass
class ReviewReport:
    """Verdicts, weights and the evidence of one round."""

    units: dict[str, UnitReport]
    weights: dict[str, int]
    stats: dict[str, UnitStats] = field(default_factory=dict)
    reference: str | None = None
    reexecuted: list[str] = field(default_factory=list)
    reexec_reasons: dict[str, str] = field(default_factory=dict)
    reexec_skipped: list[str] = field(default_factory=list)
    budget: int = 0
    doubtful: list[str] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)
    weight_flags: dict[str, str] = field(default_factory=dict)
    evaluations: int = 0
    # The share of its own chunk's loss the reference removed; below
    # ``Thresholds.min_reference_own_drop`` the own-chunk statistics are not judged this round.
    reference_own_drop: float | None = None

    @property
    def accepted(self) -> list[str]:
        """Units to pay and aggregate (with :attr:`weights`)."""
        return [u for u, r in self.units.items() if r.accepted]

    @property
    def rejected(self) -> list[str]:
        """Units refused."""
        return [u for u, r in self.units.items() if not r.accepted]

    def evidence(self, unit_id: str) -> dict[str, object]:
        """The numbers behind a unit's verdict, for the audit topic."""
        out: dict[str, object] = {"reference": self.reference, "weight": self.weights.get(unit_id),
                                  "reference_own_drop": self.reference_own_drop}
        if unit_id in self.stats:
            out["stats"] = self.stats[unit_id].as_dict()
        if unit_id in self.copies:
            out["copy_of"] = self.copies[unit_id]
        if unit_id in self.weight_flags:
            out["weight_flag"] = self.weight_flags[unit_id]
        return out


def _bounds(st: UnitStats, t: Thresholds, own_void: bool = False) -> tuple[list[str], bool]:
    """Failures (reasons) and whether any statistic lies in a doubt band (either side).

    ``own_void``: the reference itself did not lower its own chunk's loss this round, or it
    raised the held-out loss by more than ``max_reference_val_rise`` (a high learning rate
    overshooting, say), so "a fair share of what the reference achieves" means
    nothing: the own-chunk statistics are not judged, and the unit counts as doubtful (it is
    re-executed within the budget); norm, direction and validation loss still are."""
    # (name, value, reject bound, doubt bound, lower bound?)
    rows = [
        ("delta norm ratio to the reference", st.norm_ratio, t.min_norm_ratio, t.doubt_min_norm_ratio, True),
        ("delta norm ratio to the reference", st.norm_ratio, t.max_norm_ratio, t.doubt_max_norm_ratio, False),
        ("cosine to the reference delta", st.cosine, t.min_cosine, t.doubt_min_cosine, True),
        ("validation loss excess over the reference", st.val_excess, t.max_val_excess, t.doubt_max_val_excess, False),
        ("own-chunk loss share removed vs the reference", st.own_share, t.min_own_share, t.doubt_min_own_share, True),
        ("own-chunk minus validation share removed", st.own_gap, t.min_own_gap, t.doubt_min_own_gap, True),
    ]
    if own_void:
        rows = rows[:4]
    # Specific to its own rows and as good as the reference on held-out data: a low own share
    # then says the round is noisy (an overshooting rate), not that the work was skipped.
    share_excused = st.own_gap >= t.own_gap_excuses_share and st.val_excess <= t.max_val_excess_excusing_share
    fails, doubt = [], own_void
    for name, value, bound, doubt_bound, lower in rows:
        width = abs(doubt_bound - bound)
        bad = value < bound if lower else value > bound
        if bad and share_excused and name.startswith("own-chunk loss share"):
            doubt = True  # re-executed within the budget; judged on the rest otherwise
            continue
        if bad:
            fails.append(f"{name} {value:.4g} {'below' if lower else 'above'} {bound:g}")
        if abs(value - bound) <= width or (not bad and (value < doubt_bound if lower else value > doubt_bound)):
            doubt = True
    return fails, doubt


def review_round(
    global_params: np.ndarray,
    units: Sequence[UnitInput],
    *,
    round_index: int,
    secret: bytes,
    evaluate: Evaluate,
    reexecute: Reexecute,
    history: UpdateHistory,
    records: TrainerRecords,
    thresholds: Thresholds | None = None,
    policy: ReexecPolicy | None = None,
    dropout: bool = True,
    reject_misreported: bool = False,
) -> ReviewReport:
    """Review every delivered unit of a round; call it once all deliveries are in.

    ``evaluate(params, key)`` returns the loss of ``params`` on a bounded sample (at most a few
    hundred rows) of chunk ``key`` or of the held-out validation split (``key == VALIDATION``);
    it is called for the global model once per key, for each update on its own chunk and the
    validation sample, and for nearly-equal pairs on each other's chunks. ``reexecute(unit_id)``
    is the client's own training of that unit (the trainer's exact inputs and seed) and returns
    the flat parameters. ``history`` and ``records`` carry over between rounds and are updated
    here. ``dropout``: the model has dropout (re-executing a CUDA unit on CPU then draws other
    masks, and the comparison can only be statistical). ``reject_misreported``: a unit whose
    reported sample count differs from the client's figure is rejected outright (an honest
    trainer reports exactly rows x epochs); otherwise it is only flagged and re-executed with
    priority, its weight the client's. Raises ``ValueError`` for the client's
    own bad inputs (non-positive rows or epochs, a malformed re-execution).
    """
    t = thresholds or Thresholds()
    pol = policy or ReexecPolicy()
    g = np.asarray(global_params)
    if g.ndim != 1 or g.dtype != np.float32:
        raise ValueError(f"global_params must be a flat float32 vector, got {g.dtype} {g.shape}")
    by_id = {u.unit_id: u for u in units}
    if len(by_id) != len(units):
        raise ValueError("unit ids must be unique")
    verdicts: dict[str, list[Verdict]] = {uid: [] for uid in by_id}
    report = ReviewReport(units={}, weights={})
    cache: dict[tuple[int, str], float] = {}

    def ev(params: np.ndarray, key: str) -> float:
        k = (id(params), key)
        if k not in cache:
            cache[k] = float(evaluate(params, key))
            report.evaluations += 1
        return cache[k]

    for u in units:
        w = aggregation_weight(u.assigned_rows, u.epochs, u.reported_samples)
        report.weights[u.unit_id] = w.weight
        if not w.consistent:
            report.weight_flags[u.unit_id] = w.reason
            if reject_misreported:
                verdicts[u.unit_id].append(Verdict(False, f"misreported sample count: {w.reason}", "samples"))
        shape = check_shape(u.params, g)
        verdicts[u.unit_id].append(shape)
        if shape.accepted:
            verdicts[u.unit_id].append(check_finite(u.params))
    valid = [uid for uid, vs in verdicts.items() if all(v.accepted for v in vs)]
    if not valid:
        return _finish(report, verdicts, by_id, history, records, round_index, g)

    ref_id = pick_reference_unit(valid, secret, round_index)
    report.reference = ref_id
    redo: dict[str, np.ndarray] = {ref_id: _redo(reexecute, ref_id, g)}
    ref_params = redo[ref_id]
    d_ref = delta(ref_params, g)
    ref_chunk = by_id[ref_id].chunk
    base = {"global_val": ev(g, VALIDATION), "ref_val": ev(ref_params, VALIDATION),
            "ref_chunk_global": ev(g, ref_chunk), "ref_chunk_ref": ev(ref_params, ref_chunk)}
    ref_scale = float(np.linalg.norm(sketch(d_ref, history.seed)))
    report.reference_own_drop = relative_drop(base["ref_chunk_global"], base["ref_chunk_ref"])
    # The reference is a yardstick for "a fair share" only in a round where it learned: it
    # lowered its own chunk's loss, and did not blow up the held-out loss (overshooting).
    ref_val_drop = relative_drop(base["global_val"], base["ref_val"])
    own_void = (report.reference_own_drop < t.min_reference_own_drop
                or ref_val_drop < -t.max_reference_val_rise)

    deltas = {uid: delta(by_id[uid].params, g) for uid in valid}
    # Each update's hash and sketch once: replays, copies and the history all use them.
    digests = {uid: params_hash(by_id[uid].params) for uid in valid}
    sketches = {uid: sketch(by_id[uid].params, history.seed) for uid in valid}
    stat_fails: dict[str, list[str]] = {}
    doubtful: set[str] = set(uid for uid in valid if uid in report.weight_flags)
    replays: dict[str, str] = {}
    for uid in valid:
        u = by_id[uid]
        st = unit_stats(deltas[uid], d_ref, update_val=ev(u.params, VALIDATION),
                        own_global=ev(g, u.chunk), own_update=ev(u.params, u.chunk), **base)
        report.stats[uid] = st
        stat_fails[uid], doubt = _bounds(st, t, own_void)
        if doubt:
            doubtful.add(uid)
        old = history.find_replay(round_index, u.params, ref_scale, t.replay_distance,
                                  params_sketch=sketches[uid], digest=digests[uid])
        if old is not None:
            replays[uid] = f"repeats unit {old.unit_id} of round {old.round_index}"

    copy_of, ambiguous = _copies(valid, by_id, deltas, digests, g, ev, t)
    report.copies = dict(copy_of)
    plan = plan_audits({uid: by_id[uid].trainer for uid in valid}, secret=secret, round_index=round_index,
                       records=records, policy=pol, already=[ref_id],
                       doubtful={uid for uid in doubtful if uid not in replays}, copies=ambiguous)
    report.budget, report.reexec_reasons, report.reexec_skipped = plan.budget, plan.reasons, plan.skipped
    report.reexec_reasons[ref_id] = "reference"
    for uid in plan.audits:
        redo[uid] = _redo(reexecute, uid, g)
    report.reexecuted = [ref_id, *plan.audits]
    report.doubtful = sorted(doubtful)

    matched: set[str] = set()
    for uid, params in redo.items():
        u = by_id[uid]
        if u.cross_device:
            rtol = t.reexec_rtol_cross_device_dropout if dropout else t.reexec_rtol_cross_device
            mcos = t.reexec_min_cosine_cross_device_dropout if dropout else t.reexec_min_cosine_cross_device
        else:
            rtol, mcos = t.reexec_rtol_same_device, None
        d_redo = delta(params, g)
        ok, rel, cos = reexecution_matches(deltas[uid], d_redo, rtol=rtol, min_cosine=mcos)
        what = f"relative difference {rel:.3g} (allowed {rtol:g}), cosine {cos:.4f}"
        if not ok and u.cross_device and _consistent(deltas[uid], d_redo, cos, t):
            # Another device's arithmetic drifts further on long units: no proof of fraud, and
            # no match either; the unit is judged on the reference's bounds below.
            verdicts[uid].append(Verdict(True, f"not equal to the client's re-execution ({what}) but consistent "
                                               "with another device's arithmetic; judged on the reference's bounds",
                                         "reexec"))
            continue
        verdicts[uid].append(Verdict(ok, f"{'matches' if ok else 'differs from'} the client's re-execution: {what}", "reexec"))
        if ok:
            matched.add(uid)
    # A unit matching its re-execution is the original of any nearly-equal group.
    for uid in list(copy_of):
        if uid in matched:
            del copy_of[uid]
    for uid in ambiguous:
        partners = [p for p in ambiguous if p != uid and _near(deltas, digests, by_id[uid], by_id[p], t)]
        if uid in redo:
            continue  # its own re-execution decided
        unresolved = [p for p in partners if p not in redo]
        if any(p in matched for p in partners):
            copy_of[uid] = next(p for p in partners if p in matched)
        elif unresolved:
            # Over budget: neither side could be re-executed, so neither is paid.
            copy_of[uid] = unresolved[0]
        # else every partner failed its re-execution: this unit is judged on its statistics
    report.copies = dict(copy_of)

    for uid in valid:
        if uid in matched:
            continue
        if uid in replays:
            verdicts[uid].append(Verdict(False, f"replayed update: {replays[uid]}", "replay"))
            continue
        if uid in copy_of:
            verdicts[uid].append(Verdict(False, f"nearly equal to unit {copy_of[uid]}'s update, which helps "
                                                 "that unit's chunk more than this unit's own chunk", "copy"))
            continue
        fails = stat_fails[uid]
        verdicts[uid].append(Verdict(not fails, "; ".join(fails) if fails else "within the reference's bounds",
                                     "reference"))
    return _finish(report, verdicts, by_id, history, records, round_index, g, digests, sketches)


def _consistent(update_delta: np.ndarray, redo_delta: np.ndarray, cos: float, t: Thresholds) -> bool:
    """A cross-device update that points the way the client's re-execution does, with a norm of
    the same order: what another device's arithmetic gives on a long unit."""
    redo_norm = float(np.linalg.norm(redo_delta))
    if redo_norm == 0.0:
        return False
    ratio = float(np.linalg.norm(update_delta)) / redo_norm
    bound = t.reexec_max_norm_ratio_cross_device_consistent
    return cos >= t.reexec_min_cosine_cross_device_consistent and 1.0 / bound <= ratio <= bound


def _redo(reexecute: Reexecute, uid: str, g: np.ndarray) -> np.ndarray:
    out = np.asarray(reexecute(uid))
    if out.shape != g.shape or not np.isfinite(out).all():
        raise ValueError(f"the re-execution of unit {uid} is malformed; fix the client's reexecute callable")
    return out


def _near(deltas: dict[str, np.ndarray], digests: dict[str, str], ua: UnitInput, ub: UnitInput,
          t: Thresholds) -> bool:
    if ua.chunk == ub.chunk:  # the same data (a reassigned slot): equal updates are expected
        return False
    a, b = ua.unit_id, ub.unit_id
    return digests[a] == digests[b] or cosine(deltas[a], deltas[b]) >= t.copy_cosine


def _copies(
    valid: list[str], by_id: dict[str, UnitInput], deltas: dict[str, np.ndarray], digests: dict[str, str],
    g: np.ndarray, ev: Evaluate, t: Thresholds,
) -> tuple[dict[str, str], set[str]]:
    """Nearly-equal updates on different chunks: ``(copy -> original, undecided units)``.

    For a pair (i, j) the update of i should remove a larger share of i's chunk loss than of j's
    (training helps the rows it saw most). The unit whose update favours the other's chunk by more
    than ``copy_margin`` is the copy; a smaller difference is left to re-execution."""
    copy_of: dict[str, str] = {}
    ambiguous: set[str] = set()
    for a_i, i in enumerate(valid):
        for j in valid[a_i + 1:]:
            ui, uj = by_id[i], by_id[j]
            if not _near(deltas, digests, ui, uj, t):
                continue
            adv_i = relative_drop(ev(g, ui.chunk), ev(ui.params, ui.chunk)) - \
                relative_drop(ev(g, uj.chunk), ev(ui.params, uj.chunk))
            adv_j = relative_drop(ev(g, uj.chunk), ev(uj.params, uj.chunk)) - \
                relative_drop(ev(g, ui.chunk), ev(uj.params, ui.chunk))
            if adv_i - adv_j > 2 * t.copy_margin:
                copy_of.setdefault(j, i)
            elif adv_j - adv_i > 2 * t.copy_margin:
                copy_of.setdefault(i, j)
            else:
                ambiguous |= {i, j}
    return copy_of, ambiguous - set(copy_of)


def _finish(report: ReviewReport, verdicts: dict[str, list[Verdict]], by_id: dict[str, UnitInput],
            history: UpdateHistory, records: TrainerRecords, round_index: int, g: np.ndarray,
            digests: dict[str, str] | None = None, sketches: dict[str, np.ndarray] | None = None) -> ReviewReport:
    report.units = {uid: UnitReport(uid, tuple(vs)) for uid, vs in verdicts.items()}
    for uid, unit_report in report.units.items():
        u = by_id[uid]
        rec = records.get(u.trainer)
        rec.reviewed += 1
        rec.accepted += unit_report.accepted
        rec.rejected += not unit_report.accepted
        rec.doubtful += uid in report.doubtful
        rec.reexecuted += uid in report.reexecuted
        rec.weight_mismatches += uid in report.weight_flags
        arr = u.params
        if isinstance(arr, np.ndarray) and arr.shape == g.shape and np.isfinite(arr).all():
            history.add(round_index, uid, u.trainer, arr, digest=(digests or {}).get(uid),
                        params_sketch=(sketches or {}).get(uid))
    return report


def write_sample_chunk(source: str | Path, dest: str | Path, seed: int, rows: int = SAMPLE_ROWS) -> int:
    """Write a seeded sample of at most ``rows`` rows of the plaintext chunk ``source`` to
    ``dest`` (same chunk format, so the worker's evaluation reads it); returns the row count.

    The client writes one per chunk (and one of the validation split) once per job, with a seed
    drawn from its secret, so trainers cannot know which of their rows are scored."""
    x, y = decode_chunk(Path(source).read_bytes())
    idx = np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:rows])
    tmp = Path(dest).with_name(f".{Path(dest).name}.tmp")
    tmp.write_bytes(encode_chunk(x[idx], y[idx]))
    tmp.replace(dest)
    return int(idx.size)
