"""The training worker: one warm child process per trainer, limited and killable.

Parent side (:class:`TrainingWorker`, synchronous; nodes call it from a thread) spawns
``python -m fedswarm.learning.worker`` with a clean environment, a private temp dir as cwd /
HOME / TMPDIR and its own process group. The child applies rlimits to itself before importing
torch (CPU, FSIZE, NOFILE, CORE=0, and RLIMIT_AS for CPU jobs only: CUDA needs a huge address
space) and then serves requests.

Protocol: length-prefixed JSON frames (4-byte big-endian length) over the child's
stdin/stdout; tensors travel as safetensors *file paths*, never inline and never pickled
(so not ``multiprocessing.Connection``). The child keeps a private duplicate of stdout for
frames and points fd 1 at stderr, so a stray print cannot corrupt the stream.

The parent enforces a wall-clock deadline and a resident-memory cap by killing the whole
process group, re-validates every result file (names, shapes, dtypes, finite, size) and
restarts the child transparently on the next call after any death.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedswarm.learning.chunks import Preprocessing
from fedswarm.learning.weights import Layout, load_weights_file, read_layout

log = logging.getLogger(__name__)

MAX_FRAME = 16 << 20
_HDR = struct.Struct(">I")


class WorkerError(RuntimeError):
    """Base class: the task did not produce a usable result."""


class WorkerTimeout(WorkerError):
    """The task ran past its wall-clock deadline; the worker was killed."""


class WorkerMemoryExceeded(WorkerError):
    """The task went over the memory cap; the worker was killed."""


class WorkerCrashed(WorkerError):
    """The worker process died unexpectedly."""


class TaskRejected(WorkerError):
    """The worker refused the task (bad spec, over budget, bad weights or data)."""


class UpdateRejected(WorkerError):
    """The worker's result file failed the parent's validation."""


class TrainTask(BaseModel):
    """One unit of local training, as sent to the worker (paths are on this machine)."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any]  # a fedswarm-seq/1 or fedswarm-graph/1 JSON object
    weights_path: str  # global weights (.safetensors)
    chunk_paths: list[str] = Field(min_length=1, max_length=100_000)  # plaintext chunk files
    preprocessing: Preprocessing
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(0.01, gt=0.0, le=10.0)
    seed: int = Field(0, ge=0, lt=2**63)
    fedprox_mu: float = Field(0.0, ge=0.0, le=100.0)
    max_batches: int | None = Field(None, ge=1)
    mode: Literal["train", "noop"] = "train"


class EvalTask(BaseModel):
    """Evaluation of one set of weights on chunk files."""

    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any]
    weights_path: str
    chunk_paths: list[str] = Field(min_length=1, max_length=100_000)
    preprocessing: Preprocessing
    batch_size: int = Field(1024, ge=1, le=65_536)


class TrainResult(BaseModel):
    """A validated training result; the update file belongs to the caller (move or delete it)."""

    model_config = ConfigDict(extra="forbid")

    update_path: str
    num_samples: int
    train_loss: float
    batches: int
    seconds: float  # wall time seen by the parent, request to validated result
    train_seconds: float  # time inside the training loop, seen by the worker


# ---- framing -----------------------------------------------------------------------------------


def write_frame(fd: int, obj: dict[str, Any]) -> None:
    """Write one length-prefixed JSON frame to ``fd``."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes is over the {MAX_FRAME}-byte cap")
    buf = _HDR.pack(len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        part = os.read(fd, n)
        if not part:
            raise EOFError("peer closed the pipe")
        chunks.append(part)
        n -= len(part)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    """Read one frame (blocking); raises ``EOFError`` when the peer is gone."""
    (n,) = _HDR.unpack(_read_exact(fd, _HDR.size))
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes is over the cap")
    obj = json.loads(_read_exact(fd, n))
    if not isinstance(obj, dict):
        raise ValueError("frame is not a JSON object")
    return obj


class _FrameReader:
    """Non-blocking frame reader for the parent: waits with a timeout, keeps partial data."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """A complete frame if one arrives within ``timeout`` s, else None; EOFError on close."""
        frame = self._take()
        if frame is not None:
            return frame
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if ready:
            data = os.read(self.fd, 1 << 16)
            if not data:
                raise EOFError("worker closed its pipe")
            self.buf += data
        return self._take()

    def _take(self) -> dict[str, Any] | None:
        if len(self.buf) < _HDR.size:
            return None
        (n,) = _HDR.unpack(self.buf[: _HDR.size])
        if n > MAX_FRAME:
            raise ValueError("worker sent an oversized frame")
        if len(self.buf) < _HDR.size + n:
            return None
        data, self.buf = self.buf[_HDR.size : _HDR.size + n], self.buf[_HDR.size + n :]
        return json.loads(data)


# ---- parent side -------------------------------------------------------------------------------


class TrainingWorker:
    """A warm, limited training process for one trainer.

    Parameters:
        workdir: where the worker's private temp dir is created.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        memory_limit_mb: resident-memory cap of the worker (parent-enforced kill); CPU jobs
            also get an address-space rlimit of this plus ``address_space_slack_mb``.
        threads: torch CPU threads (fixed, so updates are reproducible).
        max_update_bytes: size cap of a result file.
        start_timeout_s: how long a cold start may take.
        nice: scheduling niceness of the child (0-19). Training yields the CPU to the node
            itself (heartbeats, RPC answers) and to whatever the machine's owner is doing; on an
            otherwise idle machine it changes nothing.
        budget: dict of :class:`fedswarm.learning.budget.Budget` fields for the dry run.
    """

    def __init__(
        self,
        workdir: str | Path,
        device: str = "auto",
        memory_limit_mb: int = 4096,
        *,
        threads: int = 1,
        max_update_bytes: int = 2 << 30,
        max_open_files: int = 256,
        address_space_slack_mb: int = 2048,
        start_timeout_s: float = 120.0,
        budget: dict[str, int] | None = None,
        nice: int = 10,
    ) -> None:
        self.workdir = Path(workdir)
        self.device = device
        self.memory_limit_mb = memory_limit_mb
        self.threads = threads
        self.max_update_bytes = max_update_bytes
        self.max_open_files = max_open_files
        self.address_space_slack_mb = address_space_slack_mb
        self.start_timeout_s = start_timeout_s
        self.budget = budget or {}
        self.nice = max(0, min(19, nice))
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: _FrameReader | None = None
        self._tmp: Path | None = None
        self._lock = threading.Lock()
        self._counter = 0
        self.info: dict[str, Any] = {}
        self.start_seconds = 0.0
        self.restarts = -1

    # lifecycle ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def _gpu_job(self) -> bool:
        if self.device == "cpu":
            return False
        return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0"))

    def start(self) -> None:
        """Start the child (if not running) and wait until it has imported torch."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._cleanup_proc()
        t0 = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._tmp is None or not self._tmp.exists():
            self._tmp = Path(tempfile.mkdtemp(prefix="worker-", dir=self.workdir))
        limits = {
            "cpu_s": 7 * 24 * 3600,
            "fsize": self.max_update_bytes + (64 << 20),
            "nofile": self.max_open_files,
            "as_bytes": None if self._gpu_job() else (self.memory_limit_mb + self.address_space_slack_mb) << 20,
            "nice": self.nice,
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self._tmp),
            "TMPDIR": str(self._tmp),
            "LANG": "C.UTF-8",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
        }
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        stderr = (self._tmp / "worker.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fedswarm.learning.worker", json.dumps(limits)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                cwd=self._tmp, env=env, start_new_session=True, close_fds=True,
            )
        finally:
            stderr.close()
        assert self._proc.stdout is not None
        self._reader = _FrameReader(self._proc.stdout.fileno())
        self._send({"op": "hello", "device": self.device, "threads": self.threads})
        msg = self._wait_for(("ready",), time.monotonic() + self.start_timeout_s, None, "start")
        self.info = {k: v for k, v in msg.items() if k != "op"}
        self.start_seconds = time.perf_counter() - t0
        self.restarts += 1
        log.info("training worker pid %s ready in %.2fs on %s", self._proc.pid,
                 self.start_seconds, self.info.get("device"))

    def stop_if_idle(self) -> bool:
        """Stop the child unless a task is running; its temp dir (and any update) stays.

        Returns True when no child is left running. The next task starts a new one (a cold
        start), so a trainer with no work in sight does not keep torch in memory.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._stop_child():
                log.info("training worker stopped while idle")
            return True
        finally:
            self._lock.release()

    def _stop_child(self) -> bool:
        """Ask the child to exit (kill it if it does not); the caller holds the lock.
        Returns whether a child was running."""
        running = self._proc is not None and self._proc.poll() is None
        if running:
            try:
                self._send({"op": "exit"})
                self._proc.wait(timeout=5)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._cleanup_proc()
        return running

    def close(self) -> None:
        """Stop the child and remove its private temp dir (including unclaimed updates)."""
        with self._lock:
            self._stop_child()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def __enter__(self) -> TrainingWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kill(self) -> None:
        """Kill the child's whole process group (anything it spawned goes too)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("worker pid %s did not die after SIGKILL", self._proc.pid)

    def _cleanup_proc(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._kill()
            for f in (self._proc.stdin, self._proc.stdout):
                if f is not None:
                    f.close()
        self._proc = None
        self._reader = None

    def _log_tail(self, n: int = 400) -> str:
        try:
            data = (self._tmp / "worker.log").read_bytes()[-n:] if self._tmp else b""
        except OSError:
            return ""
        return data.decode(errors="replace").strip().replace("\n", " | ")

    # messaging ---------------------------------------------------------------------------------

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            write_frame(self._proc.stdin.fileno(), obj)
        except (BrokenPipeError, OSError) as exc:
            self._cleanup_proc()
            raise WorkerCrashed(f"training worker is gone ({exc}); it restarts on the next call") from None

    def _rss_bytes(self) -> int:
        import psutil

        try:
            proc = psutil.Process(self._proc.pid)  # type: ignore[union-attr]
            return proc.memory_info().rss + sum(
                c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return 0

    def _wait_for(
        self,
        ops: tuple[str, ...],
        deadline: float,
        on_progress: Callable[[int, float], None] | None,
        what: str,
    ) -> dict[str, Any]:
        assert self._reader is not None and self._proc is not None
        limit = self.memory_limit_mb << 20
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                self._cleanup_proc()
                raise WorkerTimeout(f"{what} ran past its deadline; the worker was killed")
            try:
                msg = self._reader.poll(min(remaining, 0.2))
            except (EOFError, ValueError) as exc:
                code = self._proc.wait(timeout=10) if self._proc else None
                tail = self._log_tail()
                self._cleanup_proc()
                if code is not None and code < 0 and -code == signal.SIGXCPU:
                    raise WorkerTimeout(f"{what} hit the CPU-time limit") from None
                raise WorkerCrashed(f"training worker died during {what} (exit {code}, {exc}): {tail}") from None
            if msg is None:
                if self._rss_bytes() > limit:
                    self._kill()
                    self._cleanup_proc()
                    raise WorkerMemoryExceeded(
                        f"{what} used more than {self.memory_limit_mb} MiB; the worker was killed")
                continue
            op = msg.get("op")
            if op == "progress":
                if on_progress is not None:
                    on_progress(int(msg.get("batches", 0)), float(msg.get("loss", float("nan"))))
                continue
            if op == "error":
                kind, text = msg.get("kind"), str(msg.get("message", ""))[:500]
                if kind == "memory":
                    self._kill()
                    self._cleanup_proc()
                    raise WorkerMemoryExceeded(f"{what} ran out of memory: {text}")
                if kind == "rejected":
                    raise TaskRejected(text)
                raise WorkerError(f"{what} failed: {text}")
            if op in ops:
                return msg
            raise WorkerError(f"unexpected message {op!r} from the worker")

    # requests ----------------------------------------------------------------------------------

    def train(
        self,
        task: TrainTask,
        deadline_s: float,
        on_progress: Callable[[int, float], None] | None = None,
    ) -> TrainResult:
        """Run one training task; returns a validated result or raises a :class:`WorkerError`.

        ``deadline_s`` is wall-clock from this call (a cold start counts against it).
        ``on_progress(batches, loss)`` is called from this thread as progress arrives.
        """
        with self._lock:
            t0 = time.perf_counter()
            deadline = time.monotonic() + deadline_s
            expected = read_layout(task.weights_path)
            self._ensure_started()
            assert self._tmp is not None
            self._counter += 1
            out = self._tmp / f"update-{self._counter}.safetensors"
            self._send({
                "op": "train", "task": task.model_dump(mode="json"), "out": str(out),
                "budget": self.budget, "cpu_s": int(deadline_s * max(self.threads, 1)) + 30,
            })
            msg = self._wait_for(("result",), deadline, on_progress, "training")
            self._validate_update(out, expected)
            return TrainResult(
                update_path=str(out), num_samples=int(msg["num_samples"]),
                train_loss=float(msg["train_loss"]), batches=int(msg["batches"]),
                seconds=time.perf_counter() - t0, train_seconds=float(msg["seconds"]),
            )

    def _validate_update(self, out: Path, expected: Layout) -> None:
        try:
            if not out.is_file():
                raise UpdateRejected("the worker reported success but wrote no update file")
            validate_update(out, expected, self.max_update_bytes)
        except UpdateRejected:
            out.unlink(missing_ok=True)
            raise

    def evaluate(self, task: EvalTask, deadline_s: float) -> dict[str, float]:
        """Metrics of ``task.weights_path`` on ``task.chunk_paths`` (eval mode)."""
        with self._lock:
            deadline = time.monotonic() + deadline_s
            self._ensure_started()
            self._send({"op": "evaluate", "task": task.model_dump(mode="json"), "budget": self.budget,
                        "cpu_s": int(deadline_s * max(self.threads, 1)) + 30})
            msg = self._wait_for(("metrics",), deadline, None, "evaluation")
            return {str(k): float(v) for k, v in msg["metrics"].items()}


def validate_update(path: str | Path, expected: Layout, max_bytes: int = 2 << 30) -> None:
    """Parent-side check of a result file: safetensors, names/shapes/dtypes, finite, size."""
    try:
        load_weights_file(path, expected, max_bytes=max_bytes)
    except ValueError as exc:
        raise UpdateRejected(f"update rejected: {exc}") from None


# ---- child side --------------------------------------------------------------------------------


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
    from fedswarm.learning.budget import Budget, check_budget
    from fedswarm.learning.data import load_tensors
    from fedswarm.learning.train import evaluate, parse_model_spec
    from fedswarm.learning.weights import load_weights_file

    task = EvalTask.model_validate(msg["task"])
    spec = parse_model_spec(task.model)
    check_budget(spec, min(task.batch_size, 1024), Budget(**msg.get("budget", {})))
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


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
