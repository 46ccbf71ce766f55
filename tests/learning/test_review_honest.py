"""Honest training runs pass the reference-based review: no false rejection in 200+ units.

Real data (breast-cancer and digits from scikit-learn) split by the client's ingestion, the
example specs, real training and evaluation in-process, FedAvg with the client's weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedswarm.learning.reference import UpdateHistory
from fedswarm.learning.review import VALIDATION, UnitInput, review_round
from fedswarm.learning.review_policy import ReexecPolicy, TrainerRecords

from .review_sim import fedavg, make_job, unit_seed

SECRET = b"honest-run-secret-0123456789abcd"
# (dataset, trainers, ingestion/training seed)
CONFIGS = [("breast_cancer", 3, 11), ("breast_cancer", 4, 12), ("breast_cancer", 5, 13),
           ("breast_cancer", 6, 14), ("digits", 3, 21), ("digits", 4, 22), ("digits", 5, 23),
           ("digits", 6, 24)]
ROUNDS = 8


def run_honest(name: str, trainers: int, seed: int, workdir: Path, rounds: int = ROUNDS):
    """Review ``rounds`` honest rounds; yields each round's report."""
    job = make_job(name, workdir, trainers, seed)
    history, records = UpdateHistory(seed=seed), TrainerRecords()
    g = job.global_params
    chunks = list(job.chunks)
    for r in range(rounds):
        job.clear_cache()
        seeds = {c: unit_seed(seed, r, i) for i, c in enumerate(chunks)}
        units = [UnitInput(unit_id=f"{r}-{i}", trainer=f"t{i}", chunk=c,
                           params=job.train_unit(g, c, seeds[c]), assigned_rows=job.rows(c),
                           epochs=job.epochs, reported_samples=job.rows(c) * job.epochs)
                 for i, c in enumerate(chunks)]
        by_id = {u.unit_id: u for u in units}
        report = review_round(
            g, units, round_index=r, secret=SECRET, evaluate=job.evaluate,
            reexecute=lambda uid, g=g, b=by_id, s=seeds: job.train_unit(g, b[uid].chunk, s[b[uid].chunk]),
            history=history, records=records, policy=ReexecPolicy())
        yield report, units
        acc = report.accepted
        g = fedavg(g, [by_id[u].params for u in acc], [report.weights[u] for u in acc])


@pytest.mark.slow
def test_no_false_rejection_in_honest_runs(tmp_path: Path) -> None:
    total, rejected, reexec, evals, doubtful = 0, [], 0, 0, 0
    for name, trainers, seed in CONFIGS:
        for report, units in run_honest(name, trainers, seed, tmp_path):
            total += len(units)
            rejected += [(name, seed, u, report.units[u].verdict.reason) for u in report.rejected]
            assert report.copies == {} and report.weight_flags == {}
            assert 1 <= len(report.reexecuted) <= report.budget <= 4
            reexec += len(report.reexecuted)
            evals += report.evaluations
            doubtful += len(report.doubtful)
    assert total >= 200
    assert rejected == []
    # Cost stays bounded: about 2 evaluations per unit plus one per chunk, a few re-executions.
    assert evals <= 4 * total
    assert reexec <= 0.6 * total
    assert doubtful <= 0.05 * total


def test_one_honest_round_passes_with_its_evidence(tmp_path: Path) -> None:
    report, units = next(run_honest("breast_cancer", 4, 5, tmp_path, rounds=1))
    assert sorted(report.accepted) == sorted(u.unit_id for u in units)
    assert report.reference in report.reexecuted
    ev = report.evidence(units[0].unit_id)
    assert ev["weight"] == units[0].assigned_rows * units[0].epochs
    assert set(ev["stats"]) >= {"norm_ratio", "cosine", "own_share", "own_gap", "val_excess"}
    assert VALIDATION == "validation"
    assert np.isfinite(list(ev["stats"].values())).all()
