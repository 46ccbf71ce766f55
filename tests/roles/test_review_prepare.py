"""The client re-executes the round's likely reference while the trainers work: the same unit the
review will pick when every assigned unit is delivered (HMAC over the unit ids, the minimum
draw), used once by the review instead of training it again after delivery; nothing in noop
mode, failed assignments are not candidates, and a failed early run leaves the review to do it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import fedswarm.roles.client.review as review_mod
from fedswarm.learning.review_policy import pick_reference_unit
from fedswarm.roles.client import JobRecord, JobTerms, UnitRecord
from fedswarm.roles.client.review import Review

SECRET = os.urandom(32)


class FakeServices:
    def __init__(self, tmp: Path, units: list[UnitRecord]) -> None:
        self.tmp, self._units = tmp, units
        self.db = SimpleNamespace(units=lambda job_id, r: [u for u in self._units if u.round == r],
                                  get_secret=lambda job_id: SECRET)

    def job_dir(self, job_id: str) -> Path:
        return self.tmp

    async def worker(self) -> Any:
        return "worker"

    async def locked(self, fn: Any) -> Any:
        return fn()


def unit(n: int, state: str = "accepted", r: int = 2) -> UnitRecord:
    return UnitRecord(job_id="job-1", round=r, unit=n, slot=n, trainer_peer=f"peer{n}", trainer_address="0x" + "11" * 20,
                      price_wei=1, state=state, update_key="00" * 32)


def job(mode: str = "train") -> JobRecord:
    return JobRecord(job_id="job-1", dataset_path="/nonexistent.csv", model={"format": "fedswarm-seq/1"},
                     terms=JobTerms(mode=mode), preprocessing={}, chunks=[])


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each re-execution the client runs (by unit), returning a vector fixed by the unit."""
    runs: list[str] = []
    monkeypatch.setattr(review_mod, "reexec_task", lambda job, strategy, gpath, u: str(u.unit))

    def reexecute(worker: Any, task: str) -> np.ndarray:
        runs.append(task)
        return np.full(3, float(task), dtype=np.float32)

    monkeypatch.setattr(review_mod, "reexecute_unit", reexecute)
    return runs


async def test_the_likely_reference_is_reexecuted_before_delivery(tmp_path: Path, trained: list[str]) -> None:
    units = [unit(n) for n in range(6)] + [unit(6, state="failed"), unit(7, r=1)]
    rev = Review(FakeServices(tmp_path, units), SimpleNamespace(get=lambda job: None))  # type: ignore[arg-type]
    uid = await rev.prepare_reference(job(), 2)
    # The review's own pick over the delivered units, when all six arrive.
    assert uid == pick_reference_unit([str(n) for n in range(6)], SECRET, 2)
    assert trained == [uid] and float(rev._redone[("job-1", 2, uid)][0]) == float(uid)


async def test_nothing_early_in_noop_mode_or_without_units(tmp_path: Path, trained: list[str]) -> None:
    rev = Review(FakeServices(tmp_path, [unit(0)]), SimpleNamespace(get=lambda job: None))  # type: ignore[arg-type]
    assert await rev.prepare_reference(job("noop"), 2) is None
    assert await rev.prepare_reference(job(), 5) is None
    assert trained == [] and rev._redone == {}


async def test_a_failed_early_run_is_left_to_the_review(tmp_path: Path, trained: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(worker: Any, task: str) -> np.ndarray:
        raise RuntimeError("worker died")

    monkeypatch.setattr(review_mod, "reexecute_unit", broken)
    rev = Review(FakeServices(tmp_path, [unit(0), unit(1)]), SimpleNamespace(get=lambda job: None))  # type: ignore[arg-type]
    assert await rev.prepare_reference(job(), 2) is None and rev._redone == {}
