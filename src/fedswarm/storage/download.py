"""Bounded transfers of presigned URLs: what a trainer does with URLs it did not choose.

:func:`download` / :func:`download_bytes` stream a GET with httpx and enforce, whatever the
server does: a byte cap (declared and actual), one **total** deadline over every attempt, connect,
TLS, header and body read (per-read timeouts alone let a slowloris server drip forever), no
redirects, http/https only, no link-local / cloud-metadata addresses (checked on the resolved IP we
then connect to, so DNS rebinding cannot swap it), a sha256 check, retries with exponential
backoff on 5xx and network errors, and optional decryption while streaming.
:func:`upload_file` streams a PUT to a presigned URL with Content-Length set.

Synchronous (nodes call these through ``trio.to_thread.run_sync``). Errors are one line and never
contain the URL's query string (it is a credential); all are :class:`DownloadError` subclasses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
from nacl.public import PrivateKey

from fedswarm.crypto import DecryptionError, SegmentDecryptor

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 600.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# httpcore asks for 64 KiB per read; larger reads cut per-read Python overhead (h11 copes).
_READ_SIZE = 1 << 20
_UPLOAD_BLOCK = 1 << 20

# Addresses a presigned URL must never reach: cloud metadata services and link-local ranges.
_BLOCKED_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local, AWS/GCP/Azure metadata 169.254.169.254
        "100.100.100.200/32",  # Alibaba metadata
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS IPv6 metadata
        "0.0.0.0/8",
        "224.0.0.0/4",
        "ff00::/8",
        "::/128",
    )
]
_PRIVATE_NETS = [
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
]


class DownloadError(Exception):
    """A transfer failed; the message is one line and safe to show (no URL query string)."""


class DownloadRefused(DownloadError):
    """The URL or the server's answer is not acceptable (scheme, address, redirect, 4xx)."""


class DownloadTooLarge(DownloadError):
    """The body is (or is declared to be) larger than the cap."""


class DownloadTimeout(DownloadError):
    """The total deadline passed, or reads stalled on every attempt."""


class DownloadHashMismatch(DownloadError):
    """The bytes received do not have the expected sha256 (or size)."""


class DownloadHTTPError(DownloadError):
    """The server kept answering with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DownloadNetworkError(DownloadError):
    """Connection failures or broken responses on every attempt."""


class DownloadDecryptError(DownloadError):
    """The body arrived but failed authenticated decryption."""


class UploadError(DownloadError):
    """A presigned PUT failed (status, network, deadline); same one-line rules."""


def redact(url: str | httpx.URL) -> str:
    """The URL without query and fragment (presigned signatures are credentials)."""
    u = httpx.URL(str(url))
    return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}{u.path}"


@dataclass(frozen=True)
class Decryption:
    """How to decrypt while downloading: the chunk key (mode 0) or our box key (mode 1)."""

    job_id: str
    chunk_id: str
    key: bytes | None = None
    box_private: PrivateKey | None = None

    def new(self) -> SegmentDecryptor:
        return SegmentDecryptor(self.job_id, self.chunk_id, key=self.key, box_private=self.box_private)


@dataclass(frozen=True)
class DownloadResult:
    """What was fetched: ciphertext bytes and sha256 as received; plaintext size if decrypted."""

    path: Path | None
    bytes_received: int
    sha256: str
    plaintext_bytes: int | None
    attempts: int
    seconds: float


@dataclass(frozen=True)
class UploadResult:
    bytes_sent: int
    sha256: str
    status: int
    etag: str | None
    attempts: int
    seconds: float


# ------------------------------------------------------------------ guarded network layer


class _DeadlineExceeded(httpcore.ReadTimeout):
    pass


def check_address(ip: str, allow_private: bool = True) -> None:
    """Raise :class:`DownloadRefused` if ``ip`` is link-local, metadata, multicast or (unless
    ``allow_private``) loopback/private."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in _BLOCKED_NETS):
        raise DownloadRefused(f"address {addr} is link-local/metadata/multicast; refused")
    if not allow_private and any(addr in net for net in _PRIVATE_NETS):
        raise DownloadRefused(f"address {addr} is loopback/private and private addresses are off")


class _DeadlineStream(httpcore.NetworkStream):
    """Wraps a socket stream so every operation's timeout is clamped to the total deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _clamp(self, timeout: float | None) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded("total deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, _READ_SIZE), self._clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._clamp(timeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself, vets every address, connects to a vetted IP, clamps timeouts."""

    def __init__(self, deadline: float, allow_private: bool) -> None:
        self._deadline = deadline
        self._allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        if not infos:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        for info in infos:  # every address must be acceptable, not just the first
            check_address(str(info[4][0]), self._allow_private)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlineExceeded("total deadline passed")
        ip = str(infos[0][4][0])
        stream = super().connect_tcp(ip, port, min(timeout or left, left), local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~25 ms; one context serves every transfer.
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx.create_ssl_context(trust_env=False)
    return _SSL_CONTEXT


def _client(deadline: float, allow_private: bool, read_timeout: float, connect_timeout: float) -> httpx.Client:
    transport = httpx.HTTPTransport(retries=0, trust_env=False)
    # httpx has no public hook for the network backend; its pool is rebuilt with ours (same
    # arguments HTTPTransport uses for a direct connection).
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001
        ssl_context=_ssl_context(),
        max_connections=4,
        http1=True,
        http2=False,
        retries=0,
        network_backend=_GuardedBackend(deadline, allow_private),
    )
    return httpx.Client(
        transport=transport,
        follow_redirects=False,
        trust_env=False,  # never route through a proxy from the environment
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        headers={"accept-encoding": "identity", "user-agent": "fedswarm"},
    )


def _check_url(url: str) -> httpx.URL:
    try:
        u = httpx.URL(url)
    except Exception:
        raise DownloadRefused("not a valid URL") from None
    if u.scheme not in ("http", "https"):
        raise DownloadRefused(f"URL scheme {u.scheme or '(none)'!r} refused: only http and https")
    if not u.host:
        raise DownloadRefused("URL has no host")
    if u.host.replace(".", "").isdigit() or ":" in u.host:
        check_address(u.host)  # literal IPs: refuse early with a clear message
    return u


def _backoff(attempt: int, base: float, deadline: float) -> bool:
    """Sleep before retry ``attempt`` (1-based); False if the deadline leaves no room."""
    delay = min(base * (2 ** (attempt - 1)), 30.0) * (0.5 + random.random() / 2)
    if time.monotonic() + delay >= deadline:
        return False
    time.sleep(delay)
    return True


# ---------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int,
    sha256: str | None = None,
    expected_size: int | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    retries: int = 3,
    backoff_s: float = 0.5,
    decrypt: Decryption | None = None,
    allow_private: bool = True,
    sink: Callable[[bytes], None] | None = None,
) -> DownloadResult:
    """Stream ``url`` into ``dest`` (or into ``sink``), enforcing every bound in the module doc.

    ``dest`` appears only on success (written as ``dest.part`` then renamed); on any error it is
    removed. With ``decrypt`` the file holds the plaintext; ``sha256`` and ``expected_size``
    always refer to the bytes on the wire (the manifest's ciphertext hash and size).
    Raises a :class:`DownloadError` subclass within ``deadline_s`` (plus at most one backoff).
    """
    u = _check_url(url)
    where = redact(u)
    if expected_size is not None:
        if expected_size > max_bytes:
            raise DownloadTooLarge(f"{where}: expected size {expected_size} is over the cap {max_bytes}")
        max_bytes = expected_size
    start = time.monotonic()
    deadline = start + deadline_s
    dest_path = Path(dest) if dest is not None else None
    part = dest_path.with_name(dest_path.name + ".part") if dest_path else None
    attempt = 0
    last: DownloadError | None = None
    with _client(deadline, allow_private, read_timeout_s, connect_timeout_s) as client:
        while True:
            attempt += 1
            try:
                got, digest, plain = _attempt(client, u, where, part, max_bytes, decrypt, sink)
                if expected_size is not None and got != expected_size:
                    raise DownloadHashMismatch(f"{where}: got {got} bytes, expected {expected_size}")
                if sha256 is not None and digest != sha256.lower():
                    raise DownloadHashMismatch(
                        f"{where}: sha256 {digest[:16]}... does not match expected {sha256[:16]}..."
                    )
                if part and dest_path:
                    os.replace(part, dest_path)
                return DownloadResult(dest_path, got, digest, plain, attempt, time.monotonic() - start)
            except _Retryable as exc:
                last = exc.error
            except BaseException:
                _unlink(part)
                raise
            _unlink(part)
            if time.monotonic() >= deadline:
                raise DownloadTimeout(
                    f"{where}: total deadline of {deadline_s:g}s passed after {attempt} attempt(s)"
                    f" (last: {last})"
                )
            if attempt > retries or not _backoff(attempt, backoff_s, deadline):
                assert last is not None
                msg = f"{last} (after {attempt} attempt(s))"
                if isinstance(last, DownloadHTTPError):
                    raise DownloadHTTPError(msg, last.status)
                raise type(last)(msg)


class _Retryable(Exception):
    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


def _unlink(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _status_error(where: str, resp: httpx.Response) -> DownloadError:
    code = resp.status_code
    if 300 <= code < 400:
        loc = resp.headers.get("location", "")
        target = redact(loc) if loc.startswith(("http://", "https://")) else loc[:80]
        return DownloadRefused(f"{where}: server redirected ({code}) to {target!r}; redirects are refused")
    if code == 403:
        return DownloadRefused(f"{where}: 403 forbidden (URL expired, tampered or for another method); ask for a fresh URL")
    if 400 <= code < 500:
        return DownloadRefused(f"{where}: server answered {code} {resp.reason_phrase}")
    return DownloadHTTPError(f"{where}: server answered {code} {resp.reason_phrase}", code)


class _BodyConsumer:
    """Hashes, decrypts and writes the body's pieces in order, in a second thread when the
    body is large.

    sha256, AES-GCM and file writes release the GIL, so while this thread hashes and writes
    one piece the receiving thread is already reading the next: on a multi-core machine a
    large GET runs at about the speed of the receive alone, not receive + hash + write.
    An error in the second thread is raised in the receiving one at its next piece.
    """

    def __init__(self, h: Any, dec: SegmentDecryptor | None, out: Any, sink: Callable[[bytes], None] | None,
                 threaded: bool) -> None:
        self._h, self._dec, self._out, self._sink = h, dec, out, sink
        self._error: BaseException | None = None
        self._stopping = False
        self._queue: queue.Queue[bytes | None] | None = queue.Queue(maxsize=8) if threaded else None
        self._thread: threading.Thread | None = None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name="download-body", daemon=True)
            self._thread.start()

    def _consume(self, piece: bytes) -> None:
        self._h.update(piece)
        data = self._dec.update(piece) if self._dec else piece
        if data:
            if self._out:
                self._out.write(data)
            if self._sink:
                self._sink(data)

    def _run(self) -> None:
        assert self._queue is not None
        while (piece := self._queue.get()) is not None:
            if self._error is None and not self._stopping:
                try:
                    self._consume(piece)
                except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                    self._error = exc

    def put(self, piece: bytes) -> None:
        """Take the next piece (raises what the consumer thread raised so far)."""
        if self._error is not None:
            raise self._error
        if self._queue is None:
            self._consume(piece)
        else:
            self._queue.put(piece)

    def finish(self) -> None:
        """Wait until every piece is consumed; raise the consumer's error if any."""
        self._join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is queued and stop the thread (before the output file is closed)."""
        self._stopping = True
        self._join()

    def _join(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


# Bodies above this go through the consumer thread; below, a thread costs more than it saves.
_THREADED_BODY_BYTES = 4 << 20


def _attempt(
    client: httpx.Client,
    u: httpx.URL,
    where: str,
    part: Path | None,
    max_bytes: int,
    decrypt: Decryption | None,
    sink: Callable[[bytes], None] | None,
) -> tuple[int, str, int | None]:
    h = hashlib.sha256()
    got = 0
    dec = decrypt.new() if decrypt else None
    out = open(part, "wb") if part else None  # noqa: SIM115 (closed in finally)
    body: _BodyConsumer | None = None
    try:
        with client.stream("GET", u) as resp:
            if resp.status_code != 200:
                err = _status_error(where, resp)
                if isinstance(err, DownloadHTTPError) and err.status >= 500:
                    raise _Retryable(err)
                raise err
            declared = resp.headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    raise DownloadRefused(f"{where}: invalid Content-Length {declared[:40]!r}")
                if int(declared) > max_bytes:
                    raise DownloadTooLarge(f"{where}: declared size {declared} is over the cap {max_bytes}")
            if resp.headers.get("content-encoding", "identity") not in ("identity", ""):
                raise DownloadRefused(f"{where}: compressed responses are refused")
            body = _BodyConsumer(h, dec, out, sink, threaded=int(declared or 0) > _THREADED_BODY_BYTES)
            for piece in resp.iter_raw():
                got += len(piece)
                if got > max_bytes:
                    raise DownloadTooLarge(f"{where}: body exceeds the cap of {max_bytes} bytes")
                body.put(piece)
            body.finish()
        plain = None
        if dec is not None:
            try:
                tail = dec.finalize()
            except DecryptionError as exc:
                raise DownloadDecryptError(f"{where}: {exc}") from None
            if out:
                out.write(tail)
            if sink and tail:
                sink(tail)
            plain = dec.plaintext_bytes
        return got, h.hexdigest(), plain
    except DecryptionError as exc:
        raise DownloadDecryptError(f"{where}: {exc}") from None
    except _DeadlineExceeded:
        raise _Retryable(DownloadTimeout(f"{where}: total deadline passed")) from None
    except httpx.TimeoutException as exc:
        raise _Retryable(DownloadTimeout(f"{where}: {type(exc).__name__} (no data for the read timeout)")) from None
    except DownloadRefused:
        raise
    except httpcore.ConnectError as exc:  # raised from our backend when resolving
        raise _Retryable(DownloadNetworkError(f"{where}: {exc}")) from None
    except httpx.TransportError as exc:
        raise _Retryable(DownloadNetworkError(f"{where}: {type(exc).__name__}: {str(exc)[:120]}")) from None
    finally:
        if body is not None:
            body.abort()
        if out:
            out.close()


def download_bytes(url: str, *, max_bytes: int, **kwargs: Any) -> bytes:
    """Like :func:`download` but returns the (decrypted, if asked) body in memory."""
    parts: list[bytes] = []
    download(url, None, max_bytes=max_bytes, sink=parts.append, **kwargs)
    return b"".join(parts)


# ------------------------------------------------------------------------------ upload


def _file_body(path: Path, h: Any) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while buf := fh.read(_UPLOAD_BLOCK):
            h.update(buf)
            yield buf


def _bytes_body(data: bytes, h: Any) -> Iterator[bytes]:
    mv = memoryview(data)
    for pos in range(0, len(mv), _UPLOAD_BLOCK):
        piece = mv[pos : pos + _UPLOAD_BLOCK]
        h.update(piece)
        yield bytes(piece)


def upload_file(
    put_url: str,
    source: str | os.PathLike[str] | bytes,
    *,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    retries: int = 3,
    backoff_s: float = 0.5,
    allow_private: bool = True,
) -> UploadResult:
    """PUT a file (streamed, 1 MiB pieces) or bytes to a presigned URL, Content-Length set.

    Retries 5xx and network errors with backoff within one total deadline; 4xx (expired URL,
    too large) fail at once with :class:`UploadError`.
    """
    u = _check_url(put_url)
    where = redact(u)
    is_bytes = isinstance(source, bytes | bytearray | memoryview)
    size = len(source) if is_bytes else Path(source).stat().st_size  # type: ignore[arg-type]
    start = time.monotonic()
    deadline = start + deadline_s
    hdrs = {"content-length": str(size), **(headers or {})}
    if content_type:
        hdrs["content-type"] = content_type
    attempt = 0
    with _client(deadline, allow_private, read_timeout_s, DEFAULT_CONNECT_TIMEOUT_S) as client:
        while True:
            attempt += 1
            h = hashlib.sha256()
            body = _bytes_body(bytes(source), h) if is_bytes else _file_body(Path(source), h)  # type: ignore[arg-type]
            try:
                resp = client.put(u, content=body, headers=hdrs)
                if 200 <= resp.status_code < 300:
                    return UploadResult(
                        size, h.hexdigest(), resp.status_code, resp.headers.get("etag"), attempt,
                        time.monotonic() - start,
                    )
                err: str = f"{where}: server answered {resp.status_code} {resp.reason_phrase}"
                if resp.status_code < 500:
                    raise UploadError(err)
            except (httpx.TimeoutException, _DeadlineExceeded) as exc:
                err = f"{where}: {type(exc).__name__} while uploading"
            except httpcore.ConnectError as exc:
                err = f"{where}: {exc}"
            except httpx.TransportError as exc:
                err = f"{where}: {type(exc).__name__}: {str(exc)[:120]}"
            if time.monotonic() >= deadline:
                raise UploadError(f"{err}; total deadline of {deadline_s:g}s passed after {attempt} attempt(s)")
            if attempt > retries or not _backoff(attempt, backoff_s, deadline):
                raise UploadError(f"{err} (after {attempt} attempt(s))")
