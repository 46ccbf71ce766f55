"""The devnet store: signed URLs, refusals that store nothing, restart, concurrency, robustness."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from fedswarm.storage.base import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    validate_key,
)
from fedswarm.storage.localstore import LocalStore, start_local_store
from fedswarm.storage.localstore_server import sign

from .conftest import RunningLocalStore, stop_process


def blobs(root: Path) -> list[Path]:
    """Every stored blob (content-addressed files) under a store root."""
    return [p for p in (root / "objects").rglob("*") if p.is_file()]


def assert_nothing_stored(ls: RunningLocalStore, key: str) -> None:
    assert ls.client.head(key) is None
    assert blobs(ls.root) == []
    assert list((ls.root / "tmp").iterdir()) == []


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return parts._replace(query=urlencode(q)).geturl()


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "jobs/j1/chunk-0001.bin", "A.b_c-d/e"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "sp ace", "é", "a?b", "x" * 513]
)
def test_invalid_keys_are_refused_with_one_line(key: str) -> None:
    with pytest.raises(InvalidKey) as exc:
        validate_key(key)
    assert "\n" not in str(exc.value)


# --- round trips ---------------------------------------------------------------------------


def test_client_put_get_head_delete(local_store: RunningLocalStore, tmp_path: Path) -> None:
    # Prepare
    data = secrets.token_bytes(3 * (1 << 20) + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store = local_store.client

    # Execute
    info = store.put("jobs/j1/chunk-0", src)
    out = tmp_path / "out.bin"
    got = store.get("jobs/j1/chunk-0", out)

    # Assert
    sha = hashlib.sha256(data).hexdigest()
    assert info.size == len(data) and info.sha256 == sha
    assert got.sha256 == sha and out.read_bytes() == data
    assert store.head("jobs/j1/chunk-0").size == len(data)
    store.delete("jobs/j1/chunk-0")
    assert store.head("jobs/j1/chunk-0") is None
    assert blobs(local_store.root) == []
    with pytest.raises(ObjectNotFound):
        store.get("jobs/j1/chunk-0", io.BytesIO())
    store.delete("jobs/j1/chunk-0")  # deleting twice is fine


def test_put_from_unsized_stream_and_empty_object(local_store: RunningLocalStore) -> None:
    store = local_store.client
    r, w = os.pipe()
    payload = secrets.token_bytes(200_000)

    def feed() -> None:
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as fh:
        info = store.put("piped", fh)  # no length known: sent chunked
    t.join()
    assert info.size == len(payload)
    buf = io.BytesIO()
    store.get("piped", buf)
    assert buf.getvalue() == payload

    assert store.put("empty", b"").size == 0
    buf = io.BytesIO()
    assert store.get("empty", buf).size == 0 and buf.getvalue() == b""


def test_presigned_put_then_get_with_plain_http(local_store: RunningLocalStore) -> None:
    store = local_store.client
    put_url = store.presign_put("results/u1", 60, max_bytes=1000)
    assert httpx.put(put_url, content=b"x" * 1000).status_code == 201
    get_url = store.presign_get("results/u1", 60)
    resp = httpx.get(get_url)
    assert resp.status_code == 200 and resp.content == b"x" * 1000
    assert resp.headers["x-fedswarm-sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
    assert httpx.head(get_url).headers["content-length"] == "1000"


# --- refusals ------------------------------------------------------------------------------


def test_unsigned_and_tampered_urls_are_refused(local_store: RunningLocalStore) -> None:
    store = local_store.client
    store.put("k", b"secret data")
    url = store.presign_get("k", 60)
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]

    assert httpx.get(url.split("?")[0]).status_code == 403
    assert httpx.get(with_query(url, sig=flipped)).status_code == 403
    assert httpx.get(with_query(url, exp=str(int(time.time()) + 9999))).status_code == 403
    # The same signature does not open another key.
    other = url.replace("/o/k?", "/o/k2?")
    assert httpx.get(other).status_code == 403


def test_tampered_put_stores_nothing(local_store: RunningLocalStore) -> None:
    url = local_store.client.presign_put("up", 60, max_bytes=10)
    # Raising the limit in the URL breaks the signature.
    r = httpx.put(with_query(url, max="1000000"), content=b"y" * 100)
    assert r.status_code == 403
    assert "\n" not in r.json()["error"]
    assert_nothing_stored(local_store, "up")


def test_other_secret_is_refused(local_store: RunningLocalStore) -> None:
    intruder = LocalStore(local_store.url, secrets.token_hex(32).encode())
    with pytest.raises(AccessDenied):
        intruder.put("k", b"data")
    assert_nothing_stored(local_store, "k")
    local_store.client.put("k", b"data")
    with pytest.raises(AccessDenied):
        intruder.get("k", io.BytesIO())
    with pytest.raises(AccessDenied):
        intruder.delete("k")
    assert local_store.client.head("k") is not None
    intruder.close()


def test_expired_urls_are_refused(local_store: RunningLocalStore) -> None:
    secret = local_store.client._secret
    exp = int(time.time()) - 5
    base = local_store.url + "/o/old"
    put_url = f"{base}?{urlencode({'exp': exp, 'max': 100, 'sig': sign(secret, 'PUT', 'old', exp, 100)})}"
    r = httpx.put(put_url, content=b"z")
    assert r.status_code == 403 and "expired" in r.json()["error"]
    assert_nothing_stored(local_store, "old")

    local_store.client.put("old", b"z")
    get_url = f"{base}?{urlencode({'exp': exp, 'sig': sign(secret, 'GET', 'old', exp)})}"
    assert httpx.get(get_url).status_code == 403


def test_wrong_method_is_refused(local_store: RunningLocalStore) -> None:
    store = local_store.client
    get_url = store.presign_get("m", 60)
    r = httpx.put(get_url, content=b"data")
    assert r.status_code == 403
    assert_nothing_stored(local_store, "m")

    store.put("m", b"data")
    put_url = store.presign_put("m", 60, max_bytes=100)
    assert httpx.get(put_url).status_code == 403
    assert httpx.delete(get_url).status_code == 403
    assert httpx.delete(put_url).status_code == 403
    assert store.head("m") is not None
    assert httpx.delete(store.presign_delete("m", 60)).status_code == 204
    assert store.head("m") is None


def test_body_over_max_size_is_refused(local_store: RunningLocalStore) -> None:
    url = local_store.client.presign_put("big", 60, max_bytes=1000)
    # Declared too large: refused before the body is read.
    r = httpx.put(url, content=b"a" * 1001)
    assert r.status_code == 413
    assert_nothing_stored(local_store, "big")
    # No length declared (chunked): refused once the limit is crossed while streaming.
    r = httpx.put(url, content=iter([b"a" * 600, b"b" * 600]))
    assert r.status_code == 413
    assert_nothing_stored(local_store, "big")
    # Exactly at the limit is fine.
    assert httpx.put(url, content=b"a" * 1000).status_code == 201


def test_client_put_oversized_stream_raises(local_store: RunningLocalStore) -> None:
    with pytest.raises(ObjectTooLarge):
        local_store.client.put("lying", io.BytesIO(b"q" * 5000), content_length=100)
    assert_nothing_stored(local_store, "lying")


def test_sha256_bound_put(local_store: RunningLocalStore) -> None:
    body = b"exact content"
    sha = hashlib.sha256(body).hexdigest()
    url = local_store.client.presign_put("h", 60, max_bytes=100, sha256=sha)
    r = httpx.put(url, content=b"other content")
    assert r.status_code == 400
    assert_nothing_stored(local_store, "h")
    assert httpx.put(url, content=body).status_code == 201
    # The optional header check works too.
    url2 = local_store.client.presign_put("h2", 60, max_bytes=100)
    r = httpx.put(url2, content=b"abc", headers={"X-Fedswarm-Sha256": sha})
    assert r.status_code == 400
    assert local_store.client.head("h2") is None


# --- durability and concurrency ------------------------------------------------------------


def test_restart_keeps_data_and_secret(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc, info = start_local_store(root)
    try:
        store = LocalStore.from_devnet_state(info)
        store.put("persist/a", b"still here")
        url = store.presign_get("persist/a", 600)
        store.close()
    finally:
        stop_process(proc)
    proc, info = start_local_store(root, port=int(urlsplit(url).port or 0))
    try:
        store = LocalStore.from_devnet_state(info)
        buf = io.BytesIO()
        store.get("persist/a", buf)
        assert buf.getvalue() == b"still here"
        # The secret survived too: a URL made before the restart still works.
        assert httpx.get(url).content == b"still here"
        store.close()
    finally:
        stop_process(proc)


def test_concurrent_puts_of_same_key_are_safe(local_store: RunningLocalStore) -> None:
    bodies = [bytes([i]) * (1 << 20) for i in range(8)]
    errors: list[BaseException] = []

    def upload(body: bytes) -> None:
        try:
            client = LocalStore(local_store.url, local_store.client._secret)
            for _ in range(3):
                client.put("race", body)
            client.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    buf = io.BytesIO()
    info = local_store.client.get("race", buf)
    assert buf.getvalue() in bodies  # one whole body, never a mix
    assert info.sha256 == hashlib.sha256(buf.getvalue()).hexdigest()
    # Overwritten blobs were collected; no temp files remain.
    assert len(blobs(local_store.root)) == 1
    assert list((local_store.root / "tmp").iterdir()) == []


def test_same_content_under_two_keys_is_stored_once(local_store: RunningLocalStore) -> None:
    store = local_store.client
    store.put("a", b"shared")
    store.put("b", b"shared")
    assert len(blobs(local_store.root)) == 1
    store.delete("a")
    assert store.head("b") is not None and len(blobs(local_store.root)) == 1


def test_garbage_on_the_port_does_not_kill_it(local_store: RunningLocalStore) -> None:
    host, port = "127.0.0.1", int(urlsplit(local_store.url).port or 0)
    payloads = [
        secrets.token_bytes(4096),
        b"GARBAGE\r\n\r\n",
        b"GET /o/" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"PUT /o/x?exp=1&max=zz&sig=00 HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"PUT /o/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        b"GET /o/%2e%2e/secret.key?exp=9999999999&sig=00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
        b"",  # connect and hang up
    ]
    for p in payloads:
        with socket.create_connection((host, port), timeout=10) as s:
            try:  # the store may answer and hang up before reading it all: a reset is fine
                s.sendall(p)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass
    assert local_store.proc.poll() is None
    assert httpx.get(local_store.url + "/healthz").status_code == 200
    local_store.client.put("alive", b"yes")
    assert local_store.client.head("alive").size == 3
    assert blobs(local_store.root) and not list((local_store.root / "tmp").iterdir())


def test_binds_loopback_and_secret_is_private(local_store: RunningLocalStore) -> None:
    assert urlsplit(local_store.url).hostname == "127.0.0.1"
    mode = (local_store.root / "secret.key").stat().st_mode & 0o777
    assert mode == 0o600
