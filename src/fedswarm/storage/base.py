"""The `ObjectStore` interface every storage backend implements, its errors and key rules.

Bulk data (encrypted chunks, model weights, trainer updates) lives in an object store and is
handed around as short-lived presigned URLs. Two backends implement this interface: the devnet
store (`fedswarm.storage.localstore.LocalStore`) and S3-compatible services such as Akave O3
(`fedswarm.storage.s3.S3Store`). All methods are synchronous (boto3, httpx sync); nodes call
them from worker threads (``trio.to_thread.run_sync``), so implementations must be thread-safe.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Keys are path-like ("jobs/<id>/chunk-0003.bin"). The charset is deliberately narrow: it needs
# no escaping in URLs or S3 canonical requests and cannot smuggle path tricks into the
# devnet store's disk layout.
KEY_MAX_LEN = 512
_KEY_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")

# Presigned URLs live at most 7 days: AWS's cap, and a sane bound everywhere else.
MAX_TTL_S = 7 * 24 * 3600

COPY_BUFSIZE = 1 << 20

Source = bytes | BinaryIO | Path
Destination = BinaryIO | Path


class StoreError(Exception):
    """Base of every storage error; ``str(exc)`` is one line: what happened and what to do."""


class InvalidKey(StoreError, ValueError):
    """The object key breaks the key rules (charset, length, ``..``, absolute)."""


class ObjectNotFound(StoreError):
    """No object under this key."""


class AccessDenied(StoreError):
    """The store refused the request: bad credentials, bad or expired signature, wrong method."""


class ObjectTooLarge(StoreError):
    """The body is larger than the upload is allowed to be."""


class IntegrityError(StoreError):
    """The bytes do not match the expected sha256 or size."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or answered with a server error; retrying may help."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one object.

    ``sha256`` is the hex digest of the content when the backend knows it (always for the
    devnet store; on S3 when it was computed at upload or recorded in metadata); ``etag`` is
    the backend's entity tag (the sha256 on the devnet store, an MD5-ish tag on S3).
    """

    key: str
    size: int
    sha256: str | None = None
    etag: str | None = None


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise `InvalidKey` saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key is empty: give a key such as 'jobs/<id>/chunk-0.bin'")
    if len(key) > KEY_MAX_LEN:
        raise InvalidKey(f"object key is {len(key)} characters long; the limit is {KEY_MAX_LEN}")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key[:60]!r} is absolute; drop the leading '/'")
    if not _KEY_RE.match(key):
        raise InvalidKey(
            f"object key {key[:60]!r} has an empty segment or a character outside "
            "A-Z a-z 0-9 . _ - /"
        )
    if any(seg in (".", "..") for seg in key.split("/")):
        raise InvalidKey(f"object key {key[:60]!r} has a '.' or '..' segment; use plain names")
    return key


def validate_ttl(ttl: float) -> int:
    """Presign lifetime in whole seconds, 1 s to 7 days."""
    ttl_i = int(ttl)
    if ttl_i < 1 or ttl_i > MAX_TTL_S:
        raise ValueError(f"presign ttl {ttl} s is out of range; use 1 to {MAX_TTL_S} seconds")
    return ttl_i


class ObjectStore(ABC):
    """Streaming object storage with presigned URLs.

    Implementations are thread-safe and never buffer whole objects in memory.
    ``enforces_put_max_bytes`` says whether a presigned PUT URL itself refuses bodies over
    ``max_bytes``; where it is False the caller must check the size with `head` after upload.
    """

    enforces_put_max_bytes: bool = True

    @abstractmethod
    def put(self, key: str, src: Source, *, content_length: int | None = None) -> ObjectInfo:
        """Store ``src`` (bytes, a readable binary file object, or a file path) under ``key``,
        streaming it. ``content_length`` is the size of a file object when known."""

    @abstractmethod
    def get(self, key: str, dst: Destination, *, max_bytes: int | None = None) -> ObjectInfo:
        """Stream the object under ``key`` into ``dst`` (a writable binary file or a path);
        raises `ObjectNotFound` if absent and `IntegrityError` if the content does not match
        the stored hash. With ``max_bytes`` (always, for an object a peer wrote) a declared
        size over the cap is refused before reading and the read stops at the cap
        (`ObjectTooLarge`)."""

    def presign_put_exact(self, key: str, ttl: float, size: int) -> str:
        """A PUT URL for a body of exactly ``size`` bytes where the backend can bind it (S3
        signs Content-Length); elsewhere at most ``size`` bytes (the devnet store's signed
        ``max``), the receiver's hash check catching a shorter body."""
        return self.presign_put(key, ttl, size)

    @abstractmethod
    def presign_get(self, key: str, ttl: float) -> str:
        """A URL anyone can GET for ``ttl`` seconds."""

    @abstractmethod
    def presign_put(
        self, key: str, ttl: float, max_bytes: int, *, sha256: str | None = None
    ) -> str:
        """A URL anyone can PUT a body of at most ``max_bytes`` to for ``ttl`` seconds
        (``sha256``, where supported, also binds the exact content)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and hashes of the object under ``key``, or None if there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error."""


# --- helpers shared by the backends -------------------------------------------------------


@contextmanager
def open_source(src: Source, content_length: int | None) -> Iterator[tuple[BinaryIO, int | None]]:
    """Yield ``(readable, size_or_None)`` for any accepted source, closing what we opened."""
    if isinstance(src, bytes | bytearray | memoryview):
        yield io.BytesIO(bytes(src)), len(src)
    elif isinstance(src, str | os.PathLike):
        path = Path(src)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise StoreError(f"cannot upload {path}: no such file") from None
        with fh:
            yield fh, os.fstat(fh.fileno()).st_size
    else:
        size = content_length
        if size is None:
            size = _remaining_size(src)
        yield src, size


def _remaining_size(fh: BinaryIO) -> int | None:
    """Bytes left in a seekable file object, or None for a pipe/socket-like stream."""
    try:
        if not fh.seekable():
            return None
        pos = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def check_declared_size(key: str, declared: int | None, max_bytes: int | None) -> None:
    """Refuse before reading when the store declares more than the caller's cap."""
    if max_bytes is not None and declared is not None and declared > max_bytes:
        raise ObjectTooLarge(f"{key}: the store holds {declared} bytes, larger than the cap of {max_bytes}; not downloaded")


def check_running_size(key: str, size: int, max_bytes: int | None) -> None:
    """Stop a read that passes the cap (the declared size may be absent or wrong)."""
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(f"{key}: the object is larger than the cap of {max_bytes} bytes; download stopped")


@contextmanager
def open_destination(dst: Destination) -> Iterator[BinaryIO]:
    """Yield a writable binary file for ``dst``. A path is written to a temp file beside it
    and renamed into place only on success, so a failed download leaves nothing behind."""
    if isinstance(dst, str | os.PathLike):
        path = Path(dst)
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        try:
            with tmp.open("wb") as fh:
                yield fh
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        yield dst


class HashingReader:
    """A read-only, forward-only view of a file that hashes and counts what passes through.

    It deliberately has no ``seek``: libraries then read it once, in order, so the digest
    covers exactly the bytes sent."""

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self._raw = raw
        self._limit = limit
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(-1 if n is None else n)
        if data:
            self.size += len(data)
            if self._limit is not None and self.size > self._limit:
                raise ObjectTooLarge(
                    f"source is larger than the {self._limit} bytes announced; "
                    "pass the right content_length"
                )
            self.sha256.update(data)
        return data

    def readable(self) -> bool:
        return True

    def iter_chunks(self, size: int = COPY_BUFSIZE) -> Iterator[bytes]:
        """Yield the source in ``size``-byte pieces (for streaming HTTP bodies)."""
        while chunk := self.read(size):
            yield chunk
