"""The training worker: real child processes, limits, deadlines, memory caps, validation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import save

from fedswarm.learning.data import load_tensors
from fedswarm.learning.train import parse_model_spec, set_determinism, train
from fedswarm.learning.weights import layout_of, load_weights_file, read_layout
from fedswarm.learning.worker import (
    EvalTask,
    TaskRejected,
    TrainingWorker,
    TrainTask,
    UpdateRejected,
    WorkerMemoryExceeded,
    WorkerTimeout,
    validate_update,
)

from .engine_helpers import mlp_spec, preprocessing, write_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingWorker]:
    os.environ["FEDSWARM_TEST_SECRET"] = "do-not-leak"
    w = TrainingWorker(tmp_path_factory.mktemp("worker"), device="cpu", memory_limit_mb=2048)
    try:
        w.start()
        yield w
    finally:
        os.environ.pop("FEDSWARM_TEST_SECRET", None)
        w.close()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[Path]]:
    spec = mlp_spec()
    weights, chunks = write_job(tmp_path_factory.mktemp("job"), spec)
    return spec, weights, chunks


def _task(job: tuple, **kw: object) -> TrainTask:
    spec, weights, chunks = job
    args = {"model": spec, "weights_path": str(weights), "chunk_paths": [str(c) for c in chunks],
            "preprocessing": preprocessing(), "epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 5}
    return TrainTask(**(args | kw))


def test_child_is_isolated_and_limited(worker: TrainingWorker) -> None:
    pid = worker.pid
    assert pid is not None and psutil.Process(pid).ppid() == os.getpid()
    env = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"FEDSWARM_TEST_SECRET" not in env and b"AWS_" not in env
    assert os.getpgid(pid) == pid  # own process group: the deadline kill takes everything
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(line.startswith("Max core file size") and " 0 " in line for line in limits.splitlines())
    assert any(line.startswith("Max open files") and "256" in line for line in limits.splitlines())
    assert "unlimited" not in next(ln for ln in limits.splitlines() if ln.startswith("Max address space"))
    assert Path(psutil.Process(pid).cwd()).parent == worker.workdir
    assert psutil.Process(pid).nice() == os.nice(0) + 10  # training yields to the node


def test_worker_update_matches_in_process_reexecution(worker: TrainingWorker, job: tuple) -> None:
    progress: list[tuple[int, float]] = []
    res = worker.train(_task(job), deadline_s=120, on_progress=lambda b, loss: progress.append((b, loss)))
    assert res.batches == 32 and res.num_samples == 1024 and progress[-1][0] == 32
    update = load_weights_file(res.update_path)
    # the client re-executes the unit in its own process: bit-identical on CPU
    set_determinism(1)
    spec, weights, chunks = job
    model = parse_model_spec(spec)
    x, y = load_tensors(chunks, preprocessing(), model.input_shape)
    mine = train(model, load_weights_file(weights), x, y, epochs=2, batch_size=32, lr=0.05, seed=5).state
    assert all(np.array_equal(update[k], mine[k]) for k in mine)
    metrics = worker.evaluate(EvalTask(model=spec, weights_path=res.update_path,
                                       chunk_paths=[str(c) for c in chunks],
                                       preprocessing=preprocessing()), deadline_s=60)
    assert metrics["accuracy"] > 0.5 and metrics["loss"] < 1.3


def test_noop_returns_global_weights_and_warm_round_is_fast(worker: TrainingWorker, job: tuple) -> None:
    pid = worker.pid
    res = worker.train(_task(job, mode="noop"), deadline_s=60)
    assert worker.pid == pid and res.batches == 0
    glob, upd = load_weights_file(job[1]), load_weights_file(res.update_path)
    assert all(np.array_equal(glob[k], upd[k]) for k in glob)
    assert res.seconds < 5


def test_bad_task_rejected_and_worker_stays(worker: TrainingWorker, job: tuple) -> None:
    pid = worker.pid
    evil = mlp_spec()
    evil["layers"].append({"type": "Eval", "code": "__import__('os').system('id')"})
    with pytest.raises(TaskRejected, match="layers"):
        worker.train(_task(job, model=evil), deadline_s=60)
    huge = {"format": "fedswarm-seq/1", "input_shape": [16],
            "layers": [{"type": "Linear", "in_features": 16, "out_features": 1 << 20},
                       {"type": "Linear", "in_features": 1 << 20, "out_features": 4096}]}
    with pytest.raises(TaskRejected, match="parameters"):
        worker.train(_task(job, model=huge), deadline_s=60)
    assert worker.pid == pid


def test_deadline_kills_worker_and_next_call_restarts(worker: TrainingWorker, job: tuple) -> None:
    old = worker.pid
    assert old is not None
    with pytest.raises(WorkerTimeout):
        worker.train(_task(job, epochs=100, batch_size=1), deadline_s=1.5)
    assert worker.pid is None and not psutil.pid_exists(old) or psutil.Process(old).status() == "zombie"
    res = worker.train(_task(job, mode="noop"), deadline_s=120)  # transparent restart
    assert worker.pid not in (None, old) and res.batches == 0


def test_idle_stop_keeps_update_files_and_next_task_restarts(worker: TrainingWorker, job: tuple) -> None:
    res = worker.train(_task(job, mode="noop"), deadline_s=60)
    old = worker.pid
    assert old is not None
    assert worker.stop_if_idle() is True
    assert worker.pid is None and (not psutil.pid_exists(old) or psutil.Process(old).status() == "zombie")
    assert Path(res.update_path).is_file()  # an update not yet uploaded survives the stop
    assert worker.stop_if_idle() is True  # stopping a stopped worker is a no-op
    res2 = worker.train(_task(job, mode="noop"), deadline_s=120)
    assert worker.pid not in (None, old) and res2.batches == 0


def test_memory_overrun_kills_worker_not_parent(tmp_path: Path, job: tuple) -> None:
    wide = {"format": "fedswarm-seq/1", "input_shape": [16],
            "layers": [{"type": "Linear", "in_features": 16, "out_features": 4096}, {"type": "ReLU"},
                       {"type": "Linear", "in_features": 4096, "out_features": 4096}, {"type": "ReLU"},
                       {"type": "Linear", "in_features": 4096, "out_features": 4}]}
    weights, chunks = write_job(tmp_path / "wide", wide, rows=8192)
    w = TrainingWorker(tmp_path / "w", device="cpu", memory_limit_mb=700, budget={"max_flops": 10**13})
    try:
        with pytest.raises(WorkerMemoryExceeded):
            w.train(TrainTask(model=wide, weights_path=str(weights), chunk_paths=[str(c) for c in chunks],
                              preprocessing=preprocessing(), batch_size=8192, lr=0.01), deadline_s=180)
        assert w.pid is None
        ok = w.train(_task(job, mode="noop"), deadline_s=120)  # the parent carries on
        assert ok.batches == 0
    finally:
        w.close()


def test_parent_rejects_nan_and_reshaped_updates(tmp_path: Path, job: tuple) -> None:
    expected = read_layout(job[1])
    glob = load_weights_file(job[1])
    nan = dict(glob)
    key = next(iter(nan))
    nan[key] = nan[key].copy()
    nan[key].flat[0] = np.nan
    reshaped = dict(glob)
    reshaped[key] = glob[key].reshape(1, -1)
    renamed = {("x" + k): v for k, v in glob.items()}
    wrong_dtype = dict(glob)
    wrong_dtype[key] = glob[key].astype(np.float64)
    for i, bad in enumerate([nan, reshaped, renamed, wrong_dtype]):
        p = tmp_path / f"bad{i}.safetensors"
        p.write_bytes(save(bad))
        with pytest.raises(UpdateRejected):
            validate_update(p, expected)
    good = tmp_path / "good.safetensors"
    good.write_bytes(save(glob))
    validate_update(good, layout_of(glob))
    big = tmp_path / "big.safetensors"
    big.write_bytes(save(glob))
    with pytest.raises(UpdateRejected, match="cap"):
        validate_update(big, expected, max_bytes=100)
