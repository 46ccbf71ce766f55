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
        return SimpleNamespace(pid=None)

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


# -- the job's terms reach the review ----------------------------------------------------------


def test_reexec_fraction_is_the_policys_base_rate() -> None:
    """``reexec_fraction`` sets how often a seasoned trainer's unit is re-executed: 0 re-executes
    none beyond the reference, 1 every one the budget allows (raised to the whole round)."""
    from fedswarm.learning.review_policy import TrainerRecord, TrainerRecords, plan_audits
    from fedswarm.roles.client.review import review_policy

    seasoned = TrainerRecords({f"t{i}": TrainerRecord(reviewed=10, accepted=10) for i in range(8)})
    units = {str(i): f"t{i}" for i in range(8)}

    def audits(fraction: float) -> list[str]:
        pol = review_policy(JobTerms(reexec_fraction=fraction))
        assert pol.base_probability == fraction
        return plan_audits(units, secret=SECRET, round_index=3, records=seasoned, policy=pol, already=["0"]).audits

    assert audits(0.0) == []
    assert len(audits(1.0)) == 3  # the per-round cap (4, the reference included) still bounds the CPU
    assert review_policy(JobTerms(reexec_fraction=1.0)).max_fraction == 1.0
    assert JobTerms().reexec_fraction == review_policy(JobTerms()).base_probability == 0.1


async def test_check_units_reviews_with_the_jobs_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review is called with the job's own policy (it was ignored before: always the default)."""
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_review_round(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(review_mod, "review_round", fake_review_round)
    monkeypatch.setattr(review_mod, "ensure_samples", lambda job, workdir, secret: {})
    monkeypatch.setattr(review_mod, "load_state", lambda workdir, secret: SimpleNamespace(history=None, records=None))
    monkeypatch.setattr(review_mod, "load_flat", lambda path: (None, np.zeros(3, dtype=np.float32)))
    svc = FakeServices(tmp_path, [unit(0, state="delivered")])
    svc.db.put_unit = lambda u: None
    rev = Review(svc, SimpleNamespace(get=lambda job: None))  # type: ignore[arg-type]
    monkeypatch.setattr(rev, "_load_updates", lambda job, r, units: [(u, np.ones(3, dtype=np.float32)) for u in units])
    j = job()
    j.terms = JobTerms(reexec_fraction=0.8)
    j.chunks = [{"chunk_id": "c0", "rows": 10}]
    with pytest.raises(Stop):
        await rev.check_units(j, 2)
    assert seen["policy"].base_probability == 0.8


def test_loss_tolerance_is_refused_with_one_line() -> None:
    """The old validation-loss knob is gone (the gate is relative to the client's reference): a
    new job that sets it is told so; stored terms that carry it still load."""
    from fedswarm.api.app import ApiError
    from fedswarm.api.jobs import parse_terms

    with pytest.raises(ApiError) as err:
        parse_terms('{"rounds": 2, "loss_tolerance": 0.3}')
    assert "loss_tolerance is no longer used" in str(err.value) and "\n" not in str(err.value)
    assert parse_terms('{"rounds": 2}').rounds == 2
    assert JobTerms.model_validate({"loss_tolerance": 0.5}).loss_tolerance == 0.5  # old records
