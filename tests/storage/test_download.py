"""The bounded downloader against small hostile HTTP servers on 127.0.0.1 (threads)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fedswarm import crypto
from fedswarm.storage import download as dl

Handler = Callable[[socket.socket, str, bytes], None]


class RawServer:
    """Accepts connections and hands each request (path, raw head+body) to a handler by path."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.routes: dict[str, Handler] = {}
        self.hits: dict[str, int] = {}
        self.uploads: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?X-Signature=secret123"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    head += piece
                head, _, body = head.partition(b"\r\n\r\n")
                line = head.split(b"\r\n")[0].decode()
                method, target, _ = line.split(" ")
                path = target.split("?")[0]
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    k, _, v = h.decode().partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                while len(body) < length:
                    piece = conn.recv(1 << 20)
                    if not piece:
                        break
                    body += piece
                self.hits[path] = self.hits.get(path, 0) + 1
                if method == "PUT":
                    self.uploads[path] = body
                self.routes[path](conn, method, body)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


def ok(body: bytes) -> Handler:
    def h(conn: socket.socket, method: str, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    return h


def _quiet_sleep(stop_after: float) -> None:
    time.sleep(stop_after)


def test_plain_download_and_hash(server: RawServer, tmp_path) -> None:
    body = os.urandom(3 << 20)
    server.routes["/a"] = ok(body)
    dest = tmp_path / "a.bin"
    res = dl.download(server.url("/a"), dest, max_bytes=4 << 20, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body and res.bytes_received == len(body) and res.attempts == 1
    assert dl.download_bytes(server.url("/a"), max_bytes=4 << 20) == body


def test_hash_mismatch_leaves_no_file(server: RawServer, tmp_path) -> None:
    server.routes["/a"] = ok(b"hello world")
    dest = tmp_path / "a.bin"
    with pytest.raises(dl.DownloadHashMismatch) as err:
        dl.download(server.url("/a"), dest, max_bytes=100, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "a.bin.part").exists()
    assert "secret123" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(dl.DownloadTooLarge):
        dl.download(server.url("/a"), dest, max_bytes=100, expected_size=5)
    with pytest.raises(dl.DownloadHashMismatch, match="expected 20"):
        dl.download(server.url("/a"), dest, max_bytes=100, expected_size=20)


def test_endless_body_is_capped(server: RawServer, tmp_path) -> None:
    def endless(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = os.urandom(65536)
        while True:
            conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")

    server.routes["/e"] = endless
    t = time.monotonic()
    with pytest.raises(dl.DownloadTooLarge):
        dl.download(server.url("/e"), tmp_path / "e", max_bytes=2 << 20, deadline_s=30)
    assert time.monotonic() - t < 30
    assert server.hits["/e"] == 1  # a cap violation is not retried


def test_declared_size_over_cap_refused_at_once(server: RawServer) -> None:
    def liar(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000000\r\n\r\n" + b"x" * 1000)
        time.sleep(2)

    server.routes["/big"] = liar
    t = time.monotonic()
    with pytest.raises(dl.DownloadTooLarge, match="declared size 50000000000"):
        dl.download_bytes(server.url("/big"), max_bytes=1 << 20)
    assert time.monotonic() - t < 2


def test_lying_short_content_length(server: RawServer) -> None:
    def short(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        conn.shutdown(socket.SHUT_WR)

    server.routes["/s"] = short
    with pytest.raises(dl.DownloadNetworkError, match="after 2 attempt"):
        dl.download_bytes(server.url("/s"), max_bytes=1 << 20, retries=1, backoff_s=0.05)


def test_stalled_body_times_out(server: RawServer) -> None:
    def stall(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
        server.stop.wait(20)

    server.routes["/stall"] = stall
    t = time.monotonic()
    with pytest.raises(dl.DownloadTimeout):
        dl.download_bytes(server.url("/stall"), max_bytes=1 << 20, read_timeout_s=0.5, retries=1, backoff_s=0.05, deadline_s=10)
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("where", ["headers", "body"])
def test_slowloris_stopped_at_total_deadline(server: RawServer, where: str) -> None:
    """One byte every 0.2 s never trips a 2 s read timeout; only the total deadline stops it."""

    def drip(conn: socket.socket, *_: object) -> None:
        if where == "body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            data = b"x" * 100000
        else:
            data = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * 100000
        for i in range(len(data)):
            if server.stop.is_set():
                return
            conn.sendall(data[i : i + 1])
            time.sleep(0.2)

    server.routes["/drip"] = drip
    t = time.monotonic()
    with pytest.raises(dl.DownloadTimeout, match="deadline"):
        dl.download_bytes(server.url("/drip"), max_bytes=1 << 20, read_timeout_s=2, deadline_s=2.5)
    assert time.monotonic() - t < 4.5


@pytest.mark.parametrize("location", ["file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "/other"])
def test_redirects_refused(server: RawServer, location: str) -> None:
    def redirect(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + location.encode() + b"\r\nContent-Length: 0\r\n\r\n")

    server.routes["/r"] = redirect
    with pytest.raises(dl.DownloadRefused, match="redirect"):
        dl.download_bytes(server.url("/r"), max_bytes=1000)
    assert server.hits["/r"] == 1


def test_bad_urls_and_addresses() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x", "gopher://x", "http:///nohost"):
        with pytest.raises(dl.DownloadRefused):
            dl.download_bytes(url, max_bytes=10)
    for url in ("http://169.254.169.254/latest/", "http://[fe80::1]/x", "http://0.0.0.0/x", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(dl.DownloadRefused, match="link-local|metadata|multicast"):
            dl.download_bytes(url, max_bytes=10, deadline_s=5)
    with pytest.raises(dl.DownloadRefused, match="private"):
        dl.download_bytes("http://127.0.0.1:9/x", max_bytes=10, allow_private=False)


def test_5xx_then_success_and_4xx_not_retried(server: RawServer) -> None:
    body = b"finally"
    state = {"n": 0}

    def flaky(conn: socket.socket, *_: object) -> None:
        state["n"] += 1
        if state["n"] < 3:
            conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        else:
            ok(body)(conn, "GET", b"")

    server.routes["/f"] = flaky
    got = dl.download(server.url("/f"), None, max_bytes=100, backoff_s=0.05, sink=lambda b: None)
    assert got.attempts == 3

    def forbidden(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    server.routes["/x"] = forbidden
    with pytest.raises(dl.DownloadRefused, match="403"):
        dl.download_bytes(server.url("/x"), max_bytes=100)
    assert server.hits["/x"] == 1

    def down(conn: socket.socket, *_: object) -> None:
        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")

    server.routes["/d"] = down
    with pytest.raises(dl.DownloadHTTPError) as err:
        dl.download_bytes(server.url("/d"), max_bytes=100, retries=2, backoff_s=0.05)
    assert err.value.status == 500 and server.hits["/d"] == 3


def test_decrypt_while_streaming(server: RawServer, tmp_path) -> None:
    key = crypto.derive_chunk_key(crypto.new_job_secret(), "j", "c")
    plain = os.urandom((2 << 20) + 17)
    blob = crypto.encrypt_bytes(plain, key, "j", "c")
    server.routes["/c"] = ok(bytes(blob))
    dec = dl.Decryption("j", "c", key=key)
    res = dl.download(server.url("/c"), tmp_path / "c", max_bytes=len(blob), sha256=crypto.sha256_bytes(blob), decrypt=dec)
    assert (tmp_path / "c").read_bytes() == plain and res.plaintext_bytes == len(plain)
    tampered = bytearray(blob)
    tampered[-5] ^= 1
    server.routes["/t"] = ok(bytes(tampered))
    with pytest.raises(dl.DownloadDecryptError):
        dl.download(server.url("/t"), tmp_path / "t", max_bytes=len(blob), decrypt=dec)
    assert not (tmp_path / "t").exists()


def test_upload_file_and_bytes(server: RawServer, tmp_path) -> None:
    def put_ok(conn: socket.socket, method: str, body: bytes) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 0\r\n\r\n')

    server.routes["/u"] = put_ok
    data = os.urandom((3 << 20) + 5)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    res = dl.upload_file(server.url("/u"), src)
    assert server.uploads["/u"] == data and res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.etag == '"abc"'
    dl.upload_file(server.url("/u"), b"small bytes")
    assert server.uploads["/u"] == b"small bytes"

    def too_big(conn: socket.socket, method: str, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")

    server.routes["/big"] = too_big
    with pytest.raises(dl.UploadError, match="413"):
        dl.upload_file(server.url("/big"), b"x" * 100)
    assert server.hits["/big"] == 1


def test_large_bodies_are_hashed_and_decrypted_in_a_second_thread(server: RawServer, tmp_path) -> None:
    # Above 4 MiB the body is hashed, decrypted and written by a consumer thread: same results,
    # same errors (raised in the caller), no thread left behind.
    threads_before = threading.active_count()
    body = os.urandom(9 << 20)
    server.routes["/big"] = ok(body)
    dest = tmp_path / "big.bin"
    res = dl.download(server.url("/big"), dest, max_bytes=10 << 20, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body and res.sha256 == hashlib.sha256(body).hexdigest()
    with pytest.raises(dl.DownloadHashMismatch):
        dl.download(server.url("/big"), tmp_path / "bad.bin", max_bytes=10 << 20, sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()

    key = crypto.derive_chunk_key(crypto.new_job_secret(), "j", "c")
    plain = os.urandom((8 << 20) + 5)
    blob = crypto.encrypt_bytes(plain, key, "j", "c")
    tampered = bytearray(blob)
    tampered[len(blob) // 3] ^= 1  # a segment in the middle: the thread fails, the caller raises
    server.routes["/enc"], server.routes["/tampered"] = ok(bytes(blob)), ok(bytes(tampered))
    dec = dl.Decryption("j", "c", key=key)
    res = dl.download(server.url("/enc"), tmp_path / "p", max_bytes=len(blob), decrypt=dec)
    assert (tmp_path / "p").read_bytes() == plain and res.plaintext_bytes == len(plain)
    with pytest.raises(dl.DownloadDecryptError):
        dl.download(server.url("/tampered"), tmp_path / "t", max_bytes=len(blob), decrypt=dec)
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.part").exists()

    def full_sink(data: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        dl.download(server.url("/big"), None, max_bytes=10 << 20, sink=full_sink)
    time.sleep(0.2)
    assert threading.active_count() <= threads_before + 1  # the server's own handler may linger
