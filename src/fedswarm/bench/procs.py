"""Process bookkeeping of `fedswarm bench all`: every process started is remembered (with its
descendants) so that all of them can be stopped by pid, even on failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


class Tracker:
    """Remembers every process started (and their descendants) so all can be stopped by pid."""

    def __init__(self) -> None:
        self.roots: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, float] = {}  # pid -> create_time (guards against pid reuse)

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                 cwd=cwd, start_new_session=True)
        self.roots.append(p)
        self.refresh()
        return p

    def refresh(self) -> None:
        import psutil

        for r in self.roots:
            try:
                root = psutil.Process(r.pid)
                for p in [root, *root.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every remembered process still alive (children first), then SIGKILL."""
        import psutil

        self.refresh()
        alive = []
        for pid, created in sorted(self.seen.items(), reverse=True):
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01:
                    alive.append(p)
            except psutil.Error:
                pass
        for p in alive:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=timeout)
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for r in self.roots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                r.wait(5)
        self.roots.clear()
        self.seen.clear()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signal_tree(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each process of ``pids`` and all its descendants (gone ones are skipped)."""
    import psutil

    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                p.send_signal(sig)
        except psutil.Error:
            pass
