"""Update checks: each accepts an honest update and rejects its bad case with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedswarm.learning.checks import (
    CheckConfig,
    Verdict,
    check_finite,
    check_loss,
    check_norm,
    check_reexecution,
    check_round,
    check_shape,
    reason_hash,
    select_for_reexecution,
)
from fedswarm.learning.strategies import make_strategy

SECRET = b"client-secret-0123456789abcdef!!"
D = 200


@pytest.fixture
def round_setup() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A global model, the optimum a validation loss measures against, and honest updates
    that each move part of the way towards it (as a trainer would)."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(D).astype(np.float32)
    target = (g + rng.standard_normal(D)).astype(np.float32)
    honest = {
        f"u{i}": (g + 0.3 * (target - g) + 0.02 * rng.standard_normal(D)).astype(np.float32)
        for i in range(6)
    }
    return g, target, honest


def quadratic_loss(target: np.ndarray):
    def evaluate(params: np.ndarray) -> float:
        return float(np.mean((params.astype(np.float64) - target) ** 2))

    return evaluate


# ------------------------------------------------------------------ single checks


def test_shape_check() -> None:
    g = np.zeros(4, np.float32)
    assert check_shape(np.ones(4, np.float32), g).accepted
    v = check_shape(np.ones(5, np.float32), g)
    assert (v.accepted, v.check) == (False, "shape") and "(5,)" in v.reason
    v = check_shape(np.ones((2, 2), np.float32), g)
    assert not v.accepted and "shape" in v.reason
    v = check_shape(np.ones(4, np.float64), g)
    assert not v.accepted and "dtype float64" in v.reason
    assert not check_shape([0.0] * 4, g).accepted  # type: ignore[arg-type]


def test_finite_check() -> None:
    assert check_finite(np.ones(4, np.float32)).accepted
    v = check_finite(np.array([1, np.nan, np.inf, 2], np.float32))
    assert (v.accepted, v.check) == (False, "finite")
    assert v.reason == "2 of 4 values are NaN or infinite"


def test_norm_check() -> None:
    assert check_norm(1.2, 1.0, 3.0).accepted
    v = check_norm(30.0, 1.0, 3.0)
    assert not v.accepted and "exceeds 3 x the round median" in v.reason
    v = check_norm(0.0, 1.0, 3.0)
    assert not v.accepted and "equals the global model" in v.reason
    assert check_norm(0.0, 0.0, 3.0).accepted  # nobody moved: nothing to compare against


def test_loss_check() -> None:
    assert check_loss(0.9, 1.0).accepted
    assert check_loss(1.05, 1.0, rel_tolerance=0.1).accepted
    v = check_loss(1.5, 1.0, rel_tolerance=0.1)
    assert not v.accepted and v.check == "loss" and "exceeds" in v.reason
    assert not check_loss(float("nan"), 1.0).accepted


def test_reexecution_check_tells_lazy_and_noise_apart(round_setup) -> None:
    g, _, honest = round_setup
    u = honest["u0"]
    assert check_reexecution(u.copy(), u, g).accepted
    lazy = check_reexecution(g.copy(), u, g)
    assert not lazy.accepted and "lazy trainer" in lazy.reason
    rng = np.random.default_rng(5)
    noise = (g + rng.standard_normal(D) * np.std(u - g)).astype(np.float32)
    v = check_reexecution(noise, u, g)
    assert not v.accepted and "differs from re-execution" in v.reason
    # A GPU-sized discrepancy passes with a looser tolerance but not the CPU default.
    close = (u + 1e-3 * (u - g)).astype(np.float32)
    assert not check_reexecution(close, u, g, rtol=1e-4).accepted
    assert check_reexecution(close, u, g, rtol=1e-2).accepted
    with pytest.raises(ValueError, match="re-executed parameters are malformed"):
        check_reexecution(u, np.full(D, np.nan, np.float32), g)


# ------------------------------------------------------------------ re-execution choice


def test_selection_is_deterministic_order_free_and_respects_the_fraction() -> None:
    ids = [f"unit-{i}" for i in range(40)]
    chosen = select_for_reexecution(ids, 0.25, SECRET, round_index=3)
    assert len(chosen) == 10
    assert chosen == select_for_reexecution(ids, 0.25, SECRET, round_index=3)
    assert set(chosen) == set(select_for_reexecution(ids[::-1], 0.25, SECRET, round_index=3))
    # Rounding up: any positive fraction re-executes at least one unit.
    assert len(select_for_reexecution(ids, 0.01, SECRET, 3)) == 1
    assert len(select_for_reexecution(ids, 0.1, SECRET, 3)) == 4
    assert select_for_reexecution(ids, 0.0, SECRET, 3) == []
    assert select_for_reexecution(ids, 1.0, SECRET, 3) == ids
    # Another round or another client's secret gives another (unpredictable) choice.
    assert set(chosen) != set(select_for_reexecution(ids, 0.25, SECRET, round_index=4))
    assert set(chosen) != set(select_for_reexecution(ids, 0.25, b"x" * 32, round_index=3))


def test_selection_spreads_over_units() -> None:
    ids = [f"u{i}" for i in range(10)]
    hits = {u: 0 for u in ids}
    for r in range(300):
        for u in select_for_reexecution(ids, 0.2, SECRET, r):
            hits[u] += 1
    # Each unit expects 60 selections; a fixed pattern would give 0 or 300.
    assert all(30 < h < 90 for h in hits.values()), hits


def test_selection_bad_input() -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        select_for_reexecution(["a"], 0.5, b"short", 1)
    with pytest.raises(ValueError, match="fraction"):
        select_for_reexecution(["a"], 1.5, SECRET, 1)
    with pytest.raises(ValueError, match="unique"):
        select_for_reexecution(["a", "a"], 0.5, SECRET, 1)


# ------------------------------------------------------------------ whole rounds


def test_honest_round_is_accepted(round_setup) -> None:
    g, target, honest = round_setup
    report = check_round(
        g, honest, round_index=1, secret=SECRET,
        config=CheckConfig(reexec_fraction=0.5),
        evaluate=quadratic_loss(target), reexecute=lambda uid: honest[uid].copy(),
        detector=make_strategy("krum", f=1),
    )
    assert report.accepted == list(honest) and report.rejected == []
    assert len(report.reexecuted) == 3
    unit = report.units[report.reexecuted[0]]
    assert [v.check for v in unit.verdicts] == ["shape", "finite", "norm", "flagged", "loss",
                                                "reexec"]
    assert unit.verdict.accepted and unit.verdict.reason.startswith("passed: shape, finite")
    assert report.global_loss is not None and report.median_norm is not None


def test_round_rejects_each_bad_case_with_its_reason(round_setup) -> None:
    # Prepare: honest units plus one of every kind of bad update.
    g, target, honest = round_setup
    rng = np.random.default_rng(9)
    delta = honest["u0"] - g
    updates = dict(honest)
    updates["nan"] = honest["u0"].copy()
    updates["nan"][3] = np.nan
    updates["reshaped"] = honest["u0"][:-1].copy()
    updates["float64"] = honest["u0"].astype(np.float64)
    updates["scaled"] = (g + 20.0 * delta).astype(np.float32)
    updates["lazy"] = g.copy()
    updates["regress"] = (g - 1.0 * delta).astype(np.float32)  # moves away from the optimum
    updates["noise"] = (g + rng.standard_normal(D) * np.std(delta)).astype(np.float32)
    reference = {**honest, "noise": honest["u1"], "regress": honest["u2"]}
    # Execute
    report = check_round(
        g, updates, round_index=7, secret=SECRET,
        config=CheckConfig(reexec_fraction=1.0, loss_rel_tolerance=0.2),
        evaluate=quadratic_loss(target),
        # Only noise survives to re-execution, so this is the client redoing its unit.
        reexecute=lambda uid: reference[uid].copy(),
    )
    # Assert
    expected = {
        "nan": ("finite", "NaN"),
        "reshaped": ("shape", "differs from the model's"),
        "float64": ("shape", "dtype float64"),
        "scaled": ("norm", "exceeds 3 x the round median"),
        "lazy": ("norm", "equals the global model"),
        "regress": ("loss", "validation loss"),
        "noise": ("reexec", "differs from re-execution"),
    }
    assert set(report.rejected) == set(expected)
    assert report.accepted == list(honest)
    for uid, (check, text) in expected.items():
        verdict = report.units[uid].verdict
        assert verdict.check == check and text in verdict.reason, (uid, verdict)
        # A unit stops at its first rejection: no later checks ran.
        assert report.units[uid].verdicts[-1] == verdict
    assert "noise" in report.reexecuted


def test_round_lazy_trainer_caught_by_reexecution_when_all_are_lazy(round_setup) -> None:
    # Every trainer returns the global model: the norm check has no honest median to compare
    # against, so only re-execution catches them.
    g, _, honest = round_setup
    updates = {uid: g.copy() for uid in honest}
    report = check_round(g, updates, round_index=2, secret=SECRET,
                         config=CheckConfig(reexec_fraction=1.0),
                         reexecute=lambda uid: honest[uid].copy())
    assert report.accepted == []
    assert all("lazy trainer" in r.verdict.reason for r in report.units.values())


def test_round_flags_outliers_from_a_detector_or_given_ids(round_setup) -> None:
    g, _, honest = round_setup
    updates = dict(honest)
    updates["far"] = (g + 5.0 * (honest["u0"] - g)).astype(np.float32)
    lenient = CheckConfig(norm_factor=100.0, reexec_fraction=0.0)
    report = check_round(g, updates, round_index=1, secret=SECRET, config=lenient,
                         detector=make_strategy("multikrum", f=1))
    assert report.rejected == ["far"] and report.flagged == ["far"]
    verdict = report.units["far"].verdict
    assert verdict == Verdict(False, "flagged as an outlier by multikrum", "flagged")
    report = check_round(g, honest, round_index=1, secret=SECRET, config=lenient,
                         flagged=["u2"])
    assert report.rejected == ["u2"]
    with pytest.raises(ValueError, match="cannot flag outliers"):
        check_round(g, honest, round_index=1, secret=SECRET, detector=make_strategy("fedavg"))


def test_config_and_input_errors(round_setup) -> None:
    g, _, honest = round_setup
    with pytest.raises(ValueError, match="norm_factor"):
        CheckConfig(norm_factor=0.5)
    with pytest.raises(ValueError, match="reexec_fraction"):
        CheckConfig(reexec_fraction=2.0)
    with pytest.raises(ValueError, match="loss_rel_tolerance"):
        CheckConfig(loss_rel_tolerance=-1.0)
    with pytest.raises(ValueError, match="flat float32"):
        check_round(g.astype(np.float64), honest, round_index=1, secret=SECRET)


def test_reason_hash_is_keccak_of_the_reason() -> None:
    v = Verdict(False, "2 of 4 values are NaN or infinite", "finite")
    h = reason_hash(v)
    assert isinstance(h, bytes) and len(h) == 32
    assert h != reason_hash(Verdict(False, "other reason", "finite"))
    # keccak256("") — the Ethereum constant, so the chain and we agree on the hash function.
    assert reason_hash(Verdict(True, "", "x")).hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
