"""The devnet object store: client (`LocalStore`), launcher (`start_local_store`) and entry point.

The server itself lives in `fedswarm.storage.localstore_server` and runs as its own process::

    python -m fedswarm.storage.localstore --root DIR [--port P] [--host 127.0.0.1]

Clients hold the same secret as the server (read from ``DIR/secret.key``) and sign URLs
locally, so presigning costs microseconds and needs no round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from fedswarm.storage.base import (
    COPY_BUFSIZE,
    AccessDenied,
    Destination,
    HashingReader,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
    Source,
    StoreError,
    StoreUnavailable,
    check_declared_size,
    check_running_size,
    open_destination,
    open_source,
    validate_key,
    validate_ttl,
)
from fedswarm.storage.localstore_server import (
    INFO_FILE,
    SECRET_FILE,
    load_or_create_secret,
    read_secret,
    sign,
)

# httpx logs every request URL at INFO, and our URLs carry signatures (credentials): keep it
# at WARNING unless someone configured it explicitly.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)

# Internal operations (put/get/head/delete by the key holder) use short-lived URLs.
_INTERNAL_TTL_S = 300


class LocalStore(ObjectStore):
    """Client of a running devnet store at ``url`` sharing ``secret`` with it."""

    enforces_put_max_bytes = True

    def __init__(self, url: str, secret: bytes, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._secret = secret
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0),
                                  follow_redirects=False)

    @classmethod
    def from_devnet_state(cls, state: dict[str, Any]) -> LocalStore:
        """Build a client from ``devnet.json`` (``{"store": {"url", "secret_file"}}``)."""
        from fedswarm.config import ConfigError

        store = state.get("store") or {}
        if not store.get("url") or not store.get("secret_file"):
            raise ConfigError("devnet state has no store entry: restart `fedswarm devnet up`")
        try:
            secret = read_secret(Path(store["secret_file"]))
        except OSError as exc:
            raise ConfigError(f"cannot read the devnet store secret ({exc.strerror}): "
                              "restart `fedswarm devnet up`") from None
        return cls(store["url"], secret)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- presigning

    def _url(self, method: str, key: str, ttl: float, max_bytes: int | None = None,
             sha256: str | None = None) -> str:
        validate_key(key)
        exp = int(time.time()) + validate_ttl(ttl)
        q: dict[str, str | int] = {"exp": exp}
        if max_bytes is not None:
            if max_bytes < 0:
                raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
            q["max"] = int(max_bytes)
        if sha256:
            sha256 = sha256.lower()
            q["sha256"] = sha256
        q["sig"] = sign(self._secret, method, key, exp, max_bytes, sha256)
        return f"{self.url}/o/{quote(key, safe='/')}?{urlencode(q)}"

    def presign_get(self, key: str, ttl: float) -> str:
        return self._url("GET", key, ttl)

    def presign_put(self, key: str, ttl: float, max_bytes: int, *,
                    sha256: str | None = None) -> str:
        return self._url("PUT", key, ttl, max_bytes, sha256)

    def presign_delete(self, key: str, ttl: float) -> str:
        """A URL that deletes ``key`` (DELETE) for ``ttl`` seconds."""
        return self._url("DELETE", key, ttl)

    # -- operations

    def put(self, key: str, src: Source, *, content_length: int | None = None) -> ObjectInfo:
        validate_key(key)
        with open_source(src, content_length) as (fh, size):
            # Without a known size the body goes out chunked; the cap is then generous but
            # finite (the server still stops at it).
            cap = size if size is not None else 1 << 40
            url = self._url("PUT", key, _INTERNAL_TTL_S, cap)
            reader = HashingReader(fh, size)
            headers = {"Content-Type": "application/octet-stream"}
            if size is not None:
                headers["Content-Length"] = str(size)
            resp = self._request("PUT", url, key, content=reader.iter_chunks(), headers=headers)
        body = resp.json()
        if body.get("sha256") != reader.sha256.hexdigest() or body.get("size") != reader.size:
            raise IntegrityError(f"store recorded a different hash for {key}: upload corrupted; retry")
        return ObjectInfo(key, int(body["size"]), body["sha256"], body["sha256"])

    def get(self, key: str, dst: Destination, *, max_bytes: int | None = None) -> ObjectInfo:
        url = self._url("GET", key, _INTERNAL_TTL_S)
        h = hashlib.sha256()
        size = 0
        try:
            with self._http.stream("GET", url) as resp:
                self._check(resp, key)
                declared = resp.headers.get("content-length")
                check_declared_size(key, int(declared) if declared and declared.isdigit() else None, max_bytes)
                expected = resp.headers.get("x-fedswarm-sha256")
                with open_destination(dst) as out:
                    for chunk in resp.iter_bytes(COPY_BUFSIZE):
                        size += len(chunk)
                        check_running_size(key, size, max_bytes)
                        h.update(chunk)
                        out.write(chunk)
                    if expected and h.hexdigest() != expected:
                        raise IntegrityError(f"object {key} does not match its sha256; retry")
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"devnet store at {self.url} failed during GET {key}: "
                                   f"{type(exc).__name__}; is it running?") from None
        return ObjectInfo(key, size, h.hexdigest(), h.hexdigest())

    def head(self, key: str) -> ObjectInfo | None:
        url = self._url("HEAD", key, _INTERNAL_TTL_S)
        try:
            resp = self._request("HEAD", url, key)
        except ObjectNotFound:
            return None
        sha = resp.headers.get("x-fedswarm-sha256")
        return ObjectInfo(key, int(resp.headers["content-length"]), sha, sha)

    def delete(self, key: str) -> None:
        self._request("DELETE", self._url("DELETE", key, _INTERNAL_TTL_S), key)

    # -- HTTP helpers

    def _request(self, method: str, url: str, key: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"devnet store at {self.url} failed during {method} {key}: "
                                   f"{type(exc).__name__}; is it running?") from None
        self._check(resp, key)
        return resp

    def _check(self, resp: httpx.Response, key: str) -> None:
        if resp.status_code < 300:
            return
        if resp.is_stream_consumed is False:
            resp.read()
        raise error_for_status(resp.status_code, key, _error_text(resp))


def _error_text(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""


def error_for_status(status: int, key: str, detail: str = "") -> StoreError:
    """Map an HTTP status from the devnet store to our error type (one-line message)."""
    detail = f": {detail}" if detail else ""
    if status == 404:
        return ObjectNotFound(f"no object {key} in the store")
    if status == 403:
        return AccessDenied(f"store refused {key}{detail}")
    if status == 413:
        return ObjectTooLarge(f"store refused {key}: body too large{detail}")
    if status == 400 and "sha256" in detail:
        return IntegrityError(f"store refused {key}{detail}")
    if status >= 500:
        return StoreUnavailable(f"store failed on {key} (HTTP {status}){detail}; retry later")
    return StoreError(f"store refused {key} (HTTP {status}){detail}")


# --- launcher ------------------------------------------------------------------------------


def start_local_store(
    root: Path, port: int = 0, host: str = "127.0.0.1", *, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Spawn the devnet store serving ``root`` and wait until it answers.

    Returns ``(popen, info)`` with ``info = {"store": {"url", "secret_file", "root", "pid"}}``,
    ready to merge into ``devnet.json``. The caller stops it with ``popen.terminate()`` (it
    shuts down cleanly on SIGTERM). Its log goes to ``root/store.log``.
    """
    root = Path(root).expanduser().resolve()
    load_or_create_secret(root)  # before spawning, so the caller can rely on the file
    info_path = root / INFO_FILE
    info_path.unlink(missing_ok=True)
    logf = open(root / "store.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedswarm.storage.localstore", "--root", str(root),
             "--host", host, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
    finally:
        logf.close()
    deadline = time.monotonic() + timeout
    try:
        info = _wait_ready(proc, info_path, deadline)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    return proc, {"store": info}


def _wait_ready(proc: subprocess.Popen[bytes], info_path: Path, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreUnavailable(f"devnet store exited with code {proc.returncode} at start; "
                                   f"see {info_path.parent / 'store.log'}")
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if info.get("pid") == proc.pid:
                try:
                    if httpx.get(info["url"] + "/healthz", timeout=5).status_code == 200:
                        return info
                except httpx.TransportError:
                    pass
        time.sleep(0.05)
    raise StoreUnavailable(f"devnet store did not become ready in time; see "
                           f"{info_path.parent / 'store.log'}")


__all__ = ["LocalStore", "start_local_store", "error_for_status", "SECRET_FILE"]


if __name__ == "__main__":
    from fedswarm.storage.localstore_server import main

    sys.exit(main())
