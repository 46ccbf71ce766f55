"""Sealed job objects against a real devnet store: names, seal, and every opener refusing
what is not the object it was asked for."""

from __future__ import annotations

import io

import pytest
from nacl.public import PrivateKey

from fedswarm import crypto
from fedswarm.storage.base import validate_key
from fedswarm.storage.sealed import (
    JobObjects,
    SealedError,
    open_file,
    open_key_b64,
    open_stored,
    open_url,
    seal,
    seal_key_b64,
)

JOB = "job-0123456789ab"
SECRET = bytes(range(32))
DATA = bytes(range(256)) * 4000  # ~1 MB: several AES-GCM segments


def test_job_object_names_are_the_store_layout() -> None:
    objs = JobObjects(JOB)
    # Stored jobs use these exact keys: renaming one strands every job already in a store.
    assert objs.chunk("chunk-0003").key == f"jobs/{JOB}/chunks/chunk-0003.enc"
    assert objs.global_weights(2).key == f"jobs/{JOB}/global/2.enc"
    assert objs.update(2, 5).key == f"jobs/{JOB}/updates/2/5.enc"
    assert objs.result().key == f"jobs/{JOB}/result.safetensors.enc"
    assert objs.manifest_key == f"jobs/{JOB}/manifest.json"
    # The labels are what the ciphertext is bound to (trainers and client must agree).
    assert [objs.global_weights(2).label, objs.update(2, 5).label, objs.result().label] == [
        "global-2", "update-2-5", "result"]
    for obj in (objs.chunk("c-1"), objs.global_weights(0), objs.update(0, 1), objs.result()):
        validate_key(obj.key)
    assert objs.chunk("c-1").derive_key(SECRET) == crypto.derive_chunk_key(SECRET, JOB, "c-1")
    assert objs.global_weights(1).derive_key(SECRET) != objs.global_weights(2).derive_key(SECRET)


def test_chunk_key_round_trip_and_refusals(local_store) -> None:  # type: ignore[no-untyped-def]
    store = local_store.client
    g = JobObjects(JOB).global_weights(1)
    key = g.derive_key(SECRET)
    ref = seal(store, g, DATA, key=key)
    assert ref.key == g.key and ref.size == store.head(g.key).size > len(DATA)
    assert ref.to_dict() == {"key": g.key, "sha256": ref.sha256, "size": ref.size}
    assert open_stored(store, g, sha256=ref.sha256, max_bytes=ref.size, key=key) == DATA

    with pytest.raises(SealedError, match="sha256"):
        open_stored(store, g, sha256="0" * 64, max_bytes=ref.size, key=key)
    with pytest.raises(SealedError, match="larger"):
        open_stored(store, g, sha256=ref.sha256, max_bytes=ref.size - 1, key=key)
    with pytest.raises(SealedError, match="decrypt"):
        open_stored(store, g, sha256=ref.sha256, max_bytes=ref.size, key=bytes(32))
    # The same bytes under another object's name (a replayed round) do not open.
    other = JobObjects(JOB).global_weights(2)
    store.put(other.key, store_bytes(store, g.key))
    with pytest.raises(SealedError, match="decrypt"):
        open_stored(store, other, sha256=ref.sha256, max_bytes=ref.size, key=key)
    # Sealing again is randomised: a new hash (the client remembers the first one).
    assert seal(store, g, DATA, key=key).sha256 != ref.sha256
    with pytest.raises(ValueError):
        seal(store, g, DATA)


def test_box_sealed_update_opens_only_with_its_box_key(local_store) -> None:  # type: ignore[no-untyped-def]
    store = local_store.client
    client, stranger = PrivateKey.generate(), PrivateKey.generate()
    u = JobObjects(JOB).update(0, 3)
    ref = seal(store, u, b"update bytes", box_public=client.public_key)
    assert open_stored(store, u, sha256=ref.sha256, max_bytes=1 << 20, box_private=client) == b"update bytes"
    with pytest.raises(SealedError):
        open_stored(store, u, sha256=ref.sha256, max_bytes=1 << 20, box_private=stranger)
    with pytest.raises(ValueError):
        open_stored(store, u, sha256=ref.sha256, max_bytes=1 << 20)


def test_open_url_with_the_bounded_downloader(local_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = local_store.client
    g = JobObjects(JOB).global_weights(0)
    key = g.derive_key(SECRET)
    ref = seal(store, g, DATA, key=key)
    url = store.presign_get(g.key, 60)
    assert open_url(url, g, sha256=ref.sha256, size=ref.size, key=key) == DATA
    dest = tmp_path / "global.safetensors"
    assert open_url(url, g, sha256=ref.sha256, size=ref.size, key=key, dest=dest) is None
    assert dest.read_bytes() == DATA

    bad = tmp_path / "bad.safetensors"
    with pytest.raises(SealedError):
        open_url(url, g, sha256="f" * 64, size=ref.size, key=key, dest=bad)
    with pytest.raises(SealedError):
        open_url(url, g, sha256=ref.sha256, size=ref.size, key=bytes(32), dest=bad)
    with pytest.raises(SealedError):
        open_url(url, g, sha256=ref.sha256, size=ref.size - 1, key=key, dest=bad)
    assert not bad.exists()


def test_open_file_and_sealed_keys(local_store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = local_store.client
    trainer = PrivateKey.generate()
    c = JobObjects(JOB).chunk("chunk-0000")
    ckey = c.derive_key(SECRET)
    seal(store, c, DATA, key=ckey)
    cipher = tmp_path / "chunk.enc"
    store.get(c.key, cipher)

    carried = seal_key_b64(ckey, trainer.public_key)  # what a work unit carries
    opened = open_key_b64(carried, trainer)
    assert opened == ckey
    out = tmp_path / "chunk.safetensors"
    open_file(cipher, out, c, key=opened)
    assert out.read_bytes() == DATA

    wrong = tmp_path / "wrong.safetensors"
    with pytest.raises(SealedError, match="decrypt"):
        open_file(cipher, wrong, JobObjects(JOB).chunk("chunk-0001"), key=ckey)
    assert not wrong.exists()
    with pytest.raises(SealedError):
        open_key_b64(carried, PrivateKey.generate())
    with pytest.raises(SealedError, match="base64"):
        open_key_b64("not base64!", trainer)


def store_bytes(store, key: str) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    store.get(key, buf)
    return buf.getvalue()
