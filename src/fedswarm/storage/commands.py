"""`fedswarm store ...`: put a file, fetch a presigned URL, presign a key; either backend.

The backend comes from `make_object_store`: with ``--home DIR`` (or ``FEDSWARM_DEVNET_HOME``)
the devnet store of a running ``fedswarm devnet up --home DIR``; with S3 settings, S3/Akave.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

from fedswarm.storage.base import StoreError, validate_key

DEFAULT_TTL_S = 3600
DEFAULT_MAX_PUT_BYTES = 1 << 30
# Below this size a progress bar is just noise.
PROGRESS_MIN_BYTES = 8 << 20


def register(subparsers: Any) -> None:
    """Add ``store put|get|presign`` to the CLI."""
    store = subparsers.add_parser("store", help="object store: upload, download, presign")
    sub = store.add_subparsers(dest="store_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", default=None,
                       help="devnet home of a running `fedswarm devnet up --home DIR`")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    put = sub.add_parser("put", help="upload FILE; print its key and a presigned GET URL")
    put.add_argument("file", type=Path)
    put.add_argument("--key", default=None, help="object key (default uploads/<file name>)")
    put.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="URL lifetime, seconds")
    common(put)
    put.set_defaults(func=cmd_put)

    get = sub.add_parser("get", help="download a presigned URL to a file")
    get.add_argument("url")
    get.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    get.add_argument("--max-bytes", type=int, default=None, help="refuse bodies larger than this")
    common(get)
    get.set_defaults(func=cmd_get)

    pre = sub.add_parser("presign", help="print a presigned GET (or --put) URL for KEY")
    pre.add_argument("key")
    pre.add_argument("--put", action="store_true", help="a PUT URL instead of GET")
    pre.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="URL lifetime, seconds")
    pre.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_PUT_BYTES,
                     help="largest body a PUT URL accepts (devnet store enforces it)")
    common(pre)
    pre.set_defaults(func=cmd_presign)

    store.set_defaults(func=lambda args: (store.print_help(), 2)[1])


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fedswarm.config import load_settings
    from fedswarm.storage.factory import make_object_store

    return make_object_store(load_settings(FEDSWARM_DEVNET_HOME=args.home))


def _fail(msg: str) -> int:
    print(f"fedswarm: {msg}", file=sys.stderr)
    return 1


def default_key(path: Path) -> str:
    """``uploads/<file name>`` with characters outside the key charset replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9._\-]", "_", path.name).lstrip(".") or "file"
    return f"uploads/{name}"


def cmd_put(args: argparse.Namespace) -> int:
    """Upload a file with a progress bar; print key and a presigned GET URL."""
    path: Path = args.file
    if not path.is_file():
        return _fail(f"cannot upload {path}: not a file")
    try:
        key = validate_key(args.key or default_key(path))
        store = _store(args)
        size = path.stat().st_size
        with path.open("rb") as fh, _progress(size, f"put {key}") as advance:
            info = store.put(key, _ProgressReader(fh, advance), content_length=size)
        url = store.presign_get(key, args.ttl)
    except (StoreError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"key": key, "url": url, "size": info.size, "sha256": info.sha256}))
    else:
        print(key)
        print(url)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """Download a presigned URL (streaming, size-capped) into ``-o FILE``."""
    import hashlib

    import httpx

    if not args.url.startswith(("http://", "https://")):
        return _fail(f"{args.url[:80]!r} is not an http(s) URL")
    out: Path = args.output
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    got = 0
    try:
        with httpx.stream("GET", args.url, follow_redirects=False,
                          timeout=httpx.Timeout(60.0, connect=10.0)) as resp:
            if resp.status_code != 200:
                resp.read()
                return _fail(f"download refused: HTTP {resp.status_code} "
                             f"({_short(resp.text)}); the URL may be expired or wrong")
            total = int(resp.headers.get("content-length") or 0) or None
            cap = args.max_bytes
            if cap is not None and total is not None and total > cap:
                return _fail(f"object is {total} bytes, over --max-bytes {cap}")
            with tmp.open("wb") as fh, _progress(total, f"get {out.name}") as advance:
                for chunk in resp.iter_bytes(1 << 20):
                    got += len(chunk)
                    if cap is not None and got > cap:
                        return _fail(f"body exceeds --max-bytes {cap}; nothing written")
                    h.update(chunk)
                    fh.write(chunk)
                    advance(len(chunk))
            expected = resp.headers.get("x-fedswarm-sha256")
            if expected and expected != h.hexdigest():
                return _fail("downloaded bytes do not match the store's sha256; retry")
        os.replace(tmp, out)
    except httpx.HTTPError as exc:
        return _fail(f"download failed: {type(exc).__name__}: {exc}")
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror}")
    finally:
        tmp.unlink(missing_ok=True)
    if args.json:
        print(json.dumps({"file": str(out), "size": got, "sha256": h.hexdigest()}))
    else:
        print(f"{out} {got} bytes sha256 {h.hexdigest()}")
    return 0


def cmd_presign(args: argparse.Namespace) -> int:
    """Print a presigned GET or PUT URL."""
    try:
        store = _store(args)
        if args.put:
            url = store.presign_put(args.key, args.ttl, args.max_bytes)
        else:
            url = store.presign_get(args.key, args.ttl)
    except (StoreError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"key": args.key, "url": url, "method": "PUT" if args.put else "GET"}))
    else:
        print(url)
    return 0


def _short(text: str) -> str:
    return " ".join(text.split())[:160]


class _ProgressReader:
    """A file wrapper reporting the read position; seekable if the file is (S3 seeks)."""

    def __init__(self, fh: BinaryIO, advance: Any) -> None:
        self._fh = fh
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._advance(0, self._fh.tell())
        return data

    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readable(self) -> bool:
        return True


class _progress:
    """Context manager yielding ``advance(n, absolute=None)``; a rich bar for big transfers
    on a terminal, a no-op otherwise."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not (self.total and self.total >= PROGRESS_MIN_BYTES and sys.stderr.isatty()):
            return lambda n, absolute=None: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TransferSpeedColumn,
        )

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             DownloadColumn(), TransferSpeedColumn(), transient=True,
                             console=Console(stderr=True))
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)

        def advance(n: int, absolute: int | None = None) -> None:
            if absolute is not None:
                self._bar.update(task, completed=min(absolute, self.total or absolute))
            else:
                self._bar.advance(task, n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
