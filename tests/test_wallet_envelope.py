"""The fedswarm-wallet-v1 envelope: the committed vector (the browser decrypts the same bytes),
tampering and truncation, and the wallet-signature key derivation."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from fedswarm import wallet_envelope as we

VECTOR = json.loads((Path(__file__).parent / "fixtures" / "wallet_envelope_vector.json").read_text())


def test_vector_derivation_and_open() -> None:
    v = VECTOR
    seed = we.seed_from_wallet_key(v["wallet_private_key"], v["origin"], v["chain_id"])
    assert seed.hex() == v["seed"]
    assert we.seed_from_signature(bytes.fromhex(v["signature"][2:])) == seed
    assert we.result_key_message(v["origin"], v["chain_id"]) == v["message"]
    assert we.public_from_seed(seed).hex() == v["public"]
    ct = bytes.fromhex(v["ciphertext"])
    assert hashlib.sha256(ct).hexdigest() == v["sha256"]
    plain = we.open_bytes(ct, seed, v["job_id"])
    assert plain.hex() == v["plaintext"]
    assert hashlib.sha256(plain).hexdigest() == v["plain_sha256"]
    # Re-sealing with the vector's ephemeral seed reproduces the vector byte for byte.
    again = we.seal_bytes(plain, bytes.fromhex(v["public"]), v["job_id"], v["segment_size"],
                          bytes.fromhex(v["ephemeral_seed"]))
    assert again == ct
    assert len(ct) == we.sealed_size(len(plain), v["segment_size"])
    assert ct[:4] == b"FSW1" and ct[4:36].hex() == v["ephemeral_public"]


def test_round_trips_and_sizes() -> None:
    seed = bytes(range(1, 33))
    pub = we.public_from_seed(seed)
    for size in (0, 1, 31, 32, 33, 64, 1000):
        data = bytes(i % 251 for i in range(size))
        ct = we.seal_bytes(data, pub, "j", 32)
        assert len(ct) == we.sealed_size(size, 32)
        assert we.open_bytes(ct, seed, "j") == data
    # Streaming with the default segment size and a file-like source.
    data = b"x" * ((1 << 20) + 5)
    out = io.BytesIO()
    we.seal_stream(io.BytesIO(data), out, len(data), pub, "j")
    dst = io.BytesIO()
    assert we.open_stream(io.BytesIO(out.getvalue()), dst, seed, "j") == len(data)
    assert dst.getvalue() == data


def test_tamper_truncate_extend_wrong_key_fail() -> None:
    v = VECTOR
    seed = bytes.fromhex(v["seed"])
    ct = bytes.fromhex(v["ciphertext"])
    job = v["job_id"]
    for pos in (0, 5, 40, 44, we.HEADER_SIZE + 3, len(ct) - 1):
        bad = bytearray(ct)
        bad[pos] ^= 1
        with pytest.raises(we.EnvelopeError):
            we.open_bytes(bytes(bad), seed, job)
    for cut in (10, we.HEADER_SIZE, we.HEADER_SIZE + 48, len(ct) - 1):
        with pytest.raises(we.EnvelopeError):
            we.open_bytes(ct[:cut], seed, job)
    with pytest.raises(we.EnvelopeError):
        we.open_bytes(ct + b"\0", seed, job)
    with pytest.raises(we.EnvelopeError):
        we.open_bytes(ct, bytes(32), job)
    with pytest.raises(we.EnvelopeError):
        we.open_bytes(ct, seed, job + "x")
    # Another origin or chain derives another key.
    other = we.seed_from_wallet_key(v["wallet_private_key"], v["origin"], v["chain_id"] + 1)
    assert other != seed
    with pytest.raises(ValueError):
        we.result_key_message("http://a\nURI: http://b", 1)
