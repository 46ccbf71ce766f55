"""What the client's review keeps per job, beside the job's folder: evaluation samples, the
update history and trainer records, the evidence of rejections and the cost of checking.

- Samples: once per job, a seeded sample (at most :data:`~fedswarm.learning.review.SAMPLE_ROWS`
  rows) of every chunk and of the validation split
  (:func:`~fedswarm.learning.review.write_sample_chunk`), the seed drawn from the job's secret so
  no trainer knows which of its rows are scored. ``samples.json`` maps each sample key to its file.
- State: :class:`~fedswarm.learning.reference.UpdateHistory` (replays of earlier rounds) and
  :class:`~fedswarm.learning.review_policy.TrainerRecords` (who is new or doubtful) as
  ``review-state.json``, so they survive a client restart.
- Evidence: the canonical JSON of a rejection's numbers; its keccak256 is the reason hash the
  settlement puts on chain, so anyone holding the audit entry can check a rejection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedswarm.learning.reference import UpdateHistory
from fedswarm.learning.review import VALIDATION, write_sample_chunk
from fedswarm.learning.review_policy import TrainerRecords
from fedswarm.roles.client.records import JobRecord

STATE_FILE = "review-state.json"
SAMPLES_DIR = "samples"


def derived_seed(secret: bytes, purpose: str) -> int:
    """A 63-bit seed from HMAC-SHA256(job secret, purpose): fixed for the job, unknown to trainers."""
    digest = hmac.new(bytes(secret), f"fedswarm-review-seed/1|{purpose}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def chunk_key(chunk_id: str) -> str:
    """The sample key of a chunk (prefixed, so no chunk id can collide with the validation key)."""
    return f"chunk:{chunk_id}"


def ensure_samples(job: JobRecord, job_dir: Path, secret: bytes) -> dict[str, str]:
    """The job's evaluation samples, ``{sample key: file}``, written on first use (blocking).

    One sample per chunk (keyed :func:`chunk_key`) and one of the validation split (keyed
    :data:`~fedswarm.learning.review.VALIDATION`); the manifest is written last, so a client
    killed half-way writes them again."""
    folder = job_dir / SAMPLES_DIR
    manifest = folder / "samples.json"
    if manifest.is_file():
        known: dict[str, str] = json.loads(manifest.read_text())
        if all(Path(p).is_file() for p in known.values()):
            return known
    if job.validation_path is None:
        raise ValueError(f"job {job.job_id} has no validation split to sample")
    folder.mkdir(parents=True, exist_ok=True)
    base = derived_seed(secret, "samples")
    out: dict[str, str] = {}
    sources = [(chunk_key(str(c["chunk_id"])), str(c["path"])) for c in job.chunks]
    sources.append((VALIDATION, job.validation_path))
    for i, (key, src) in enumerate(sources):
        # Our own file names: chunk ids are not trusted to be path-safe.
        dest = folder / f"sample-{i:05d}{Path(src).suffix}"
        write_sample_chunk(src, dest, seed=(base + i) % (1 << 63))
        out[key] = str(dest)
    tmp = manifest.with_name(f".{manifest.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps(out, sort_keys=True))
    tmp.replace(manifest)
    return out


@dataclass
class ReviewState:
    """The review's memory of one job across rounds and restarts."""

    history: UpdateHistory
    records: TrainerRecords = field(default_factory=TrainerRecords)


def load_state(job_dir: Path, secret: bytes) -> ReviewState:
    """The job's saved review state, or a fresh one (history seeded from the secret)."""
    path = job_dir / STATE_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        return ReviewState(UpdateHistory.from_dict(data["history"]), TrainerRecords.from_dict(data["records"]))
    return ReviewState(UpdateHistory(seed=derived_seed(secret, "history")))


def save_state(job_dir: Path, state: ReviewState) -> None:
    """Write the review state atomically."""
    path = job_dir / STATE_FILE
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps({"history": state.history.to_dict(), "records": state.records.to_dict()}))
    os.replace(tmp, path)


def canonical_json(obj: dict[str, Any]) -> str:
    """The one serialisation a rejection's reason hash is computed over (sorted keys, no spaces,
    ASCII): re-serialise the audit entry's ``evidence`` this way and keccak256 it to check."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _finite(obj: Any) -> Any:
    # JSON has no NaN or infinity: such a number becomes its text (a poisoned loss can be inf).
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def evidence_json(job: JobRecord, r: int, unit: int, trainer: str, reason: str, check: str,
                  numbers: dict[str, Any]) -> str:
    """The canonical evidence of one rejection (what its on-chain reason hash commits to)."""
    return canonical_json(_finite({"v": 1, "job": job.job_id, "round": r, "unit": unit, "trainer": trainer,
                                   "check": check, "reason": reason, **numbers}))


@dataclass
class Cost:
    """Wall and CPU seconds of a piece of review work: this process and the training worker."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Rounded, for the round summary."""
        return {"wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3)}


class CostMeter:
    """Measures :class:`Cost` between :meth:`start` and :meth:`stop` (blocking calls only).

    CPU counts this process (all threads: the download, decryption and numpy statistics) plus the
    worker process (evaluations and re-executions) and its children."""

    def __init__(self, worker_pid: int | None) -> None:
        self._worker = psutil.Process(worker_pid) if worker_pid else None
        self._t0 = self._c0 = 0.0

    def _cpu(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        total = own.ru_utime + own.ru_stime
        if self._worker is not None:
            try:
                t = self._worker.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def start(self) -> CostMeter:
        """Start measuring; returns self."""
        self._t0, self._c0 = time.perf_counter(), self._cpu()
        return self

    def stop(self) -> Cost:
        """The cost since :meth:`start`."""
        return Cost(time.perf_counter() - self._t0, self._cpu() - self._c0)
