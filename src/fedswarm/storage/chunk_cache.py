"""A trainer's cache of the encrypted chunks of its jobs, by content hash.

The client gives a trainer the same slot, and so the same chunk, every round; without a cache
the trainer downloaded it again each round (on the bench's small model, 60 % of a round's bytes).
The cache holds **ciphertext** only, exactly the bytes the store serves, checked against the
sha256 the work unit names: the plaintext still exists only while a unit trains, and the key
still comes sealed with each unit. A job's entries go when the job finishes.

Synchronous (the trainer calls it from a worker thread). Thread-safe: two units of one job that
need the same chunk at once download it once.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

from fedswarm.storage.download import download

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ChunkCache:
    """Encrypted chunks under ``root/<job id>/<sha256>.enc``."""

    def __init__(self, root: Path, *, allow_private: bool = True) -> None:
        self.root = root
        self.allow_private = allow_private
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def path(self, job_id: str, sha256: str) -> Path:
        """Where a chunk lives (names are checked: both parts come from the network)."""
        if not _JOB_ID.match(job_id) or not _SHA256.match(sha256):
            raise ValueError(f"bad cache key {job_id[:64]!r}/{sha256[:64]!r}")
        return self.root / job_id / f"{sha256}.enc"

    def fetch(self, job_id: str, url: str, sha256: str, size: int, deadline_s: float) -> tuple[Path, bool]:
        """The chunk's ciphertext file, downloaded (and hash-checked) unless already here.

        Returns ``(path, from_cache)``. Raises what :func:`~fedswarm.storage.download.download`
        raises; nothing is cached then.
        """
        path = self.path(job_id, sha256)
        with self._lock(path.name):
            if path.is_file() and path.stat().st_size == size:
                return path, True
            path.parent.mkdir(parents=True, exist_ok=True)
            download(url, path, max_bytes=size, sha256=sha256, expected_size=size, deadline_s=deadline_s,
                     allow_private=self.allow_private)
            return path, False

    def discard(self, job_id: str, sha256: str) -> None:
        """Forget one chunk (it failed to decrypt: the next unit downloads it again)."""
        self.path(job_id, sha256).unlink(missing_ok=True)

    def drop_job(self, job_id: str) -> None:
        """Remove every chunk of a job."""
        if _JOB_ID.match(job_id):
            shutil.rmtree(self.root / job_id, ignore_errors=True)

    def jobs(self) -> list[str]:
        """Job ids with something cached."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _JOB_ID.match(p.name))

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())
