"""One logging setup for every process: rich console or JSON lines, libp2p routed in."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record (ts, level, logger, msg and any ``extra`` fields)."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip:
                out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO", json_lines: bool = False, name: str | None = None) -> None:
    """Configure the root logger once. libp2p sets ``propagate=False`` on import; undo it so its
    warnings reach our handlers (quietened to WARNING: it is noisy at INFO)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if json_lines:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        # stderr: stdout belongs to command output (JSON reports, tables)
        handler = RichHandler(console=Console(stderr=True), show_path=False,
                              rich_tracebacks=False, log_time_format="%H:%M:%S")
        if name:
            handler.setFormatter(logging.Formatter(f"[{name}] %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    route_libp2p_logging()
    # httpx logs every request URL at INFO, and presigned URLs carry signatures: never log them.
    for noisy in ("httpx", "httpcore", "hpack", "web3", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
    pin_recursion_limit()  # every process sets up logging first: the one place to do it


SANE_RECURSION_LIMIT = 1000  # CPython's default


def pin_recursion_limit(limit: int = SANE_RECURSION_LIMIT) -> None:
    """Keep the process's recursion limit at ``limit``, before and after py_ecc.

    py_ecc (under eth_account and web3) raises the limit to 100,000 when it is first imported,
    and at that depth CPython's C JSON decoder overflows the C stack (SIGSEGV, no
    ``RecursionError``) on ~75,000 nested ``[`` from outside. It is imported here, once, so
    that its side effect happens now and not in the middle of some later lazy import."""
    with contextlib.suppress(ImportError):
        import py_ecc  # noqa: F401  (imported for its side effect, which is then undone)
    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)


def route_libp2p_logging(level: int = logging.WARNING) -> None:
    """Send the ``libp2p`` logger tree through the root handlers at ``level``."""
    for lname in list(logging.root.manager.loggerDict):
        if lname == "libp2p" or lname.startswith("libp2p."):
            lg = logging.getLogger(lname)
            lg.propagate = True
            lg.handlers.clear()
            lg.setLevel(logging.NOTSET)  # some modules set their own level on import
    lg = logging.getLogger("libp2p")
    lg.setLevel(level)
    lg.propagate = True
    gs = logging.getLogger("libp2p.pubsub.gossipsub")
    if not any(isinstance(f, _DropRoutine) for f in gs.filters):
        gs.addFilter(_DropRoutine())


class _DropRoutine(logging.Filter):
    """Drops gossipsub's per-publish warning about its "pending" queue for peers not subscribed
    to a topic: by design most peers never subscribe to the heartbeat topic, the queue is
    bounded (see ``Node._build_host``), and a warning per publish cost more CPU than the
    publish itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("pending message queue for peer")
