"""Where the project's non-Python tools (anvil, solc) live.

One directory, chosen in this order: the ``FEDSWARM_TOOLS_DIR`` setting (environment or
``.env``); the checkout's ``.tools/`` when fedswarm runs from a source checkout (``make tools``
installs there); else ``~/.fedswarm/tools`` (under ``FEDSWARM_ROOT``), so an installed package
does not look next to its own files. ``PATH`` is the last resort for each tool.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from socketserver import BaseServer
from typing import Any

from fedswarm.config import DEFAULT_ROOT, load_settings


def checkout_root() -> Path | None:
    """The repository root when this module runs from a source checkout (``src/`` layout)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "src" / "fedswarm" / "tools.py").is_file():
        return root
    return None


# The checkout (tests and scripts read contracts/ and scripts/ from it); None when installed.
REPO_ROOT = checkout_root()

# name -> path of the executable inside the tools dir (npm packages keep their own layout)
_KNOWN = {
    "anvil": "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
    "solcjs": "node_modules/solc/solc.js",
}


class ToolMissing(RuntimeError):
    """A required external tool is not installed."""


def tools_dir() -> Path:
    """The tools directory (see the module docstring for the order)."""
    configured = load_settings().tools_dir
    if configured is not None:
        return configured.expanduser()
    if REPO_ROOT is not None:
        return REPO_ROOT / ".tools"
    return DEFAULT_ROOT / "tools"


def tool_path(name: str) -> Path:
    """Absolute path of tool ``name``: the tools dir first, then ``PATH``; a clear error if absent."""
    where = tools_dir()
    rel = _KNOWN.get(name)
    if rel:
        p = where / rel
        if p.exists():
            return p
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"{name} is not installed: run `make tools` in a checkout, or install it "
                      f"into {where} (FEDSWARM_TOOLS_DIR chooses that folder) or on PATH")


def __getattr__(attr: str) -> Path:
    # TOOLS_DIR is read lazily: settings come from the environment at the time of use.
    if attr == "TOOLS_DIR":
        return tools_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def spawn_announcing(argv: list[str], log_path: Path, what: str, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a service process that prints one JSON line on stdout once it serves (its
    address), and wait for that line. stderr goes to ``log_path``. Raises RuntimeError naming
    ``what`` and the log when the process dies or says nothing within ``timeout``."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None and not sel.select(0):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{what} did not start (exit {proc.returncode}); see {log_path}")
        if sel.select(min(left, 0.5)):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk and proc.poll() is not None:
                continue
            line += chunk
    sel.close()
    proc.stdout.close()  # the service prints nothing else on stdout
    return proc, json.loads(line.decode())


def serve_announcing(server: BaseServer, info: dict[str, Any]) -> int:
    """The other half of :func:`spawn_announcing`, in the service process: print ``info`` as
    one JSON line on stdout, then serve until SIGTERM or SIGINT. Returns the exit status."""

    def _stop(signum: int, frame: object) -> None:
        # shutdown() blocks until serve_forever returns, so call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
