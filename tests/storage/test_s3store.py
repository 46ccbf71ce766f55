"""`S3Store` against a real SeaweedFS S3 gateway (SigV4 and presign expiry enforced)."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from fedswarm.config import ConfigError, Settings
from fedswarm.storage.base import AccessDenied, IntegrityError, ObjectNotFound
from fedswarm.storage.factory import make_object_store
from fedswarm.storage.s3 import S3Store

from .conftest import SeaweedS3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(seaweedfs: SeaweedS3) -> S3Store:
    """One bucket for this module, small multipart threshold so multipart is exercised."""
    return seaweedfs.store(multipart_threshold=5 << 20, part_size=5 << 20)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return parts._replace(query=urlencode(q)).geturl()


def test_put_get_head_delete(s3: S3Store, tmp_path: Path) -> None:
    # Prepare
    data = secrets.token_bytes(300_000)
    # Execute
    info = s3.put("jobs/j1/chunk-0", data)
    out = tmp_path / "o.bin"
    got = s3.get("jobs/j1/chunk-0", out)
    # Assert
    sha = hashlib.sha256(data).hexdigest()
    assert info.size == len(data) and info.sha256 == sha
    assert got.sha256 == sha and out.read_bytes() == data
    head = s3.head("jobs/j1/chunk-0")
    assert head is not None and head.size == len(data) and head.sha256 == sha
    s3.delete("jobs/j1/chunk-0")
    assert s3.head("jobs/j1/chunk-0") is None
    with pytest.raises(ObjectNotFound):
        s3.get("jobs/j1/chunk-0", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()
    s3.delete("jobs/j1/chunk-0")  # idempotent


def test_put_leaves_callers_file_open(s3: S3Store) -> None:
    fh = io.BytesIO(b"prefix-" + b"payload")
    fh.seek(7)  # upload from the current position, as a file object is read
    info = s3.put("open/k", fh)
    assert not fh.closed
    assert info.size == len(b"payload")
    buf = io.BytesIO()
    s3.get("open/k", buf)
    assert buf.getvalue() == b"payload"


def test_multipart_upload_above_threshold(s3: S3Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as fh:
        for _ in range(12):
            fh.write(secrets.token_bytes(1 << 20))
    fh_size = src.stat().st_size
    info = s3.put("big/object", src)
    assert info.size == fh_size
    # A multipart ETag is "<md5 of part md5s>-<number of parts>".
    assert info.etag is not None and info.etag.endswith("-3")
    out = tmp_path / "back.bin"
    got = s3.get("big/object", out)
    assert got.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert out.stat().st_size == fh_size
    s3.delete("big/object")


def test_put_from_unseekable_stream_multipart(s3: S3Store) -> None:
    r, w = os.pipe()
    payload = secrets.token_bytes(6 << 20)  # above the 5 MiB threshold: two parts

    def feed() -> None:
        with os.fdopen(w, "wb") as fh:
            fh.write(payload)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as fh:
        info = s3.put("piped/object", fh)
    t.join()
    assert info.size == len(payload)
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    buf = io.BytesIO()
    assert s3.get("piped/object", buf).sha256 == info.sha256
    s3.delete("piped/object")


def test_presigned_put_then_get_round_trip(s3: S3Store) -> None:
    body = secrets.token_bytes(50_000)
    put_url = s3.presign_put("results/u1", 60, max_bytes=100_000)
    assert httpx.put(put_url, content=body).status_code == 200
    get_url = s3.presign_get("results/u1", 60)
    resp = httpx.get(get_url)
    assert resp.status_code == 200 and resp.content == body
    # S3 cannot bind a maximum size to a PUT URL: the store says so, callers check with head.
    assert s3.enforces_put_max_bytes is False
    assert s3.head("results/u1").size == len(body)


def test_exact_size_put_url_refuses_other_sizes(s3: S3Store) -> None:
    url = s3.presign_put_exact("exact/k", 60, size=10)
    assert httpx.put(url, content=b"x" * 11).status_code == 403
    assert s3.head("exact/k") is None
    assert httpx.put(url, content=b"x" * 10).status_code == 200
    assert s3.head("exact/k").size == 10


def test_tampered_presigned_urls_are_refused(s3: S3Store) -> None:
    s3.put("t/k", b"secret")
    url = s3.presign_get("t/k", 60)
    sig = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert httpx.get(with_query(url, **{"X-Amz-Signature": flipped})).status_code == 403
    assert httpx.get(with_query(url, **{"X-Amz-Expires": "604800"})).status_code == 403
    assert httpx.get(url.replace("/t/k?", "/t/k2?")).status_code == 403
    put_url = s3.presign_put("t/new", 60, max_bytes=100)
    r = httpx.put(with_query(put_url, **{"X-Amz-Signature": flipped}), content=b"evil")
    assert r.status_code == 403
    assert s3.head("t/new") is None


def test_wrong_method_is_refused(s3: S3Store) -> None:
    get_url = s3.presign_get("w/k", 60)
    assert httpx.put(get_url, content=b"evil").status_code == 403
    assert s3.head("w/k") is None
    s3.put("w/k", b"good")
    put_url = s3.presign_put("w/k", 60, max_bytes=100)
    assert httpx.get(put_url).status_code == 403
    assert httpx.delete(get_url).status_code == 403
    assert s3.head("w/k") is not None


def test_expired_presigned_urls_are_refused(s3: S3Store) -> None:
    s3.put("e/k", b"data")
    get_url = s3.presign_get("e/k", 1)
    put_url = s3.presign_put("e/new", 1, max_bytes=100)
    time.sleep(2.5)
    assert httpx.get(get_url).status_code == 403
    assert httpx.put(put_url, content=b"late").status_code == 403
    assert s3.head("e/new") is None


def test_other_secret_is_refused(seaweedfs: SeaweedS3, s3: S3Store) -> None:
    intruder = S3Store(access_key=seaweedfs.access_key, secret_key="not-the-secret",
                       bucket=s3.bucket, endpoint=seaweedfs.endpoint, region=seaweedfs.region,
                       create_bucket=False)
    with pytest.raises(AccessDenied) as exc:
        intruder.put("o/k", b"data")
    assert "\n" not in str(exc.value)
    assert s3.head("o/k") is None
    url = intruder.presign_get("o/k", 60)
    s3.put("o/k", b"data")
    assert httpx.get(url).status_code == 403


def test_metadata_hash_mismatch_is_detected(s3: S3Store, seaweedfs: SeaweedS3) -> None:
    # Someone overwrites the object through a presigned URL while the recorded hash stays:
    # simulate with a raw put carrying a wrong sha256 in metadata.
    s3._s3.put_object(Bucket=s3.bucket, Key="m/k", Body=b"tampered",
                      Metadata={"sha256": hashlib.sha256(b"original").hexdigest()})
    with pytest.raises(IntegrityError):
        s3.get("m/k", io.BytesIO())


def test_concurrent_puts_of_same_key(s3: S3Store) -> None:
    bodies = [bytes([i]) * 200_000 for i in range(6)]
    errors: list[BaseException] = []

    def upload(body: bytes) -> None:
        try:
            s3.put("race/k", body)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    buf = io.BytesIO()
    s3.get("race/k", buf)
    assert buf.getvalue() in bodies


def test_factory_builds_s3_store(seaweedfs: SeaweedS3, tmp_path: Path) -> None:
    settings = Settings(
        network="devnet", AWS_ACCESS_KEY_ID=seaweedfs.access_key,
        AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key, FEDSWARM_S3_ENDPOINT=seaweedfs.endpoint,
        FEDSWARM_S3_REGION=seaweedfs.region, FEDSWARM_S3_BUCKET="factory-bucket",
    )
    store = make_object_store(settings)
    assert isinstance(store, S3Store)
    store.put("f/k", b"via factory")
    assert store.head("f/k").size == len(b"via factory")


def test_factory_needs_keys_off_devnet(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        make_object_store(Settings(network="testnet", _env_file=None))


def test_get_of_an_oversized_peer_object_is_refused_before_download(s3: S3Store) -> None:
    from .test_bounded_get import oversized_update_is_refused

    # the presigned PUT signs only the host: a trainer can upload more than its unit allows
    oversized_update_is_refused(s3, "jobs/j/updates/u-oversized")
