"""`fedswarm store ...`: put a file, fetch a presigned URL, presign a key; either backend.

The backend comes from `make_object_store`: with ``--home DIR`` (or ``FEDSWARM_DEVNET_HOME``)
the devnet store of a running ``fedswarm devnet up --home DIR``; with S3 settings, S3/Akave.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

from fedswarm.storage.base import StoreError, validate_key

DEFAULT_TTL_S = 3600
DEFAULT_MAX_PUT_BYTES = 1 << 30
DEFAULT_MAX_GET_BYTES = 64 << 30
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
    get.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_GET_BYTES,
                     help=f"refuse bodies larger than this (default {DEFAULT_MAX_GET_BYTES})")
    get.add_argument("--sha256", default=None, help="expected sha256 of the body")
    get.add_argument("--deadline", type=float, default=3600.0,
                     help="total seconds allowed for the download (default 3600)")
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
    """Download a presigned URL into ``-o FILE`` through the bounded downloader (byte cap,
    total deadline, no redirects, retries, optional sha256 check)."""
    import threading

    from fedswarm.storage.download import DownloadError, download

    out: Path = args.output
    part = out.with_name(out.name + ".part")  # where download() streams before renaming
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["ok"] = download(args.url, out, max_bytes=args.max_bytes, sha256=args.sha256,
                                    deadline_s=args.deadline)
        except DownloadError as exc:
            result["error"] = str(exc)
        except OSError as exc:
            result["error"] = f"cannot write {out}: {exc.strerror}"

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    # The downloader has no progress hook; the bar follows the size of its .part file.
    with _progress(None, f"get {out.name}", force=True) as advance:
        while worker.is_alive():
            worker.join(0.2)
            with contextlib.suppress(OSError):  # no .part file yet
                advance(0, part.stat().st_size)
    if "error" in result:
        return _fail(result["error"])
    res = result["ok"]
    if args.json:
        print(json.dumps({"file": str(out), "size": res.bytes_received, "sha256": res.sha256}))
    else:
        print(f"{out} {res.bytes_received} bytes sha256 {res.sha256}")
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

    def close(self) -> None:
        pass  # the command closes the file it opened


class _progress:
    """Context manager yielding ``advance(n, absolute=None)``; a rich bar for big transfers
    on a terminal, a no-op otherwise."""

    def __init__(self, total: int | None, label: str, force: bool = False) -> None:
        self.total = total
        self.force = force
        self.label = label
        self._bar: Any = None

    def __enter__(self) -> Any:
        big = self.force or (self.total or 0) >= PROGRESS_MIN_BYTES
        if not (big and sys.stderr.isatty()):
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
