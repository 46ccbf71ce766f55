"""The trainer's chunk cache against a real devnet store."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from fedswarm.storage.chunk_cache import ChunkCache
from fedswarm.storage.download import DownloadHashMismatch

JOB = "job-cache"


def _put(store: Any, name: str, data: bytes) -> tuple[str, str]:
    store.client.put(name, data)
    return store.client.presign_get(name, 600), hashlib.sha256(data).hexdigest()


def test_second_fetch_comes_from_the_cache_and_jobs_are_dropped(local_store: Any, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    url, digest = _put(local_store, f"{JOB}/c0", data)
    cache = ChunkCache(tmp_path / "chunks")

    path, hit = cache.fetch(JOB, url, digest, len(data), 30)
    assert not hit and path.read_bytes() == data and path == tmp_path / "chunks" / JOB / f"{digest}.enc"
    local_store.client.delete(f"{JOB}/c0")  # the store no longer has it: only the cache can answer
    path2, hit2 = cache.fetch(JOB, url, digest, len(data), 30)
    assert hit2 and path2 == path and cache.jobs() == [JOB]

    cache.discard(JOB, digest)
    assert not path.exists()
    cache.drop_job(JOB)
    assert cache.jobs() == [] and not (tmp_path / "chunks" / JOB).exists()


def test_nothing_is_cached_from_a_bad_download_and_names_are_checked(local_store: Any,
                                                                      tmp_path: Path) -> None:
    data = os.urandom(1000)
    url, digest = _put(local_store, f"{JOB}/c1", data)
    cache = ChunkCache(tmp_path / "chunks")
    wrong = "0" * 64
    with pytest.raises(DownloadHashMismatch):
        cache.fetch(JOB, url, wrong, len(data), 30)
    assert not cache.path(JOB, wrong).exists()
    for job, sha in [("../etc", digest), (JOB, "../../x" + "0" * 57), (JOB, digest.upper())]:
        with pytest.raises(ValueError, match="bad cache key"):
            cache.fetch(job, url, sha, len(data), 30)
    cache.drop_job("../..")  # ignored, removes nothing
    assert tmp_path.exists()


def test_concurrent_fetches_of_one_chunk_download_it_once(local_store: Any, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    url, digest = _put(local_store, f"{JOB}/c2", data)
    cache = ChunkCache(tmp_path / "chunks")
    hits: list[bool] = []
    threads = [threading.Thread(target=lambda: hits.append(cache.fetch(JOB, url, digest, len(data), 30)[1]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(hits) == [False, True, True, True]
    assert cache.path(JOB, digest).read_bytes() == data
