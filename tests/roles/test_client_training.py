"""The client trains, re-executes and aggregates with the strategy's own settings and state
(fast: real strategies, real weight and state files, a real devnet store; no nodes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedswarm.identity import load_identity
from fedswarm.learning.weights import save_weights_file
from fedswarm.roles.client import ClientDB, JobNotFound, JobRecord, JobTerms, UnitRecord
from fedswarm.roles.client.review import aggregate_step, global_path, load_flat
from fedswarm.roles.client.rounds import Rounds
from fedswarm.roles.client.services import ClientServices
from fedswarm.roles.client.training import JobStrategies, reexec_task, strategy_state_path
from fedswarm.storage.localstore import LocalStore, start_local_store
from fedswarm.storage.sealed import StoredRef

ROUNDS, CLIENTS = 6, 3


def _job(strategy: str, params: dict | None = None, **terms: object) -> JobRecord:
    return JobRecord(
        job_id="job-0123456789ab", dataset_path="/nonexistent.csv", model={"format": "fedswarm-seq/1"},
        terms=JobTerms(strategy=strategy, strategy_params=params or {}, rounds=ROUNDS, trainers=CLIENTS,
                       seed=7, **terms),
        preprocessing={"features": ["a"], "label": "y", "task": "classification", "classes": ["n", "p"],
                       "mean": [0.0], "std": [1.0]},
        chunks=[{"chunk_id": f"chunk-{i}", "key": f"jobs/job-0123456789ab/chunks/chunk-{i}.enc",
                 "sha256": "ab" * 32, "size": 100, "rows": 10, "path": f"/tmp/chunk-{i}"} for i in range(CLIENTS)],
    )


def _updates(gvec: np.ndarray, r: int) -> list[tuple[np.ndarray, int]]:
    """Each client's update: the global weights plus a delta fixed by (round, client)."""
    out = []
    for c in range(CLIENTS):
        rng = np.random.default_rng(1000 * r + c)
        out.append(((gvec + rng.normal(0.05, 0.1, gvec.size)).astype(np.float32), 10 + c))
    return out


def _run(workdir: Path, job: JobRecord, restarts: set[int], drop_state_at: int | None = None,
         retry: set[int] | None = None) -> np.ndarray:
    """Aggregate ROUNDS rounds in ``workdir``; before each round in ``restarts`` the client is
    a new one (fresh JobStrategies: everything in memory is gone)."""
    workdir.mkdir()
    rng = np.random.default_rng(0)
    save_weights_file(global_path(workdir, 0), {"w": rng.normal(size=(8, 5)).astype(np.float32),
                                                "b": np.zeros(5, dtype=np.float32)})
    strategies = JobStrategies(lambda _job_id: workdir)
    for r in range(ROUNDS):
        if r in restarts:
            strategies = JobStrategies(lambda _job_id: workdir)
        if r == drop_state_at:
            strategy_state_path(workdir, r).unlink()
        _, gvec = load_flat(global_path(workdir, r))
        aggregate_step(strategies, job, r, workdir, _updates(gvec, r))
        if retry and r in retry:  # a crash after aggregating, before the round was recorded
            aggregate_step(strategies, job, r, workdir, _updates(gvec, r))
    return load_flat(global_path(workdir, ROUNDS))[1]


@pytest.mark.parametrize("strategy", ["fedadam", "fedyogi", "fedavgm"])
def test_restarted_client_aggregates_like_an_uninterrupted_one(tmp_path: Path, strategy: str) -> None:
    job = _job(strategy)
    straight = _run(tmp_path / "straight", job, restarts=set())
    restarted = _run(tmp_path / "restarted", job, restarts={2, 4})
    retried = _run(tmp_path / "retried", job, restarts=set(), retry={1, 3})
    assert np.array_equal(straight, restarted)
    assert np.array_equal(straight, retried)
    # The state file is what carries the optimiser across the restart: without it the
    # restarted client starts the server optimiser from scratch and ends elsewhere.
    assert strategy_state_path(tmp_path / "straight", ROUNDS).is_file()
    lost = _run(tmp_path / "lost", job, restarts={2}, drop_state_at=2)
    assert not np.allclose(straight, lost)


def test_stateless_strategy_writes_no_state(tmp_path: Path) -> None:
    _run(tmp_path / "avg", _job("fedavg"), restarts={3})
    assert not list((tmp_path / "avg").glob("strategy-*"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    proc, info = start_local_store(tmp_path / "store")
    client = LocalStore.from_devnet_state(info)
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(("params", "mu"), [({}, 0.01), ({"proximal_mu": 0.25}, 0.25)])
def test_fedprox_reexecution_trains_with_the_mu_the_trainer_got(tmp_path: Path, store: LocalStore,
                                                                 params: dict, mu: float) -> None:
    job = _job("fedprox", params, local_epochs=2, batch_size=16, lr=0.05)
    identity = load_identity(tmp_path / "client")
    escrow = SimpleNamespace(get_chain_id=lambda: 31337)  # work units name the chain (no call made)
    svc = ClientServices(None, None, tmp_path / "client", identity, store, None, None, escrow)  # type: ignore[arg-type]
    svc.db.put_secret(job.job_id, bytes(32))
    job.job_key, job.contract = "ab" * 32, "0x" + "12" * 20
    strategies = JobStrategies(svc.job_dir)
    rounds = Rounds(svc, _ReviewStub(strategies), checked=None, cancel_requested=lambda _: False)  # type: ignore[arg-type]
    trainer = load_identity(tmp_path / "trainer")
    bid = {"peer_id": trainer.peer_id, "address": trainer.address, "price_wei": 1,
           "box_public": trainer.box_public_hex}
    ref = StoredRef("jobs/job-0123456789ab/global/2.enc", "cd" * 32, 1234)

    wu = rounds.work_unit(job, 2, 1, 4, bid, ref, time.time() + 300)
    unit = UnitRecord(job_id=job.job_id, round=2, unit=4, slot=1, trainer_peer=trainer.peer_id,
                      trainer_address=trainer.address, price_wei=1, update_key="k")
    task = reexec_task(job, strategies.get(job), tmp_path / "global-2.safetensors", unit)

    assert wu.fedprox_mu == task.fedprox_mu == mu
    for field in ("epochs", "batch_size", "lr", "seed", "mode"):
        assert getattr(task, field) == getattr(wu, field), field
    assert task.chunk_paths == [job.chunks[1]["path"]]
    svc.db.close()


def test_fedavg_units_carry_no_proximal_term(tmp_path: Path) -> None:
    job = _job("fedavg")
    unit = UnitRecord(job_id=job.job_id, round=0, unit=0, slot=0, trainer_peer="p", trainer_address="a",
                      price_wei=1, update_key="k")
    assert reexec_task(job, JobStrategies(lambda _: tmp_path).get(job), tmp_path / "g", unit).fedprox_mu == 0.0


class _ReviewStub:
    """Only what ``Rounds.work_unit`` reads from the review: the job's strategies."""

    def __init__(self, strategies: JobStrategies) -> None:
        self.strategies = strategies


def test_client_db_has_no_fault_terms(tmp_path: Path) -> None:
    # Faults are test doubles now (fedswarm.testing), not a field a user can set on a job.
    assert "fault" not in JobTerms.model_fields
    db = ClientDB(tmp_path / "c.sqlite")
    db.put_job(_job("fedavg"))
    assert db.get_job("job-0123456789ab") is not None
    db.close()


def test_unknown_job_is_a_domain_error(tmp_path: Path) -> None:
    svc = ClientServices(None, None, tmp_path, load_identity(tmp_path / "id"), None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(JobNotFound, match="no job job-missing"):
        svc.job("job-missing")
    svc.db.put_job(_job("fedavg"))
    assert svc.job("job-0123456789ab").terms.strategy == "fedavg"
    svc.db.close()
