"""The training worker's child side: applies its limits, loads torch and serves requests.

Started by :class:`fedswarm.learning.worker.TrainingWorker` as ``python -m
fedswarm.learning.worker LIMITS`` (that module's ``__main__`` calls :func:`child_main`). The child
applies rlimits to itself before importing torch (CPU, FSIZE, NOFILE, CORE=0, and RLIMIT_AS for
CPU jobs only: CUDA needs a huge address space), keeps a private duplicate of stdout for frames
and points fd 1 at stderr, so a stray print cannot corrupt the stream.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedswarm.learning.chunks import Preprocessing
from fedswarm.learning.worker_messages import EvalTask, TrainTask, read_frame, write_frame


def _apply_limits(limits: dict[str, Any]) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
    if limits.get("as_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (limits["as_bytes"], limits["as_bytes"]))
    if limits.get("nice"):
        os.nice(int(limits["nice"]))


def _set_task_cpu_limit(cpu_s: int) -> None:
    """Soft CPU limit = CPU used so far + this task's allowance (hard limit unchanged)."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = spent + cpu_s
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _child_train(msg: dict[str, Any], out_fd: int, device: Any) -> dict[str, Any]:
    from fedswarm.learning.budget import Budget
    from fedswarm.learning.data import load_tensors
    from fedswarm.learning.train import build_model, train
    from fedswarm.learning.weights import load_weights_file, save_weights_file

    task = TrainTask.model_validate(msg["task"])
    out = Path(msg["out"])
    spec = _cached(("spec", json.dumps(task.model, sort_keys=True), task.batch_size,
                    json.dumps(msg.get("budget", {}), sort_keys=True)),
                   lambda: _checked_spec(task.model, task.batch_size, Budget(**msg.get("budget", {}))))
    state = load_weights_file(task.weights_path)
    if task.mode == "noop":
        build_model(spec, state, "cpu")  # the weights must still fit the model
        # The global weights, untouched: isolates framework overhead in benchmarks.
        save_weights_file(out, state)
        return {"op": "result", "num_samples": 0, "train_loss": 0.0, "batches": 0, "seconds": 0.0}
    x, y = _cached(_data_key(task.chunk_paths, task.preprocessing, spec.input_shape),
                   lambda: load_tensors(task.chunk_paths, task.preprocessing, spec.input_shape))
    last = [0.0]

    def progress(batches: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:  # throttle: progress is for the audit log, not per batch
            last[0] = now
            write_frame(out_fd, {"op": "progress", "batches": batches, "loss": loss})

    res = train(spec, state, x, y, epochs=task.epochs, batch_size=task.batch_size, lr=task.lr,
                seed=task.seed, fedprox_mu=task.fedprox_mu, max_batches=task.max_batches,
                device=device, on_progress=progress)
    write_frame(out_fd, {"op": "progress", "batches": res.batches, "loss": res.train_loss})
    save_weights_file(out, res.state)
    return {"op": "result", "num_samples": res.num_samples, "train_loss": res.train_loss,
            "batches": res.batches, "seconds": res.seconds}


# A warm worker serves many rounds of the same job: the validated spec and the decoded chunks
# are kept between rounds (keyed by content / file identity), so a round pays only for training.
_CACHE: dict[Any, Any] = {}


def _cached(key: Any, make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def _checked_spec(model: dict[str, Any], batch_size: int, budget: Any) -> Any:
    from fedswarm.learning.budget import check_budget
    from fedswarm.learning.train import parse_model_spec

    spec = parse_model_spec(model)
    check_budget(spec, batch_size, budget)
    return spec


def _data_key(paths: list[str], prep: Preprocessing, shape: list[int]) -> tuple[Any, ...]:
    stats = tuple((p, st.st_size, st.st_mtime_ns, st.st_ino) for p in paths for st in [os.stat(p)])
    return ("data", stats, prep.model_dump_json(), tuple(shape))


def _child_evaluate(msg: dict[str, Any], device: Any) -> dict[str, Any]:
    from fedswarm.learning.budget import Budget
    from fedswarm.learning.data import load_tensors
    from fedswarm.learning.train import evaluate
    from fedswarm.learning.weights import load_weights_file

    task = EvalTask.model_validate(msg["task"])
    # The budget check of a spec is cached as for training: the client's review scores many
    # weights on small samples per round, and the check cost more than the evaluation.
    batch = min(task.batch_size, 1024)
    spec = _cached(("spec", json.dumps(task.model, sort_keys=True), batch,
                    json.dumps(msg.get("budget", {}), sort_keys=True)),
                   lambda: _checked_spec(task.model, batch, Budget(**msg.get("budget", {}))))
    state = load_weights_file(task.weights_path)
    x, y = load_tensors(task.chunk_paths, task.preprocessing, spec.input_shape)
    return {"op": "metrics", "metrics": evaluate(spec, state, x, y, batch_size=task.batch_size, device=device)}


def _is_oom(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def _exit_with_parent() -> None:
    """Die when the node that owns us dies (SIGKILL included), even in the middle of training:
    an orphaned worker would hold hundreds of MB for nothing. (PR_SET_PDEATHSIG is tied to the
    spawning *thread*, which a thread pool may retire, so poll for re-parenting instead.)"""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def child_main(argv: list[str]) -> int:
    """Entry point of the worker process (``python -m fedswarm.learning.worker LIMITS``)."""
    _apply_limits(json.loads(argv[0]))
    _exit_with_parent()
    # frames go to a private copy of stdout; fd 1 now points at stderr for stray prints
    out_fd = os.dup(1)
    os.dup2(2, 1)
    in_fd = 0
    hello = read_frame(in_fd)
    import torch

    from fedswarm.learning.train import resolve_device, set_determinism

    set_determinism(int(hello.get("threads", 1)))
    device = resolve_device(str(hello.get("device", "auto")))
    write_frame(out_fd, {"op": "ready", "pid": os.getpid(), "device": str(device),
                         "torch": torch.__version__})
    from fedswarm.learning.chunks import ChunkFormatError
    from fedswarm.learning.spec import SpecError
    from fedswarm.learning.weights import WeightsError

    while True:
        try:
            msg = read_frame(in_fd)
        except EOFError:
            return 0
        op = msg.get("op")
        if op == "exit":
            return 0
        try:
            _set_task_cpu_limit(int(msg.get("cpu_s", 3600)))
            if op == "train":
                reply = _child_train(msg, out_fd, device)
            elif op == "evaluate":
                reply = _child_evaluate(msg, device)
            elif op == "ping":
                reply = {"op": "pong"}
            else:
                reply = {"op": "error", "kind": "protocol", "message": f"unknown op {op!r}"}
        except (SpecError, WeightsError, ChunkFormatError, ValueError) as exc:
            reply = {"op": "error", "kind": "rejected", "message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - report every failure to the parent
            if _is_oom(exc):
                write_frame(out_fd, {"op": "error", "kind": "memory", "message": str(exc)[:300]})
                return 3  # memory state is suspect: let the parent start a fresh worker
            reply = {"op": "error", "kind": "failed", "message": f"{type(exc).__name__}: {exc}"[:500]}
        write_frame(out_fd, reply)
