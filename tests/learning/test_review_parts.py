"""Pure parts of the reference-based review: weights, statistics, sketches, history, policy."""

from __future__ import annotations

import numpy as np
import pytest

from fedswarm.learning.chunks import decode_chunk, encode_chunk
from fedswarm.learning.reference import (
    Thresholds,
    UpdateHistory,
    aggregation_weight,
    reexecution_matches,
    sketch,
    unit_stats,
)
from fedswarm.learning.review import UnitInput, review_round, write_sample_chunk
from fedswarm.learning.review_policy import (
    ReexecPolicy,
    TrainerRecords,
    draw,
    pick_reference_unit,
    plan_audits,
    reexec_budget,
)

SECRET = b"parts-secret-0123456789abcdefghi"


def test_weight_comes_from_the_clients_records() -> None:
    w = aggregation_weight(120, 2, 240)
    assert (w.weight, w.consistent) == (240, True)
    w = aggregation_weight(120, 2, 10**15)
    assert (w.weight, w.consistent) == (240, False) and "1.000e+15" in w.reason
    assert aggregation_weight(120, 2, 2**64).weight == 240
    assert aggregation_weight(5, 1).consistent
    for rows, epochs in ((0, 1), (3, 0), (True, 1), (2.5, 1)):
        with pytest.raises(ValueError):
            aggregation_weight(rows, epochs)  # type: ignore[arg-type]


def test_unit_stats_shares_and_direction() -> None:
    ref = np.array([1.0, 0.0, 0.0])
    st = unit_stats(np.array([-1.5, 0.0, 0.0]), ref, global_val=1.0, ref_val=0.8, update_val=1.3,
                    own_global=0.5, own_update=0.6, ref_chunk_global=0.5, ref_chunk_ref=0.25)
    assert st.norm_ratio == pytest.approx(1.5) and st.cosine == pytest.approx(-1.0)
    assert st.val_excess == pytest.approx(0.5)
    assert st.own_drop == pytest.approx(-0.2) and st.own_share == pytest.approx(-0.4)
    assert st.own_gap == pytest.approx(-0.2 - (-0.3))
    with pytest.raises(ValueError, match="did not move"):
        unit_stats(ref, np.zeros(3), global_val=1, ref_val=1, update_val=1, own_global=1, own_update=1,
                   ref_chunk_global=1, ref_chunk_ref=1)


def test_reexecution_tolerance_is_relative_not_bitwise() -> None:
    redo = np.ones(100)
    ok, rel, cos = reexecution_matches(redo * (1 + 5e-4), redo, rtol=1e-3)
    assert ok and rel == pytest.approx(5e-4)
    assert not reexecution_matches(redo * 1.01, redo, rtol=1e-3)[0]
    assert not reexecution_matches(-redo * 0.1, redo, rtol=1.5, min_cosine=0.3)[0]
    assert reexecution_matches(np.zeros(3), np.zeros(3), rtol=0.0)[0]


def test_sketch_is_linear_and_keeps_norms() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(50_000), rng.standard_normal(50_000)
    assert np.allclose(sketch(a, 7) - sketch(b, 7), sketch(a - b, 7))
    assert np.linalg.norm(sketch(a, 7)) / np.linalg.norm(a) == pytest.approx(1.0, abs=0.25)


def test_history_finds_replays_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    old = rng.standard_normal(1000).astype(np.float32)
    hist = UpdateHistory(seed=3, keep_rounds=2)
    hist.add(0, "0-1", "t1", old)
    assert hist.find_replay(1, old, 1.0, 0.05).unit_id == "0-1"  # type: ignore[union-attr]
    near = old + np.float32(1e-4) * rng.standard_normal(1000).astype(np.float32)
    assert hist.find_replay(1, near, 1.0, 0.05) is not None
    assert hist.find_replay(1, old + 1.0, 1.0, 0.05) is None
    assert hist.find_replay(0, old, 1.0, 0.05) is None  # the same round is not a replay
    again = UpdateHistory.from_dict(hist.to_dict())
    assert again.find_replay(1, old, 1.0, 0.05) is not None
    hist.add(2, "2-1", "t1", old + 2.0)
    assert [e.round_index for e in hist.entries] == [2]  # rounds older than keep_rounds dropped


def test_thresholds_validate() -> None:
    Thresholds()
    with pytest.raises(ValueError):
        Thresholds(min_norm_ratio=0.6, doubt_min_norm_ratio=0.5)
    with pytest.raises(ValueError):
        Thresholds(max_val_excess=float("nan"))
    with pytest.raises(ValueError):
        Thresholds(min_own_share=0.3, doubt_min_own_share=0.2)


def test_reference_pick_is_uniform_unpredictable_and_order_free() -> None:
    ids = [f"u{i}" for i in range(5)]
    assert pick_reference_unit(ids, SECRET, 3) == pick_reference_unit(ids[::-1], SECRET, 3)
    picks = [pick_reference_unit(ids, SECRET, r) for r in range(500)]
    counts = [picks.count(u) for u in ids]
    assert min(counts) > 60  # about 100 each
    assert pick_reference_unit(ids, b"another-secret-0123456789abcdef", 3) in ids
    with pytest.raises(ValueError):
        pick_reference_unit([], SECRET, 0)
    with pytest.raises(ValueError):
        draw(b"short", 0, "u", "x")


def test_audit_plan_priorities_and_budget() -> None:
    trainers = {f"u{i}": f"t{i}" for i in range(8)}
    records = TrainerRecords()
    for t in trainers.values():
        records.get(t).reviewed = 10  # nobody is new
    policy = ReexecPolicy(base_probability=0.0, max_per_round=3, max_fraction=0.5)
    assert reexec_budget(8, policy) == 3 and reexec_budget(1, policy) == 1
    plan = plan_audits(trainers, secret=SECRET, round_index=1, records=records, policy=policy,
                       already=["u0"], doubtful={"u3", "u4", "u5"}, copies={"u6"})
    assert plan.budget == 3 and len(plan.audits) == 2
    assert plan.audits[0] == "u6"  # copies first
    assert set(plan.audits[1:]) <= {"u3", "u4", "u5"}
    assert len(plan.skipped) == 2 and plan.reasons["u6"] == "copy"
    # New trainers are wanted with their own probability.
    fresh = plan_audits(trainers, secret=SECRET, round_index=1, records=TrainerRecords(),
                        policy=ReexecPolicy(new_trainer_probability=1.0, max_per_round=8, max_fraction=1.0),
                        already=["u0"])
    assert len(fresh.audits) == 7 and set(fresh.reasons.values()) == {"new trainer"}
    assert TrainerRecords.from_dict(records.to_dict()).get("t1").reviewed == 10


def test_review_round_rejects_malformed_units_without_a_reference_run() -> None:
    g = np.zeros(4, np.float32)
    units = [UnitInput("a", "t", "c0", np.ones(5, np.float32), 10, 1),
             UnitInput("b", "t", "c1", np.array([np.nan, 0, 0, 0], np.float32), 10, 1)]

    def never(*_: object) -> float:
        raise AssertionError("nothing valid to evaluate or re-execute")

    rep = review_round(g, units, round_index=0, secret=SECRET, evaluate=never, reexecute=never,
                       history=UpdateHistory(seed=0), records=TrainerRecords())
    assert rep.rejected == ["a", "b"] and rep.reference is None
    assert [rep.units[u].verdict.check for u in "ab"] == ["shape", "finite"]
    with pytest.raises(ValueError, match="unique"):
        review_round(g, [units[0], units[0]], round_index=0, secret=SECRET, evaluate=never,
                     reexecute=never, history=UpdateHistory(seed=0), records=TrainerRecords())


def test_sample_chunk_is_a_bounded_seeded_subset(tmp_path) -> None:  # noqa: ANN001
    x = np.arange(2000, dtype=np.float32).reshape(1000, 2)
    y = np.arange(1000, dtype=np.int64)
    (tmp_path / "c.safetensors").write_bytes(encode_chunk(x, y))
    assert write_sample_chunk(tmp_path / "c.safetensors", tmp_path / "s.safetensors", seed=4, rows=100) == 100
    sx, sy = decode_chunk((tmp_path / "s.safetensors").read_bytes())
    assert sx.shape == (100, 2) and len(set(sy.tolist())) == 100
    assert np.array_equal(sx[:, 0], sy * 2.0)  # rows stay whole
    write_sample_chunk(tmp_path / "c.safetensors", tmp_path / "t.safetensors", seed=4, rows=100)
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "t.safetensors").read_bytes()
    assert write_sample_chunk(tmp_path / "c.safetensors", tmp_path / "u.safetensors", seed=1, rows=5000) == 1000
