"""Each attack that beat the median-based checks is caught by the reference-based review, while
the honest updates of the same round are accepted. Real training on breast-cancer and digits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedswarm.learning.reference import UpdateHistory
from fedswarm.learning.review import ReviewReport, UnitInput, review_round
from fedswarm.learning.review_policy import ReexecPolicy, TrainerRecords

from .review_sim import SimJob, fedavg, make_job, other_dropout_masks, ulp_perturbed, unit_seed

pytestmark = pytest.mark.slow  # about 30 s of CPU: real training on two datasets

SECRET = b"attack-test-secret-0123456789abc"
CASES = [("breast_cancer", 31, 1), ("breast_cancer", 32, 4), ("digits", 41, 1), ("digits", 42, 4)]


class Round:
    """A job warmed up by honest rounds, then one round whose units tests tamper with."""

    def __init__(self, name: str, seed: int, warm: int, workdir: Path, trainers: int = 4) -> None:
        self.job: SimJob = make_job(name, workdir, trainers, seed)
        self.seed = seed
        self.history, self.records = UpdateHistory(seed=seed), TrainerRecords()
        self.chunks = list(self.job.chunks)
        g = self.job.global_params
        self.previous: list[UnitInput] = []
        for r in range(warm):
            units = self.honest(g, r)
            rep = self.review(g, units, r)
            assert rep.rejected == [], [rep.units[u].verdict.reason for u in rep.rejected]
            by_id = {u.unit_id: u for u in units}
            g = fedavg(g, [by_id[u].params for u in rep.accepted], [rep.weights[u] for u in rep.accepted])
            self.previous = units
        self.g, self.r = g, warm
        self.warm_history, self.warm_records = self.history.to_dict(), self.records.to_dict()
        self.units = self.honest(g, warm)

    def honest(self, g: np.ndarray, r: int) -> list[UnitInput]:
        job = self.job
        return [UnitInput(unit_id=f"{r}-{i}", trainer=f"t{i}", chunk=c,
                          params=job.train_unit(g, c, unit_seed(self.seed, r, i)),
                          assigned_rows=job.rows(c), epochs=job.epochs,
                          reported_samples=job.rows(c) * job.epochs)
                for i, c in enumerate(self.chunks)]

    def review(self, g: np.ndarray, units: list[UnitInput], r: int,
               policy: ReexecPolicy | None = None, dropout: bool = True) -> ReviewReport:
        def reexecute(uid: str) -> np.ndarray:  # the client's own run of the unit
            i = int(uid.split("-")[1])
            return self.job.train_unit(g, self.chunks[i], unit_seed(self.seed, r, i))

        self.job.clear_cache()
        return review_round(g, units, round_index=r, secret=SECRET, evaluate=self.job.evaluate,
                            reexecute=reexecute, history=self.history, records=self.records,
                            policy=policy, dropout=dropout)

    def run(self, tampered: dict[int, UnitInput], **kw: object) -> ReviewReport:
        """Review the tampered round on fresh copies of the warm history and records."""
        units = [tampered.get(i, u) for i, u in enumerate(self.units)]
        self.history = UpdateHistory.from_dict(self.warm_history)
        self.records = TrainerRecords.from_dict(self.warm_records)
        return self.review(self.g, units, self.r, **kw)  # type: ignore[arg-type]

    def delta(self, i: int) -> np.ndarray:
        return self.units[i].params.astype(np.float64) - self.g


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{s}-warm{w}" for n, s, w in CASES])
def rnd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Round:
    """Warmed up once per case; every test reviews its own tampered copy of the round."""
    name, seed, warm = request.param
    return Round(name, seed, warm, tmp_path_factory.mktemp(name))


def _with(rnd: Round, i: int, params: np.ndarray, **kw: object) -> UnitInput:
    return replace(rnd.units[i], params=np.asarray(params, dtype=np.float32), **kw)


def assert_honest_pass(rep: ReviewReport, bad: set[int], n: int = 4) -> None:
    for i in range(n):
        uid = next(u for u in rep.units if u.endswith(f"-{i}"))
        if i in bad:
            assert uid in rep.rejected, f"attack unit {uid} was accepted"
        else:
            assert uid in rep.accepted, f"honest {uid}: {rep.units[uid].verdict.reason}"


def test_lazy_tiny_noise_fails(rnd: Round) -> None:
    noise = np.random.default_rng(0).standard_normal(rnd.g.size) * 1e-6
    rep = rnd.run({1: _with(rnd, 1, rnd.g + noise)})
    assert_honest_pass(rep, {1})
    assert rep.stats[rnd.units[1].unit_id].norm_ratio < 0.01


def test_two_sybils_cannot_get_the_honest_trainers_rejected(rnd: Round) -> None:
    sybil = rnd.g + np.float32(1e-6)
    rep = rnd.run({1: _with(rnd, 1, sybil), 2: _with(rnd, 2, sybil)})
    assert_honest_pass(rep, {1, 2})


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_copy_of_another_trainers_update_fails_and_the_original_is_paid(rnd: Round, noise: float) -> None:
    d = rnd.delta(0)
    jitter = np.random.default_rng(1).standard_normal(d.size) * noise * np.linalg.norm(d) / np.sqrt(d.size)
    rep = rnd.run({2: _with(rnd, 2, rnd.g + d + jitter)})
    assert_honest_pass(rep, {2})
    assert rep.copies.get(rnd.units[2].unit_id) == rnd.units[0].unit_id or \
        rep.units[rnd.units[2].unit_id].verdict.check == "reexec"


def test_reverse_step_at_one_and_a_half_times_the_norm_fails(rnd: Round) -> None:
    rep = rnd.run({3: _with(rnd, 3, rnd.g - 1.5 * rnd.delta(3))})
    assert_honest_pass(rep, {3})


def test_replay_of_an_earlier_round_fails(rnd: Round) -> None:
    if not rnd.previous:
        pytest.skip("no earlier round")
    rep = rnd.run({1: _with(rnd, 1, rnd.previous[1].params)})
    assert_honest_pass(rep, {1})


@pytest.mark.parametrize("reported", [10**15, 2**64])
def test_inflated_sample_count_does_not_change_the_weight(rnd: Round, reported: int) -> None:
    rep = rnd.run({1: _with(rnd, 1, rnd.units[1].params, reported_samples=reported)})
    uid = rnd.units[1].unit_id
    assert rep.weights[uid] == rnd.units[1].assigned_rows * rnd.units[1].epochs
    assert "the client's figure is used" in rep.weight_flags[uid]
    assert uid in rep.doubtful  # a mismatching trainer is re-executed with priority
    assert_honest_pass(rep, set())
    share = rep.weights[uid] / sum(rep.weights[u] for u in rep.accepted)
    assert share < 0.35
    assert rnd.records.get("t1").weight_mismatches == 1


ALL = ReexecPolicy(base_probability=1.0, new_trainer_probability=1.0, max_per_round=8, max_fraction=1.0)


def test_cuda_trained_unit_passes_cpu_reexecution_within_tolerance(rnd: Round) -> None:
    """A GPU run of the same unit draws other dropout masks (and sums in another order): the
    re-execution check accepts it by relative difference and direction, not bitwise."""
    job, i = rnd.job, 1
    with other_dropout_masks():
        gpu_like = job.train_unit(rnd.g, rnd.chunks[i], unit_seed(rnd.seed, rnd.r, i))
    rep = rnd.run({i: _with(rnd, i, gpu_like, cross_device=True)}, policy=ALL)
    uid = rnd.units[i].unit_id
    assert uid in rep.reexecuted and uid in rep.accepted, rep.units[uid].verdict.reason
    # The same difference from a trainer on the client's own device is not rounding: refused.
    rep = rnd.run({i: _with(rnd, i, gpu_like, cross_device=False)}, policy=ALL)
    assert uid in rep.rejected and rep.units[uid].verdict.check == "reexec"


def test_rounding_differences_pass_the_tight_cross_device_tolerance(rnd: Round) -> None:
    """Without dropout only the summation order differs: one float32 step on every starting
    weight, carried through a whole unit, stays far inside the cross-device tolerance."""
    job, i = rnd.job, 2
    redo_like = job.train_unit(ulp_perturbed(rnd.g, 3), rnd.chunks[i], unit_seed(rnd.seed, rnd.r, i))
    rep = rnd.run({i: _with(rnd, i, redo_like, cross_device=True)}, policy=ALL, dropout=False)
    uid = rnd.units[i].unit_id
    assert uid in rep.accepted, rep.units[uid].verdict.reason
    assert_honest_pass(rep, set())


def _drifted(rnd: Round, i: int, size: float, seed: int = 5) -> np.ndarray:
    """The honest unit plus a random change of ``size`` x its delta's norm (orthogonal-ish)."""
    d = rnd.delta(i)
    noise = np.random.default_rng(seed).normal(size=d.shape)
    noise *= size * np.linalg.norm(d) / np.linalg.norm(noise)
    return (rnd.g + d + noise).astype(np.float32)


def test_long_unit_drift_across_devices_is_judged_on_the_reference(rnd: Round) -> None:
    """Another device's arithmetic drifts further on long units (TF32 proxy: cosine 0.95 after
    3-5 epochs): such a unit is not a match, but no proof of fraud either; it is judged on the
    reference's bounds, so an honest one is paid. The same drift from a trainer on the client's
    own device is refused, and lazy or reversed work is refused whatever the device."""
    i = 3
    uid = rnd.units[i].unit_id
    drifted = _drifted(rnd, i, 0.3)  # relative difference 0.3 (> 0.1), cosine ~0.96
    rep = rnd.run({i: _with(rnd, i, drifted, cross_device=True)}, policy=ALL, dropout=False)
    assert uid in rep.reexecuted and uid in rep.accepted, rep.units[uid].verdict.reason
    assert any("consistent with another device" in v.reason for v in rep.units[uid].verdicts)
    rep = rnd.run({i: _with(rnd, i, drifted, cross_device=False)}, policy=ALL, dropout=False)
    assert uid in rep.rejected and rep.units[uid].verdict.check == "reexec"
    lazy = _drifted(rnd, i, 0.0) - (rnd.delta(i) * 0.999).astype(np.float32)  # ~global, tiny change
    reverse = (rnd.g - rnd.delta(i)).astype(np.float32)
    for bad in (lazy, reverse):
        rep = rnd.run({i: _with(rnd, i, bad, cross_device=True)}, policy=ALL, dropout=False)
        assert uid in rep.rejected and rep.units[uid].verdict.check == "reexec", rep.units[uid].verdict.reason
