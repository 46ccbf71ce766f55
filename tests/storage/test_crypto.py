"""Segmented AES-256-GCM: round trips at segment boundaries and every tampering case."""

from __future__ import annotations

import io
import os
import struct

import pytest
from nacl.public import PrivateKey

from fedswarm import crypto as c

MiB = 1 << 20
JOB, CHUNK = "job-1", "chunk-00000"


@pytest.fixture(scope="module")
def key() -> bytes:
    return c.derive_chunk_key(c.new_job_secret(), JOB, CHUNK)


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB])
def test_round_trip_bytes_and_streams(key: bytes, size: int) -> None:
    data = os.urandom(size)
    blob = c.encrypt_bytes(data, key, JOB, CHUNK)
    assert len(blob) == c.ciphertext_size(size)
    assert bytes(c.decrypt_bytes(blob, key, JOB, CHUNK)) == data
    # Stream API, fed in odd-sized pieces (as the network delivers them).
    dec = c.SegmentDecryptor(JOB, CHUNK, key=key)
    out = b"".join(dec.update(blob[i : i + 7777]) for i in range(0, len(blob), 7777))
    assert out + dec.finalize() == data
    dst = io.BytesIO()
    c.encrypt_stream(io.BytesIO(data), dst, key, JOB, CHUNK)
    back = io.BytesIO()
    assert c.decrypt_stream(io.BytesIO(dst.getvalue()), back, JOB, CHUNK, key=key) == size
    assert back.getvalue() == data


def test_round_trip_100_mib(key: bytes, tmp_path) -> None:
    data = os.urandom(100 * MiB)
    src, enc, dec = tmp_path / "p", tmp_path / "e", tmp_path / "d"
    src.write_bytes(data)
    with open(src, "rb") as a, open(enc, "wb") as b:
        c.encrypt_stream(a, b, key, JOB, CHUNK)
    assert enc.stat().st_size == c.ciphertext_size(len(data))
    with open(enc, "rb") as a, open(dec, "wb") as b:
        c.decrypt_stream(a, b, JOB, CHUNK, key=key)
    assert c.sha256_file(dec) == c.sha256_bytes(data)


def _segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[c.HEADER_SIZE :]
    step = c.SEGMENT_SIZE + c.TAG_SIZE
    return blob[: c.HEADER_SIZE], [body[i : i + step] for i in range(0, len(body), step)]


def _rejects(blob: bytes, key: bytes, job: str = JOB, chunk: str = CHUNK) -> str:
    with pytest.raises(c.DecryptionError) as err:
        c.decrypt_bytes(blob, key, job, chunk)
    dec = c.SegmentDecryptor(job, chunk, key=key)
    with pytest.raises(c.DecryptionError):
        dec.update(blob)
        dec.finalize()
    return str(err.value)


def test_tampering_is_detected(key: bytes) -> None:
    data = os.urandom(3 * MiB + 5)
    blob = c.encrypt_bytes(data, key, JOB, CHUNK)
    header, segs = _segments(blob)
    assert len(segs) == 4
    # Truncation at a segment boundary: the new final segment was not encrypted as "last".
    assert "truncated" in _rejects(header + b"".join(segs[:3]), key)
    # Truncation inside a segment and a missing body.
    _rejects(blob[:-1], key)
    _rejects(header, key)
    _rejects(blob[:10], key)
    # Reordering, dropping a middle segment, duplicating one, appending one.
    _rejects(header + segs[1] + segs[0] + segs[2] + segs[3], key)
    _rejects(header + segs[0] + segs[2] + segs[3], key)
    _rejects(header + segs[0] + segs[0] + segs[1] + segs[2] + segs[3], key)
    _rejects(blob + segs[0], key)
    # Bit flips in header, body and tag.
    for pos in (5, 12, c.HEADER_SIZE + 100, len(blob) // 2, len(blob) - 1):
        flipped = bytearray(blob)
        flipped[pos] ^= 0x01
        _rejects(bytes(flipped), key)
    # Same key but other job or chunk id in the associated data.
    _rejects(blob, key, chunk="chunk-00001")
    _rejects(blob, key, job="job-2")


def test_segment_swap_between_chunks() -> None:
    secret = c.new_job_secret()
    k0, k1 = (c.derive_chunk_key(secret, JOB, f"chunk-{i}") for i in (0, 1))
    assert k0 != k1
    b0 = c.encrypt_bytes(os.urandom(2 * MiB + 1), k0, JOB, "chunk-0")
    b1 = c.encrypt_bytes(os.urandom(2 * MiB + 1), k1, JOB, "chunk-1")
    h0, s0 = _segments(b0)
    _, s1 = _segments(b1)
    _rejects(h0 + s1[0] + s0[1] + s0[2], k0, chunk="chunk-0")
    # Even with the same key (a misuse), the chunk id in the associated data catches the swap.
    b1_same = c.encrypt_bytes(os.urandom(2 * MiB + 1), k0, JOB, "chunk-1")
    _, s1s = _segments(b1_same)
    _rejects(h0 + s1s[0] + s0[1] + s0[2], k0, chunk="chunk-0")


def test_bad_headers(key: bytes) -> None:
    blob = c.encrypt_bytes(b"hello", key, JOB, CHUNK)
    assert "magic" in _rejects(b"XXXX" + blob[4:], key)
    assert "version" in _rejects(blob[:4] + b"\x09" + blob[5:], key)
    huge = blob[:6] + struct.pack(">I", 1 << 30) + blob[10:]
    assert "segment size" in _rejects(huge, key)
    with pytest.raises(c.CryptoKeyError):
        c.encrypt_bytes(b"x", b"short", JOB, CHUNK)


def test_sealed_keys_and_results_to_box() -> None:
    client, other = PrivateKey.generate(), PrivateKey.generate()
    key = os.urandom(32)
    sealed = c.seal_key(key, bytes(client.public_key).hex())
    assert len(sealed) == c.SEALED_KEY_SIZE
    assert c.open_sealed(sealed, client) == key
    with pytest.raises(c.CryptoKeyError):
        c.open_sealed(sealed, other)
    result = os.urandom(MiB + 3)
    blob = c.encrypt_to_box(result, client.public_key, JOB, "result-r1-t1")
    assert bytes(c.decrypt_from_box(blob, client, JOB, "result-r1-t1")) == result
    with pytest.raises(c.DecryptionError):
        c.decrypt_from_box(blob, other, JOB, "result-r1-t1")
    with pytest.raises(c.DecryptionError):
        c.decrypt_from_box(blob, client, JOB, "result-r1-t2")
    tampered = bytearray(blob)
    tampered[c.HEADER_SIZE + 10] ^= 1  # inside the sealed key
    with pytest.raises(c.DecryptionError):
        c.decrypt_from_box(bytes(tampered), client, JOB, "result-r1-t1")
    # A sealed-mode object cannot be opened as a plain chunk and vice versa.
    with pytest.raises(c.DecryptionError):
        c.decrypt_bytes(blob, key, JOB, "result-r1-t1")
    dst = io.BytesIO()
    c.encrypt_to_box_stream(io.BytesIO(result), dst, client.public_key, JOB, "r")
    back = io.BytesIO()
    c.decrypt_stream(io.BytesIO(dst.getvalue()), back, JOB, "r", box_private=client)
    assert back.getvalue() == result


def test_key_derivation_is_bound_to_ids() -> None:
    s = c.new_job_secret()
    assert c.derive_chunk_key(s, "a", "bc") != c.derive_chunk_key(s, "ab", "c")
    assert c.derive_chunk_key(s, "a", "b") == c.derive_chunk_key(s, "a", "b")
    assert c.derive_chunk_key(s, "a", "b") != c.derive_chunk_key(c.new_job_secret(), "a", "b")
