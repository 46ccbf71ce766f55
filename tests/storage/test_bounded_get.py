"""Reading an object a peer wrote is size-checked: refused from its declared size before any
body is read, and cut off at the cap (the S3 case is in test_s3store.py, on its bucket) when the declaration is missing or wrong; an oversized
update never reaches the buffer that would hold it."""

from __future__ import annotations

import io
import secrets

import httpx
import pytest

from fedswarm.storage.base import ObjectNotFound, ObjectStore, ObjectTooLarge, check_running_size

from .conftest import RunningLocalStore


class CountingBuffer(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        self.written += len(b)
        return super().write(b)


def oversized_update_is_refused(store: ObjectStore, key: str) -> None:
    # A trainer PUT far more than its unit allows through a URL that could not bind the size.
    body = secrets.token_bytes(3 << 20)
    url = store.presign_put(key, 60, max_bytes=len(body))
    assert httpx.put(url, content=body, timeout=30).status_code in (200, 201)
    buf = CountingBuffer()
    with pytest.raises(ObjectTooLarge, match="larger than the cap of 1048576"):
        store.get(key, buf, max_bytes=1 << 20)
    assert buf.written == 0  # refused from the declared size: nothing was downloaded
    ok = CountingBuffer()
    info = store.get(key, ok, max_bytes=len(body))
    assert info.size == len(body) and ok.getvalue() == body
    with pytest.raises(ObjectNotFound):
        store.get(key + "-missing", io.BytesIO(), max_bytes=10)


def test_local_store_get_is_bounded(local_store: RunningLocalStore) -> None:
    store = local_store.client
    oversized_update_is_refused(store, "jobs/j/updates/u1")
    # the devnet store binds the size of a presigned PUT (at most; exact on S3)
    url = store.presign_put_exact("jobs/j/exact", 60, 10)
    assert httpx.put(url, content=b"x" * 11, timeout=10).status_code == 413
    assert store.head("jobs/j/exact") is None


def test_running_cap_stops_a_stream_without_a_declared_size() -> None:
    check_running_size("k", 10, 10)
    check_running_size("k", 10, None)
    with pytest.raises(ObjectTooLarge, match="download stopped"):
        check_running_size("k", 11, 10)
