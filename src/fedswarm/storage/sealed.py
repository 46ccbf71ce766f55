"""Sealed job objects: where a job's encrypted objects live in the store, and the one way to
seal (encrypt, then put) and open (fetch, check the hash, decrypt) them.

A job's objects live under ``jobs/<job id>/``::

    chunks/<chunk id>.enc          training data, one per chunk      (chunk key)
    global/<round>.enc             the global weights of a round     (chunk key)
    updates/<round>/<unit>.enc     a trainer's update                (sealed to the client)
    result.safetensors.enc         the final weights                 (sealed to the user)
    manifest.json                  the signed manifest (signed, not encrypted)

Every ciphertext is bound by its associated data to ``(job id, label)`` (see
:mod:`fedswarm.crypto`): the label (``chunk-0003``, ``global-2``, ``update-2-5``, ``result``)
is part of the object's name here, so a ciphertext moved to another name or job does not
decrypt. Two kinds of key open an object: a symmetric *chunk key* derived from the job secret
with the label (:meth:`SealedObject.derive_key`; the client hands it to each trainer sealed to
the trainer's box key, :func:`seal_key_b64` / :func:`open_key_b64`), or a *box key* (the
object was sealed to a box public key: updates to the client, the result to the user).

Openers, one per place the bytes come from, all checking the ciphertext's sha256 first:

* :func:`open_stored` reads from an :class:`~fedswarm.storage.base.ObjectStore` (the client:
  updates and the result);
* :func:`open_url` downloads a presigned URL with the bounded downloader (the trainer: global
  weights);
* :func:`open_file` decrypts a ciphertext already on disk (the trainer: cached chunks, whose
  hash the cache checked on download).

All functions are synchronous; nodes call them through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey, PublicKey

from fedswarm import crypto
from fedswarm.storage.base import IntegrityError, ObjectStore, ObjectTooLarge
from fedswarm.storage.download import (
    DEFAULT_DEADLINE_S,
    Decryption,
    DownloadDecryptError,
    DownloadHashMismatch,
    DownloadTooLarge,
    download,
)

__all__ = [
    "JobObjects",
    "SealedError",
    "SealedObject",
    "StoredRef",
    "open_file",
    "open_key_b64",
    "open_stored",
    "open_url",
    "seal",
    "seal_bytes",
    "seal_key_b64",
]


class SealedError(IntegrityError):
    """The bytes are not the sealed object expected: wrong hash or size, or they fail
    authenticated decryption (wrong key, wrong name, tampered). One line, safe to show."""


@dataclass(frozen=True, slots=True)
class SealedObject:
    """One encrypted object of a job: its store ``key`` and the ``label`` its ciphertext is
    bound to (with ``job_id``)."""

    job_id: str
    label: str
    key: str

    def derive_key(self, job_secret: bytes) -> bytes:
        """The object's chunk key, derived from the job secret (client side only)."""
        return crypto.derive_chunk_key(job_secret, self.job_id, self.label)


@dataclass(frozen=True, slots=True)
class JobObjects:
    """The names of every object of job ``job_id`` (see the module doc for the layout)."""

    job_id: str

    @property
    def prefix(self) -> str:
        """The folder all of the job's objects live under."""
        return f"jobs/{self.job_id}"

    def chunk(self, chunk_id: str) -> SealedObject:
        """Training chunk ``chunk_id`` (chunk key)."""
        return SealedObject(self.job_id, chunk_id, f"{self.prefix}/chunks/{chunk_id}.enc")

    def global_weights(self, round_: int) -> SealedObject:
        """The global weights trainers start round ``round_`` from (chunk key)."""
        return SealedObject(self.job_id, f"global-{round_}", f"{self.prefix}/global/{round_}.enc")

    def update(self, round_: int, unit: int) -> SealedObject:
        """A trainer's update for unit ``unit`` of round ``round_`` (sealed to the client)."""
        return SealedObject(self.job_id, f"update-{round_}-{unit}", f"{self.prefix}/updates/{round_}/{unit}.enc")

    def result(self) -> SealedObject:
        """The final weights (sealed to the user's box key)."""
        return SealedObject(self.job_id, "result", f"{self.prefix}/result.safetensors.enc")

    @property
    def manifest_key(self) -> str:
        """The signed manifest (plain JSON: signed, not encrypted)."""
        return f"{self.prefix}/manifest.json"


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where a sealed object went and what its ciphertext is (what work units and the chain
    carry)."""

    key: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """``{"key", "sha256", "size"}`` (JSON-ready)."""
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredRef:
        """The reference :meth:`to_dict` wrote."""
        return cls(str(data["key"]), str(data["sha256"]), int(data["size"]))


def seal(store: ObjectStore, obj: SealedObject, data: bytes | bytearray, *, key: bytes | None = None,
         box_public: PublicKey | bytes | str | None = None) -> StoredRef:
    """Encrypt ``data`` as ``obj`` with a chunk ``key`` or to ``box_public`` (exactly one) and
    put it under ``obj.key``. Encryption is randomised: sealing twice gives two hashes."""
    enc = seal_bytes(obj, data, key=key, box_public=box_public)
    store.put(obj.key, enc)
    return StoredRef(obj.key, crypto.sha256_bytes(enc), len(enc))


def seal_bytes(obj: SealedObject, data: bytes | bytearray, *, key: bytes | None = None,
               box_public: PublicKey | bytes | str | None = None) -> bytes:
    """The ciphertext :func:`seal` would put, for a caller that uploads it another way (a
    trainer's update goes through a presigned PUT, under a fresh key the client gets later)."""
    if (key is None) == (box_public is None):
        raise ValueError("seal needs exactly one of key= (chunk key) or box_public= (box key)")
    if key is not None:
        return crypto.encrypt_bytes(data, key, obj.job_id, obj.label)
    assert box_public is not None
    return crypto.encrypt_to_box(data, box_public, obj.job_id, obj.label)


class _BoundedBuffer(io.BytesIO):
    """An in-memory file that refuses to grow past ``limit`` bytes (a store object larger than
    expected is refused while it streams, not after it filled memory)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self.limit = limit
        self.what = what

    def write(self, b: Any) -> int:
        if self.tell() + len(memoryview(b)) > self.limit:
            raise ObjectTooLarge(f"{self.what} is larger than the {self.limit} bytes expected")
        return super().write(b)


def _opener(obj: SealedObject, key: bytes | None, box_private: PrivateKey | None) -> Decryption:
    if (key is None) == (box_private is None):
        raise ValueError("opening needs exactly one of key= (chunk key) or box_private= (box key)")
    return Decryption(obj.job_id, obj.label, key=key, box_private=box_private)


def open_stored(store: ObjectStore, obj: SealedObject, *, sha256: str, max_bytes: int,
                key: bytes | None = None, box_private: PrivateKey | None = None) -> bytes:
    """Read ``obj`` from ``store`` (at most ``max_bytes``), check its ciphertext against
    ``sha256`` (e.g. the hash committed on chain), decrypt and return the plaintext.

    Raises :class:`SealedError` for a wrong hash, an oversized object or a failed decryption,
    and the store's errors (``ObjectNotFound``...) otherwise.
    """
    dec = _opener(obj, key, box_private)
    buf = _BoundedBuffer(max_bytes, obj.label)
    try:
        store.get(obj.key, buf, max_bytes=max_bytes)  # refused from the declared size first
    except ObjectTooLarge as exc:
        raise SealedError(str(exc)) from None
    data = buf.getvalue()
    if crypto.sha256_bytes(data) != sha256.lower():
        raise SealedError(f"{obj.label} does not match its expected sha256")
    try:
        if dec.key is not None:
            return crypto.decrypt_bytes(data, dec.key, obj.job_id, obj.label)
        assert dec.box_private is not None
        return crypto.decrypt_from_box(data, dec.box_private, obj.job_id, obj.label)
    except crypto.DecryptionError as exc:
        raise SealedError(f"{obj.label} does not decrypt: {exc}") from None


def open_url(url: str, obj: SealedObject, *, sha256: str, size: int, dest: Path | None = None,
             key: bytes | None = None, box_private: PrivateKey | None = None,
             deadline_s: float = DEFAULT_DEADLINE_S, allow_private: bool = True) -> bytes | None:
    """Download ``obj`` from a presigned ``url`` with the bounded downloader (exactly ``size``
    bytes with ``sha256``, within ``deadline_s``), decrypting while it streams.

    With ``dest`` the plaintext is written there (it appears only on success) and None is
    returned; without, the plaintext is returned. Raises :class:`SealedError` for a wrong
    hash/size or a failed decryption, and the downloader's ``DownloadError`` for transport
    failures (refused URL, timeout, HTTP errors).
    """
    parts: list[bytes] = []
    try:
        download(url, dest, max_bytes=size, sha256=sha256, expected_size=size, deadline_s=deadline_s,
                 decrypt=_opener(obj, key, box_private), allow_private=allow_private,
                 sink=None if dest is not None else parts.append)
    except (DownloadDecryptError, DownloadHashMismatch, DownloadTooLarge) as exc:
        raise SealedError(f"{obj.label}: {exc}") from None
    return None if dest is not None else b"".join(parts)


def open_file(src: Path, dest: Path, obj: SealedObject, *, key: bytes | None = None,
              box_private: PrivateKey | None = None) -> None:
    """Decrypt the ciphertext file ``src`` (hash already checked, e.g. by the chunk cache) into
    ``dest``, streaming; ``dest`` appears only on success. Raises :class:`SealedError` if it
    does not decrypt."""
    dec = _opener(obj, key, box_private)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            crypto.decrypt_stream(fin, fout, obj.job_id, obj.label, key=dec.key, box_private=dec.box_private)
        os.replace(tmp, dest)
    except crypto.DecryptionError as exc:
        raise SealedError(f"{obj.label} does not decrypt with its key: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def seal_key_b64(key: bytes, box_public: PublicKey | bytes | str) -> str:
    """A chunk key sealed to a trainer's box public key, base64 (as work units carry it)."""
    return base64.b64encode(crypto.seal_key(key, box_public)).decode()


def open_key_b64(sealed: str, box_private: PrivateKey) -> bytes:
    """The chunk key from :func:`seal_key_b64`'s output; raises :class:`SealedError` if it is
    not base64 or not sealed to ``box_private``."""
    try:
        raw = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise SealedError("sealed key is not base64") from None
    try:
        return crypto.open_sealed(raw, box_private)
    except (crypto.CryptoKeyError, ValueError) as exc:
        raise SealedError(f"sealed key does not open with this node's box key: {exc}") from None
