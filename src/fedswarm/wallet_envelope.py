"""The "fedswarm-wallet-v1" envelope: a job's result readable only by the user's wallet key.

A wallet user never hands the node a private key. The browser (or ``fedswarm job fetch
--wallet-key``) derives an X25519 key pair from a ``personal_sign`` signature over a fixed,
origin- and chain-bound message (:func:`result_key_message`, :func:`seed_from_signature`) and
sends the public half with the submission; the node seals the final weights to it with
:func:`seal_stream`. The format is simple enough for WebCrypto (X25519, HKDF-SHA256, AES-GCM).

Byte layout (all integers big-endian)::

    header  = "FSW1" (4) | ephemeral X25519 public (32) | segment_size u32 | plaintext_len u64
              (48 bytes)
    key     = HKDF-SHA256(ikm  = X25519(ephemeral_private, user_public),
                          salt = ephemeral_public || user_public,
                          info = "fedswarm-wallet-v1 " || job_id (UTF-8), L = 32)
    n       = max(1, ceil(plaintext_len / segment_size))   segments, i = 0 .. n-1
    segment = AES-256-GCM(key, nonce = 8 zero bytes || u32 i,
                          aad = header || u32 i || u8 last (1 on segment n-1, else 0))
              = ciphertext || tag (16); every segment holds segment_size plaintext bytes but the
              last, which holds the rest (an empty plaintext is one empty last segment).
    file    = header || segment_0 || ... || segment_{n-1}; nothing may follow.

The key is fresh for every envelope (a fresh ephemeral key), so the fixed nonce prefix is safe.
Reordering, dropping, truncating, appending or flipping any byte fails authentication:
:class:`EnvelopeError`. ``segment_size`` is 1 MiB by default and at most 16 MiB.

Key derivation from the wallet (identical in the browser and the CLI)::

    message   = result_key_message(origin, chain_id)     (personal_sign, EIP-191)
    signature = r || s || v (65 bytes; deterministic RFC 6979 in common wallets)
    seed      = HKDF-SHA256(ikm = r || s, salt = "fedswarm-result-key-v1", info = "x25519", L = 32)
    private   = X25519 private key with scalar bytes ``seed``; public = X25519(seed, 9)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENVELOPE = "fedswarm-wallet-v1"
MAGIC = b"FSW1"
_HEADER = struct.Struct(">4s32sIQ")
HEADER_SIZE = _HEADER.size  # 48
SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 16 << 20
TAG_SIZE = 16
SEED_SALT = b"fedswarm-result-key-v1"
SEED_INFO = b"x25519"
MAX_ORIGIN = 200


class EnvelopeError(ValueError):
    """The envelope is malformed, truncated, extended, for another key/job, or tampered with."""


def result_key_message(origin: str, chain_id: int) -> str:
    """The exact text the wallet signs to derive the result key (no trailing newline)."""
    if not origin or len(origin) > MAX_ORIGIN or "\n" in origin or "\r" in origin:
        raise ValueError("result key origin must be one line of at most 200 characters")
    return (
        "fedswarm result key\n"
        "Sign only on a fedswarm page you trust: this signature decrypts your trained models.\n"
        f"URI: {origin}\n"
        f"Chain ID: {int(chain_id)}\n"
        "Version: 1"
    )


def seed_from_signature(signature: bytes) -> bytes:
    """The 32-byte X25519 seed from a 65-byte personal_sign signature (r || s; v is dropped)."""
    if len(signature) != 65:
        raise ValueError("a wallet signature is 65 bytes (r || s || v)")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=SEED_SALT, info=SEED_INFO).derive(
        bytes(signature[:64])
    )


def seed_from_wallet_key(private_key: bytes | str, origin: str, chain_id: int) -> bytes:
    """Sign :func:`result_key_message` with an EVM private key (what the wallet would do) and
    return the X25519 seed: the CLI's ``--wallet-key`` and the tests use this."""
    from eth_account import Account  # web3's signer; imported here to keep import time low
    from eth_account.messages import encode_defunct

    signed = Account.sign_message(
        encode_defunct(text=result_key_message(origin, chain_id)), private_key=private_key
    )
    return seed_from_signature(bytes(signed.signature))


def public_from_seed(seed: bytes) -> bytes:
    """The 32-byte X25519 public key of ``seed``."""
    return _raw_public(X25519PrivateKey.from_private_bytes(seed).public_key())


def _raw_public(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key(shared: bytes, eph_pub: bytes, user_pub: bytes, job_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=eph_pub + user_pub,
        info=(ENVELOPE + " " + job_id).encode(),
    ).derive(shared)


def _nonce(i: int) -> bytes:
    return b"\x00" * 8 + struct.pack(">I", i)


def _aad(header: bytes, i: int, last: bool) -> bytes:
    return header + struct.pack(">IB", i, 1 if last else 0)


def segment_count(plaintext_len: int, segment_size: int) -> int:
    """How many segments a plaintext of ``plaintext_len`` bytes takes (at least one)."""
    return max(1, -(-plaintext_len // segment_size))


def sealed_size(plaintext_len: int, segment_size: int = SEGMENT_SIZE) -> int:
    """The envelope's total size for a plaintext of ``plaintext_len`` bytes."""
    return HEADER_SIZE + plaintext_len + TAG_SIZE * segment_count(plaintext_len, segment_size)


def _read_exact(src: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = src.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    plaintext_len: int,
    user_public: bytes,
    job_id: str,
    segment_size: int = SEGMENT_SIZE,
    ephemeral_seed: bytes | None = None,
) -> int:
    """Encrypt ``plaintext_len`` bytes of ``src`` to ``user_public`` into ``dst``; returns the
    bytes written. ``ephemeral_seed`` is for test vectors only (a fresh key otherwise)."""
    if len(user_public) != 32:
        raise ValueError("the user's result key is 32 bytes (X25519)")
    if not 0 < segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError("segment size out of range")
    eph = (
        X25519PrivateKey.from_private_bytes(ephemeral_seed)
        if ephemeral_seed is not None
        else X25519PrivateKey.generate()
    )
    eph_pub = _raw_public(eph.public_key())
    shared = eph.exchange(X25519PublicKey.from_public_bytes(user_public))
    aead = AESGCM(_key(shared, eph_pub, user_public, job_id))
    header = _HEADER.pack(MAGIC, eph_pub, segment_size, plaintext_len)
    dst.write(header)
    written = len(header)
    n = segment_count(plaintext_len, segment_size)
    left = plaintext_len
    for i in range(n):
        take = min(segment_size, left)
        data = _read_exact(src, take)
        if len(data) != take:
            raise ValueError("the plaintext is shorter than announced")
        left -= take
        seg = aead.encrypt(_nonce(i), data, _aad(header, i, i == n - 1))
        dst.write(seg)
        written += len(seg)
    return written


def seal_bytes(
    data: bytes,
    user_public: bytes,
    job_id: str,
    segment_size: int = SEGMENT_SIZE,
    ephemeral_seed: bytes | None = None,
) -> bytes:
    """:func:`seal_stream` for bytes in memory."""
    import io

    out = io.BytesIO()
    seal_stream(io.BytesIO(data), out, len(data), user_public, job_id, segment_size, ephemeral_seed)
    return out.getvalue()


def parse_header(header: bytes) -> tuple[bytes, int, int]:
    """(ephemeral public, segment size, plaintext length) of a 48-byte header, checked."""
    if len(header) != HEADER_SIZE:
        raise EnvelopeError("not a fedswarm-wallet-v1 envelope: it is shorter than its header")
    magic, eph_pub, seg, plen = _HEADER.unpack(header)
    if magic != MAGIC:
        raise EnvelopeError("not a fedswarm-wallet-v1 envelope (bad magic)")
    if not 0 < seg <= MAX_SEGMENT_SIZE:
        raise EnvelopeError("fedswarm-wallet-v1 envelope with an impossible segment size")
    return eph_pub, seg, plen


def open_iter(src: BinaryIO, seed: bytes, job_id: str) -> Iterator[bytes]:
    """Decrypt an envelope from ``src`` with the user's X25519 ``seed``, yielding plaintext
    segment by segment (memory bounded by one segment). Raises :class:`EnvelopeError` on any
    mismatch, including trailing bytes; a caller must discard output if it raises."""
    header = _read_exact(src, HEADER_SIZE)
    eph_pub, seg, plen = parse_header(header)
    priv = X25519PrivateKey.from_private_bytes(seed)
    user_pub = _raw_public(priv.public_key())
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError as exc:  # an all-zero shared secret (a low-order point)
        raise EnvelopeError("fedswarm-wallet-v1 envelope with an invalid ephemeral key") from exc
    aead = AESGCM(_key(shared, eph_pub, user_pub, job_id))
    n = segment_count(plen, seg)
    left = plen
    for i in range(n):
        take = min(seg, left)
        block = _read_exact(src, take + TAG_SIZE)
        if len(block) != take + TAG_SIZE:
            raise EnvelopeError("fedswarm-wallet-v1 envelope is truncated")
        try:
            yield aead.decrypt(_nonce(i), block, _aad(header, i, i == n - 1))
        except InvalidTag as exc:
            raise EnvelopeError(
                "fedswarm-wallet-v1 envelope does not open with this key (wrong wallet key, "
                "origin or chain, or the file was altered)"
            ) from exc
        left -= take
    if src.read(1):
        raise EnvelopeError("fedswarm-wallet-v1 envelope has bytes after its last segment")


def open_stream(src: BinaryIO, dst: BinaryIO, seed: bytes, job_id: str) -> int:
    """Decrypt ``src`` into ``dst``; returns the plaintext length."""
    total = 0
    for piece in open_iter(src, seed, job_id):
        dst.write(piece)
        total += len(piece)
    return total


def open_bytes(data: bytes, seed: bytes, job_id: str) -> bytes:
    """:func:`open_iter` for bytes in memory."""
    import io

    return b"".join(open_iter(io.BytesIO(data), seed, job_id))
