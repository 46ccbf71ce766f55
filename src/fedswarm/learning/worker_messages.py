"""What the training worker's parent and child exchange: task and result types, the errors a
task can end with, and the framing.

Protocol: length-prefixed JSON frames (4-byte big-endian length) over the child's
stdin/stdout; tensors travel as safetensors *file paths*, never inline and never pickled
(so not ``multiprocessing.Connection``). The parent is :mod:`fedswarm.learning.worker`, the
child :mod:`fedswarm.learning.worker_child`.
"""

from __future__ import annotations

import json
import os
import select
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedswarm.learning.chunks import Preprocessing

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
