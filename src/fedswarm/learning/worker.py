"""The training worker: one warm child process per trainer, limited and killable.

Parent side (:class:`TrainingWorker`, synchronous; nodes call it from a thread) spawns
``python -m fedswarm.learning.worker`` with a clean environment, a private temp dir as cwd /
HOME / TMPDIR and its own process group. The child (:mod:`fedswarm.learning.worker_child`) applies
rlimits to itself before importing torch and then serves requests; the messages, errors and
framing both sides share are in :mod:`fedswarm.learning.worker_messages` and re-exported here.

The parent enforces a wall-clock deadline and a resident-memory cap by killing the whole
process group, re-validates every result file (names, shapes, dtypes, finite, size) and
restarts the child transparently on the next call after any death.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedswarm.learning.weights import Layout, load_weights_file, read_layout
from fedswarm.learning.worker_messages import (
    MAX_FRAME,
    EvalTask,
    TaskRejected,
    TrainResult,
    TrainTask,
    UpdateRejected,
    WorkerCrashed,
    WorkerError,
    WorkerMemoryExceeded,
    WorkerTimeout,
    _FrameReader,
    read_frame,
    write_frame,
)

__all__ = [
    "MAX_FRAME",
    "EvalTask",
    "TaskRejected",
    "TrainResult",
    "TrainTask",
    "TrainingWorker",
    "UpdateRejected",
    "WorkerCrashed",
    "WorkerError",
    "WorkerMemoryExceeded",
    "WorkerTimeout",
    "read_frame",
    "validate_update",
    "write_frame",
]

log = logging.getLogger(__name__)


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


if __name__ == "__main__":
    # The child is started as ``python -m fedswarm.learning.worker`` (a name that also lets tests
    # and operators find it in a process list); its code lives in worker_child.
    from fedswarm.learning.worker_child import child_main

    sys.exit(child_main(sys.argv[1:]))
