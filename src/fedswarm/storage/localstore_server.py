"""The devnet object store's HTTP server: signed URLs, content-addressed blobs, sendfile GETs.

Runs in its own process (``python -m fedswarm.storage.localstore --root DIR --port P``). Only
the standard library is used, so the process is small and starts fast.

URL shape::

    /o/<key>?exp=<unix seconds>[&max=<bytes>][&sha256=<hex>]&sig=<hex>

``sig`` is HMAC-SHA256 (shared secret) over ``METHOD\\nkey\\nexp\\nmax\\nsha256``. GET, PUT,
HEAD and DELETE each need a signature for their own method (a GET signature also allows HEAD,
which reveals nothing more than GET). A PUT signature always carries ``max``.

Disk layout under ``root``::

    secret.key        32 random bytes, hex, mode 0600 (the HMAC key)
    index.sqlite      key -> (sha256, size): survives restarts; WAL, one writer at a time
    objects/ab/<sha>  blobs named by their sha256 (identical content is stored once)
    tmp/              PUT bodies being received; renamed into objects/ only once checked
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import sqlite3
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fedswarm.storage.base import COPY_BUFSIZE, InvalidKey, validate_key

log = logging.getLogger("fedswarm.storage.localstore")

SECRET_FILE = "secret.key"
INFO_FILE = "store.json"
_SHA_RE_LEN = 64
# Idle/slow connections are dropped after this long, so a stalled client cannot pin a thread.
SOCKET_TIMEOUT_S = 60.0
_MAX_CHUNK_LINE = 1024


# --- signing (shared with the client in localstore.py) -------------------------------------


def sign(secret: bytes, method: str, key: str, exp: int, max_bytes: int | None = None,
         sha256: str | None = None) -> str:
    """Hex HMAC-SHA256 binding method, key, expiry and (for PUT) max size and content hash."""
    msg = "\n".join(
        [method.upper(), key, str(int(exp)), "" if max_bytes is None else str(int(max_bytes)),
         sha256 or ""]
    )
    return hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()


def load_or_create_secret(root: Path) -> bytes:
    """The store's HMAC key, generated on first start into ``root/secret.key`` (0600)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return read_secret(path)


def read_secret(path: Path) -> bytes:
    """Read a secret file written by `load_or_create_secret`."""
    text = Path(path).read_text().strip()
    if len(text) < 32:
        raise ValueError(f"store secret {path} is too short or empty; delete it and restart the store")
    return text.encode()


# --- storage -------------------------------------------------------------------------------


class BlobIndex:
    """Content-addressed blobs plus the key -> sha256 index, safe for many threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Leftovers of PUTs interrupted by a crash are garbage: nothing refers to them.
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "index.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL,"
            " size INTEGER NOT NULL, mtime REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS by_sha ON objects(sha256)")

    def blob_path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha

    def lookup(self, key: str) -> tuple[str, int] | None:
        with self._lock:
            row = self._db.execute("SELECT sha256, size FROM objects WHERE key=?", (key,)).fetchone()
        return (row[0], int(row[1])) if row else None

    def open_blob(self, key: str) -> tuple[str, int, int] | None:
        """Open the blob of ``key`` for reading: ``(sha, size, fd)``. Opened under the lock so
        a concurrent overwrite/delete cannot unlink it between lookup and open (once open, an
        unlink does not disturb the read)."""
        with self._lock:
            row = self._db.execute("SELECT sha256, size FROM objects WHERE key=?", (key,)).fetchone()
            if not row:
                return None
            fd = os.open(self.blob_path(row[0]), os.O_RDONLY)
        return row[0], int(row[1]), fd

    def commit(self, key: str, tmp_path: Path, sha: str, size: int) -> None:
        """Move a fully received and checked temp file into place and point ``key`` at it."""
        blob = self.blob_path(sha)
        blob.parent.mkdir(exist_ok=True)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        with self._lock:
            if blob.exists():
                tmp_path.unlink(missing_ok=True)  # same content already stored once
            else:
                os.replace(tmp_path, blob)
            old = self._db.execute("SELECT sha256 FROM objects WHERE key=?", (key,)).fetchone()
            self._db.execute(
                "INSERT INTO objects(key, sha256, size, mtime) VALUES (?,?,?,?) ON CONFLICT(key)"
                " DO UPDATE SET sha256=excluded.sha256, size=excluded.size, mtime=excluded.mtime",
                (key, sha, size, time.time()),
            )
            if old and old[0] != sha:
                self._collect(old[0])

    def delete(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM objects WHERE key=?", (key,)).fetchone()
            if not row:
                return False
            self._db.execute("DELETE FROM objects WHERE key=?", (key,))
            self._collect(row[0])
            return True

    def _collect(self, sha: str) -> None:
        """Remove a blob no key refers to any more (caller holds the lock)."""
        if not self._db.execute("SELECT 1 FROM objects WHERE sha256=? LIMIT 1", (sha,)).fetchone():
            self.blob_path(sha).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- HTTP ----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StoreServer(ThreadingHTTPServer):
    """Threaded HTTP server holding the secret and the blob index."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], root: Path, secret: bytes) -> None:
        self.root = root
        self.secret = secret
        self.index = BlobIndex(root)
        super().__init__(addr, StoreHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        # One line instead of socketserver's traceback dump; the server keeps serving.
        import sys

        exc = sys.exc_info()[1]
        log.warning("request from %s failed: %s", client_address, type(exc).__name__)


class StoreHandler(BaseHTTPRequestHandler):
    """GET/HEAD via sendfile, PUT streamed to a temp file, DELETE; all need a signed URL."""

    server: StoreServer
    protocol_version = "HTTP/1.1"
    server_version = "fedswarm-store/1"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    # -- plumbing

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # requests are logged in _log without the query string (it holds signatures)

    def log_error(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http error: " + format, *args)

    def _log(self, status: int, key: str, size: int | None = None) -> None:
        log.info("%s %s -> %d%s", self.command, key, status,
                 "" if size is None else f" ({size} bytes)")

    def _reply(self, status: HTTPStatus, body: dict | None = None, *, close: bool = False,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _refuse(self, exc: _Refused, key: str = "-") -> None:
        # A refused PUT's body is never read, so the connection cannot be reused.
        self._reply(exc.status, {"error": exc.message}, close=self.command == "PUT")
        self._log(exc.status, key)

    def _parse(self, method: str) -> tuple[str, dict[str, str]]:
        """Validate path and signature for ``method``; return (key, query)."""
        parts = urlsplit(self.path)
        if not parts.path.startswith("/o/"):
            raise _Refused(HTTPStatus.NOT_FOUND, "no such path; objects live under /o/<key>")
        try:
            key = validate_key(unquote(parts.path[3:]))
        except InvalidKey as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, str(exc)) from None
        raw = parse_qs(parts.query, keep_blank_values=True)
        if any(len(v) != 1 for v in raw.values()):
            raise _Refused(HTTPStatus.BAD_REQUEST, "repeated query parameter")
        q = {k: v[0] for k, v in raw.items()}
        try:
            exp = int(q["exp"])
            sig = q["sig"]
            max_bytes = int(q["max"]) if "max" in q else None
        except (KeyError, ValueError):
            raise _Refused(HTTPStatus.FORBIDDEN, "unsigned or malformed URL: ask for a presigned URL") from None
        sha = q.get("sha256") or None
        if sha is not None and (len(sha) != _SHA_RE_LEN or not all(c in "0123456789abcdef" for c in sha)):
            raise _Refused(HTTPStatus.BAD_REQUEST, "sha256 parameter must be 64 lowercase hex digits")
        methods = [method, "GET"] if method == "HEAD" else [method]
        ok = any(
            hmac.compare_digest(sign(self.server.secret, m, key, exp, max_bytes, sha), sig)
            for m in methods
        )
        if not ok:
            raise _Refused(HTTPStatus.FORBIDDEN, "signature does not match this method, key and limits")
        # Checked after the signature so an attacker learns nothing from timing of the expiry.
        if exp < time.time():
            raise _Refused(HTTPStatus.FORBIDDEN, "URL expired: ask for a fresh presigned URL")
        if method == "PUT" and max_bytes is None:
            raise _Refused(HTTPStatus.FORBIDDEN, "PUT URL carries no size limit")
        return key, q

    # -- verbs

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/healthz":
            self._reply(HTTPStatus.OK, {"ok": True})
            return
        self._serve_object(send_body=True)

    def do_HEAD(self) -> None:
        self._serve_object(send_body=False)

    def _serve_object(self, *, send_body: bool) -> None:
        key = "-"
        try:
            key, _ = self._parse(self.command)
        except _Refused as exc:
            self._refuse(exc, key)
            return
        opened = self.server.index.open_blob(key)
        if opened is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no object {key}"})
            self._log(404, key)
            return
        sha, size, fd = opened
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Fedswarm-Sha256", sha)
            # A signed GET URL is itself the credential (no cookies), so any page may read it:
            # a wallet user's browser downloads its sealed result straight from the store.
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            if send_body and size:
                self.wfile.flush()
                # Zero-copy: the kernel moves file pages straight to the socket.
                with os.fdopen(fd, "rb", closefd=False) as fh:
                    self.connection.sendfile(fh, 0, size)
        finally:
            os.close(fd)
        self._log(200, key, size if send_body else None)

    def do_DELETE(self) -> None:
        key = "-"
        try:
            key, _ = self._parse("DELETE")
        except _Refused as exc:
            self._refuse(exc, key)
            return
        self.server.index.delete(key)
        self._reply(HTTPStatus.NO_CONTENT)
        self._log(204, key)

    def do_PUT(self) -> None:
        key = "-"
        try:
            key, q = self._parse("PUT")
            max_bytes = int(q["max"])
            want_sha = q.get("sha256") or None
            header_sha = (self.headers.get("X-Fedswarm-Sha256") or "").strip().lower() or None
            length = self._body_length(max_bytes)
        except _Refused as exc:
            self._refuse(exc, key)
            return
        tmp = self.server.index.tmp / f"{secrets.token_hex(8)}.part"
        try:
            sha, size = self._receive(tmp, length, max_bytes)
            for expected in (want_sha, header_sha):
                if expected and expected != sha:
                    raise _Refused(HTTPStatus.BAD_REQUEST,
                                   "body sha256 does not match the expected hash; nothing stored")
            self.server.index.commit(key, tmp, sha, size)
        except _Refused as exc:
            tmp.unlink(missing_ok=True)
            self._refuse(exc, key)
            return
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._reply(HTTPStatus.CREATED, {"key": key, "size": size, "sha256": sha},
                    headers={"ETag": f'"{sha}"'})
        self._log(201, key, size)

    def _body_length(self, max_bytes: int) -> int | None:
        """Declared length (None means chunked); refuse early what is surely too big."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        cl = self.headers.get("Content-Length")
        if te:
            if te != "chunked":
                raise _Refused(HTTPStatus.NOT_IMPLEMENTED, f"transfer-encoding {te!r} not supported")
            return None
        if cl is None:
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "PUT needs Content-Length or chunked encoding")
        try:
            length = int(cl)
        except ValueError:
            raise _Refused(HTTPStatus.BAD_REQUEST, "malformed Content-Length") from None
        if length < 0:
            raise _Refused(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
        if length > max_bytes:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"body of {length} bytes exceeds this URL's limit of {max_bytes}")
        return length

    def _receive(self, tmp: Path, length: int | None, max_bytes: int) -> tuple[str, int]:
        """Stream the body into ``tmp``, hashing it and never exceeding ``max_bytes``."""
        h = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as out:
            for chunk in self._body_chunks(length):
                size += len(chunk)
                if size > max_bytes:
                    raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   f"body exceeds this URL's limit of {max_bytes} bytes")
                h.update(chunk)
                out.write(chunk)
        return h.hexdigest(), size

    def _body_chunks(self, length: int | None):  # type: ignore[no-untyped-def]
        rfile = self.rfile
        if length is not None:
            left = length
            while left:
                chunk = rfile.read(min(COPY_BUFSIZE, left))
                if not chunk:
                    raise _Refused(HTTPStatus.BAD_REQUEST, "body ended before Content-Length")
                left -= len(chunk)
                yield chunk
            return
        while True:  # chunked transfer encoding
            line = rfile.readline(_MAX_CHUNK_LINE)
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Refused(HTTPStatus.BAD_REQUEST, "malformed chunked body") from None
            if n < 0:
                raise _Refused(HTTPStatus.BAD_REQUEST, "malformed chunked body")
            if n == 0:
                while rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: ignored
                return
            left = n
            while left:
                chunk = rfile.read(min(COPY_BUFSIZE, left))
                if not chunk:
                    raise _Refused(HTTPStatus.BAD_REQUEST, "chunked body ended early")
                left -= len(chunk)
                yield chunk
            if rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n"):
                raise _Refused(HTTPStatus.BAD_REQUEST, "malformed chunked body")

    # Anything else is refused politely rather than with the stdlib's 501 page.
    def do_POST(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET, HEAD, PUT or DELETE"},
                    close=True)


def serve(root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the store until SIGTERM/SIGINT; writes ``root/store.json`` once listening."""
    root = Path(root).expanduser().resolve()
    secret = load_or_create_secret(root)
    server = StoreServer((host, port), root, secret)
    real_port = server.server_address[1]
    info = {"url": f"http://{host}:{real_port}", "pid": os.getpid(),
            "secret_file": str(root / SECRET_FILE), "root": str(root)}
    tmp = root / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, root / INFO_FILE)  # atomic: a reader never sees half a file

    def _stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("devnet store serving %s on %s", root, info["url"])
    try:
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()
        server.index.close()
        (root / INFO_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fedswarm.storage.localstore``."""
    p = argparse.ArgumentParser(prog="fedswarm.storage.localstore",
                                description="devnet object store (signed URLs)")
    p.add_argument("--root", required=True, help="data directory (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    from fedswarm.logs import setup_logging

    setup_logging(args.log_level, json_lines=True, name="store")
    serve(Path(args.root), args.host, args.port)
    return 0
