"""Segmented AES-256-GCM for dataset chunks and trainer results, plus key handling.

Format (all integers big-endian)::

    header  = MAGIC(4) "FSWE" | version(1) = 1 | mode(1) | segment_size(4) | nonce_prefix(7)
              [mode 1 only: sealed_len(2) | sealed content key (SealedBox, 80 bytes)]
    body    = segment_0 | segment_1 | ... | segment_last
    segment = AES-GCM(ciphertext of <= segment_size plaintext bytes) | tag(16)

- ``mode 0`` (chunks): the key is given by the caller, normally :func:`derive_chunk_key` of the
  job secret; the client seals each chunk key to the assigned trainer with :func:`seal_key`.
- ``mode 1`` (results): a fresh random content key is sealed to the recipient's X25519 box key
  and carried in the header, so a trainer can encrypt to the client knowing only its public key
  (:func:`encrypt_to_box` / :func:`decrypt_from_box`).

Every segment has a full-size plaintext except the last one, which may be short or empty (an
empty plaintext is one empty last segment). The nonce is ``prefix(7) | index(4) | last(1)``, and
the associated data binds the whole header, the job id, the chunk id and again the index and
last flag. So reordering or dropping segments (the index no longer matches), truncation at a
segment boundary (no segment decrypts as *last*), appending, moving a segment to another chunk
(other key and associated data) and any bit flip all fail authentication: :class:`DecryptionError`.

Streaming is push-based (:class:`SegmentEncryptor` / :class:`SegmentDecryptor` take arbitrary
pieces and return whole segments), so the downloader can decrypt while bytes arrive, with memory
bounded by about two segments whatever the object size.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

MAGIC = b"FSWE"
VERSION = 1
MODE_KEY = 0
MODE_SEALED = 1
SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 16 << 20  # refuse headers that would make us buffer more than this
TAG_SIZE = 16
KEY_SIZE = 32
NONCE_PREFIX_SIZE = 7
_FIXED = struct.Struct(">4sBBI7s")
HEADER_SIZE = _FIXED.size  # 17 bytes for mode 0
SEALED_KEY_SIZE = KEY_SIZE + 48  # SealedBox: ephemeral public key (32) + MAC (16)
MAX_SEGMENTS = 1 << 32


class DecryptionError(ValueError):
    """Ciphertext is malformed, truncated, reordered, from another chunk, or tampered with."""


class CryptoKeyError(ValueError):
    """A key has the wrong size or a sealed key cannot be opened with this box key."""


# ---------------------------------------------------------------------------------- keys


def new_job_secret() -> bytes:
    """A fresh 32-byte per-job secret; chunk keys are derived from it."""
    return os.urandom(KEY_SIZE)


def _lp(data: bytes) -> bytes:
    """Length-prefixed field, so ("ab", "c") and ("a", "bc") never encode the same."""
    return struct.pack(">I", len(data)) + data


def derive_chunk_key(job_secret: bytes, job_id: str, chunk_id: str) -> bytes:
    """HKDF-SHA256 of the job secret into the 32-byte key of one chunk (info binds both ids)."""
    if len(job_secret) < KEY_SIZE:
        raise CryptoKeyError(f"job secret must be at least {KEY_SIZE} bytes, got {len(job_secret)}")
    info = b"fedswarm/chunk-key/v1" + _lp(job_id.encode()) + _lp(chunk_id.encode())
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(
        job_secret
    )


def _box_public(key: PublicKey | bytes | str) -> PublicKey:
    if isinstance(key, PublicKey):
        return key
    raw = bytes.fromhex(key) if isinstance(key, str) else key
    if len(raw) != 32:
        raise CryptoKeyError(f"box public key must be 32 bytes, got {len(raw)}")
    return PublicKey(raw)


def seal_key(key: bytes, box_public: PublicKey | bytes | str) -> bytes:
    """Seal a symmetric key to a recipient's X25519 box public key (80 bytes out)."""
    if len(key) != KEY_SIZE:
        raise CryptoKeyError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    return SealedBox(_box_public(box_public)).encrypt(key)


def open_sealed(sealed: bytes, box_private: PrivateKey) -> bytes:
    """Open a key sealed with :func:`seal_key`; :class:`CryptoKeyError` if not ours or tampered."""
    try:
        key = SealedBox(box_private).decrypt(bytes(sealed))
    except CryptoError:
        raise CryptoKeyError("sealed key cannot be opened with this box key (not ours, or tampered)") from None
    if len(key) != KEY_SIZE:
        raise CryptoKeyError(f"sealed key has {len(key)} bytes, expected {KEY_SIZE}")
    return key


# ------------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while buf := fh.read(block):
            h.update(buf)
    return h.hexdigest()


# ------------------------------------------------------------------------------ segments


def _base_ad(header: bytes, job_id: str, chunk_id: str) -> bytes:
    return b"fedswarm/seg/v1" + _lp(header) + _lp(job_id.encode()) + _lp(chunk_id.encode())


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise CryptoKeyError(f"key must be {KEY_SIZE} bytes (AES-256), got {len(key)}")


def ciphertext_size(plaintext_size: int, segment_size: int = SEGMENT_SIZE, sealed: bool = False) -> int:
    """Exact ciphertext size for a plaintext of ``plaintext_size`` bytes."""
    segments = max(1, -(-plaintext_size // segment_size))
    header = HEADER_SIZE + (2 + SEALED_KEY_SIZE if sealed else 0)
    return header + plaintext_size + segments * TAG_SIZE


class _Segmenter:
    """Cuts a byte stream into segments, holding back the latest full one (it may be the last).

    Input pieces are kept by reference when immutable (``bytes`` and read-only views), so
    segment-aligned input is never copied: copying 1 MiB costs more than encrypting it.
    """

    def __init__(self, seg: int) -> None:
        self.seg = seg
        self.parts: list[memoryview] = []
        self.held = 0

    def feed(self, data: bytes | bytearray | memoryview, fn: Callable[[Any, bool], bytes]) -> list[bytes]:
        mv = memoryview(data)
        if not mv.readonly:
            mv = memoryview(bytes(mv))  # the caller may reuse a mutable buffer
        out: list[bytes] = []
        pos, seg = 0, self.seg
        # Emit a segment only when strictly more than one segment is available.
        while self.held + len(mv) - pos > seg:
            take = seg - self.held
            if not self.parts:
                piece: Any = mv[pos : pos + take]
            elif take == 0 and len(self.parts) == 1:
                piece = self.parts[0]  # aligned input: the held piece is a whole segment
            else:
                piece = b"".join([*self.parts, mv[pos : pos + take]])
            out.append(fn(piece, False))
            self.parts, self.held = [], 0
            pos += take
        if pos < len(mv):
            self.parts.append(mv[pos:])
            self.held += len(mv) - pos
        return out

    def rest(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.held = [], 0
        return data


class SegmentEncryptor:
    """Push-style encryptor: ``header`` first, then ``update()`` pieces, then ``finalize()``.

    ``update`` returns the complete segments it could emit; a full segment is held back until
    more data arrives, because only then do we know it is not the last one.
    """

    def __init__(
        self,
        key: bytes,
        job_id: str,
        chunk_id: str,
        *,
        segment_size: int = SEGMENT_SIZE,
        sealed_key: bytes | None = None,
    ) -> None:
        _check_key(key)
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment size must be 1..{MAX_SEGMENT_SIZE}")
        self._aead = AESGCM(key)
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        mode = MODE_KEY if sealed_key is None else MODE_SEALED
        header = _FIXED.pack(MAGIC, VERSION, mode, segment_size, self._prefix)
        if sealed_key is not None:
            header += struct.pack(">H", len(sealed_key)) + sealed_key
        self.header = header
        self._ad = _base_ad(header, job_id, chunk_id)
        self._seg = segment_size
        self._cut = _Segmenter(segment_size)
        self._index = 0
        self._done = False

    def _seal(self, data: bytes | memoryview, last: bool) -> bytes:
        if self._index >= MAX_SEGMENTS:
            raise ValueError("too many segments for one object")
        tail = struct.pack(">IB", self._index, 1 if last else 0)
        self._index += 1
        return self._aead.encrypt(self._prefix + tail, data, self._ad + tail)

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add plaintext; returns ciphertext of the segments now known not to be last."""
        if self._done:
            raise ValueError("encryptor already finalised")
        out = self._cut.feed(data, self._seal)
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> bytes:
        """Encrypt the held-back data as the last segment (possibly empty)."""
        if self._done:
            raise ValueError("encryptor already finalised")
        self._done = True
        return self._seal(self._cut.rest(), True)


def parse_header(data: bytes) -> tuple[int, int, bytes, bytes | None, int] | None:
    """Parse a header prefix: ``(mode, segment_size, prefix, sealed_key, header_len)``.

    Returns ``None`` if more bytes are needed; raises :class:`DecryptionError` if malformed.
    """
    if len(data) < HEADER_SIZE:
        return None
    magic, version, mode, seg, prefix = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise DecryptionError("not a fedswarm encrypted object (bad magic)")
    if version != VERSION:
        raise DecryptionError(f"unsupported encryption format version {version}")
    if not 1 <= seg <= MAX_SEGMENT_SIZE:
        raise DecryptionError(f"segment size {seg} in header is out of range")
    if mode == MODE_KEY:
        return mode, seg, prefix, None, HEADER_SIZE
    if mode != MODE_SEALED:
        raise DecryptionError(f"unknown encryption mode {mode}")
    if len(data) < HEADER_SIZE + 2:
        return None
    (n,) = struct.unpack_from(">H", data, HEADER_SIZE)
    if n != SEALED_KEY_SIZE:
        raise DecryptionError(f"sealed key length {n} in header is invalid")
    end = HEADER_SIZE + 2 + n
    if len(data) < end:
        return None
    return mode, seg, prefix, bytes(data[HEADER_SIZE + 2 : end]), end


class SegmentDecryptor:
    """Push-style decryptor mirroring :class:`SegmentEncryptor`.

    Give it either ``key`` (mode 0) or ``box_private`` (mode 1, key sealed in the header).
    ``update`` returns plaintext as soon as a segment is known not to be the last;
    ``finalize`` authenticates the last segment and raises if the stream was cut short.
    """

    def __init__(
        self,
        job_id: str,
        chunk_id: str,
        *,
        key: bytes | None = None,
        box_private: PrivateKey | None = None,
    ) -> None:
        if (key is None) == (box_private is None):
            raise ValueError("give exactly one of key or box_private")
        if key is not None:
            _check_key(key)
        self._key = key
        self._box = box_private
        self._job_id = job_id
        self._chunk_id = chunk_id
        self._buf = bytearray()
        self._aead: AESGCM | None = None
        self._index = 0
        self._done = False
        self.plaintext_bytes = 0

    def _start(self) -> bool:
        parsed = parse_header(self._buf)
        if parsed is None:
            return False
        mode, seg, prefix, sealed, hlen = parsed
        header = bytes(self._buf[:hlen])
        if mode == MODE_KEY:
            if self._key is None:
                raise DecryptionError("object carries a sealed key but no box key was given")
            key = self._key
        else:
            if self._box is None:
                raise DecryptionError("object needs a chunk key but only a box key was given")
            try:
                key = open_sealed(sealed or b"", self._box)
            except CryptoKeyError as exc:
                raise DecryptionError(str(exc)) from None
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._seg = seg + TAG_SIZE
        self._ad = _base_ad(header, self._job_id, self._chunk_id)
        self._cut = _Segmenter(self._seg)
        del self._buf[:hlen]
        return True

    def _open(self, data: bytes | memoryview, last: bool) -> bytes:
        assert self._aead is not None
        tail = struct.pack(">IB", self._index, 1 if last else 0)
        try:
            out = self._aead.decrypt(self._prefix + tail, data, self._ad + tail)
        except InvalidTag:
            what = "last segment" if last else "segment"
            raise DecryptionError(
                f"{what} {self._index} failed authentication: data truncated, reordered, "
                "from another chunk, or tampered with"
            ) from None
        self._index += 1
        self.plaintext_bytes += len(out)
        return out

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add ciphertext; returns the plaintext of segments that are complete and not last."""
        if self._done:
            raise ValueError("decryptor already finalised")
        if self._aead is None:
            self._buf += data
            if not self._start():
                return b""
            data, self._buf = bytes(self._buf), bytearray()
        out = self._cut.feed(data, self._open)
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> bytes:
        """Authenticate the last segment; raises :class:`DecryptionError` if anything is missing."""
        if self._done:
            raise ValueError("decryptor already finalised")
        self._done = True
        if self._aead is None:
            raise DecryptionError("encrypted object is truncated: header incomplete")
        rest = self._cut.rest()
        if len(rest) < TAG_SIZE:
            raise DecryptionError("encrypted object is truncated: last segment missing")
        return self._open(rest, True)


# --------------------------------------------------------------------- file and bytes API


def _pump(src: BinaryIO, dst: BinaryIO, engine: SegmentEncryptor | SegmentDecryptor, block: int) -> int:
    written = 0
    while buf := src.read(block):
        out = engine.update(buf)
        if out:
            dst.write(out)
            written += len(out)
    out = engine.finalize()
    dst.write(out)
    return written + len(out)


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    job_id: str,
    chunk_id: str,
    *,
    segment_size: int = SEGMENT_SIZE,
) -> int:
    """Encrypt file object ``src`` into ``dst`` (constant memory); returns bytes written."""
    enc = SegmentEncryptor(key, job_id, chunk_id, segment_size=segment_size)
    dst.write(enc.header)
    return len(enc.header) + _pump(src, dst, enc, segment_size)


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    job_id: str,
    chunk_id: str,
    *,
    key: bytes | None = None,
    box_private: PrivateKey | None = None,
) -> int:
    """Decrypt ``src`` into ``dst``; returns plaintext bytes. Raises :class:`DecryptionError`.

    Plaintext is written before the last tag is checked (that is what streaming means): on an
    error the caller must discard what was written to ``dst``.
    """
    dec = SegmentDecryptor(job_id, chunk_id, key=key, box_private=box_private)
    return _pump(src, dst, dec, SEGMENT_SIZE + TAG_SIZE)


def encrypt_to_box_stream(
    src: BinaryIO,
    dst: BinaryIO,
    box_public: PublicKey | bytes | str,
    job_id: str,
    chunk_id: str,
    *,
    segment_size: int = SEGMENT_SIZE,
) -> int:
    """Encrypt to a recipient's box key: random content key sealed into the header (mode 1)."""
    key = os.urandom(KEY_SIZE)
    enc = SegmentEncryptor(
        key, job_id, chunk_id, segment_size=segment_size, sealed_key=seal_key(key, box_public)
    )
    dst.write(enc.header)
    return len(enc.header) + _pump(src, dst, enc, segment_size)


def _encrypt_bytes(enc: SegmentEncryptor, data: bytes) -> bytes:
    # One preallocated output filled with encrypt_into: joining per-segment outputs of a large
    # object costs more than the encryption (page faults of a second big allocation).
    n = len(data)
    seg = enc._seg
    count = max(1, -(-n // seg))
    out = bytearray(len(enc.header) + n + count * TAG_SIZE)
    out[: len(enc.header)] = enc.header
    src, dst = memoryview(data), memoryview(out)
    pos, opos = 0, len(enc.header)
    for i in range(count):
        piece = src[pos : pos + seg]
        tail = struct.pack(">IB", i, 1 if i == count - 1 else 0)
        enc._aead.encrypt_into(enc._prefix + tail, piece, enc._ad + tail, dst[opos : opos + len(piece) + TAG_SIZE])
        pos += len(piece)
        opos += len(piece) + TAG_SIZE
    enc._done = True
    return bytes(out) if len(out) < (1 << 20) else out  # type: ignore[return-value]


def _decrypt_bytes(dec: SegmentDecryptor, data: bytes) -> bytes:
    mv = memoryview(data)
    parsed = parse_header(mv)
    if parsed is None:
        raise DecryptionError("encrypted object is truncated: header incomplete")
    hlen = parsed[-1]
    dec._buf = bytearray(mv[:hlen])
    dec._start()
    body = mv[hlen:]
    seg = dec._seg
    full = body
    n = len(full)
    if n < TAG_SIZE:
        raise DecryptionError("encrypted object is truncated: last segment missing")
    count = max(1, -(-n // seg))
    out = bytearray(n - count * TAG_SIZE) if n - (count - 1) * seg >= TAG_SIZE else None
    if out is None:
        raise DecryptionError("encrypted object is truncated: last segment shorter than a tag")
    src, dst = memoryview(full), memoryview(out)
    pos = opos = 0
    assert dec._aead is not None
    for i in range(count):
        piece = src[pos : pos + seg]
        last = i == count - 1
        tail = struct.pack(">IB", i, 1 if last else 0)
        try:
            dec._aead.decrypt_into(dec._prefix + tail, piece, dec._ad + tail, dst[opos : opos + len(piece) - TAG_SIZE])
        except InvalidTag:
            raise DecryptionError(
                f"{'last segment' if last else 'segment'} {i} failed authentication: data "
                "truncated, reordered, from another chunk, or tampered with"
            ) from None
        pos += len(piece)
        opos += len(piece) - TAG_SIZE
    dec._done = True
    return bytes(out) if len(out) < (1 << 20) else out  # type: ignore[return-value]


def encrypt_bytes(
    data: bytes, key: bytes, job_id: str, chunk_id: str, *, segment_size: int = SEGMENT_SIZE
) -> bytes:
    """Encrypt ``data`` with a chunk key (mode 0). Large results come back as a ``bytearray``
    (bytes-like; avoids copying the whole object once more)."""
    return _encrypt_bytes(SegmentEncryptor(key, job_id, chunk_id, segment_size=segment_size), data)


def decrypt_bytes(data: bytes, key: bytes, job_id: str, chunk_id: str) -> bytes:
    """Decrypt bytes made by :func:`encrypt_bytes`; raises :class:`DecryptionError`."""
    return _decrypt_bytes(SegmentDecryptor(job_id, chunk_id, key=key), data)


def encrypt_to_box(
    data: bytes, box_public: PublicKey | bytes | str, job_id: str, chunk_id: str
) -> bytes:
    """Encrypt ``data`` (e.g. a trainer's result) so only the holder of the box key can read it."""
    key = os.urandom(KEY_SIZE)
    enc = SegmentEncryptor(key, job_id, chunk_id, sealed_key=seal_key(key, box_public))
    return _encrypt_bytes(enc, data)


def decrypt_from_box(data: bytes, box_private: PrivateKey, job_id: str, chunk_id: str) -> bytes:
    """Decrypt bytes made by :func:`encrypt_to_box`; raises :class:`DecryptionError`."""
    return _decrypt_bytes(SegmentDecryptor(job_id, chunk_id, box_private=box_private), data)


def iter_encrypt(
    chunks: Iterator[bytes], key: bytes, job_id: str, chunk_id: str
) -> Iterator[bytes]:
    """Encrypt an iterator of plaintext pieces lazily (header first); for streaming uploads."""
    enc = SegmentEncryptor(key, job_id, chunk_id)
    yield enc.header
    for piece in chunks:
        out = enc.update(piece)
        if out:
            yield out
    yield enc.finalize()
