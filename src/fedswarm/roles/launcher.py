"""Start node processes and wait until they are ready (used by `fedswarm demo`, tests, benches)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fedswarm.config import NODE_INFO_FILE


@dataclass
class NodeProcess:
    """A node running in its own OS process."""

    role: str
    home: Path
    popen: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path

    @property
    def api(self) -> str:
        return self.info["api"]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    @property
    def fault(self) -> str | None:
        """The fault this node injects (started with ``fault=...``), None for an honest node."""
        args = [str(a) for a in self.popen.args]  # type: ignore[union-attr]
        return args[args.index("--fault") + 1] if "--fault" in args else None

    def command(self, cmd: str, *args: Any, timeout: float = 10.0) -> dict[str, Any]:
        r = httpx.post(f"{self.api}/command", json={"cmd": cmd, "args": list(args)}, timeout=timeout)
        return r.json()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGCONT)
                self.popen.terminate()
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass


# `fedswarm node ROLE ...`, and the same node with a fault-injecting double of its role (the
# testing layer's entry point: same flags plus --fault). A module name, not an import: roles
# know nothing of the doubles.
NODE_ENTRY = ("-m", "fedswarm.cli", "node")
FAULTY_NODE_ENTRY = ("-m", "fedswarm.testing.node")


def node_argv(role: str, home: Path, listen: str, api: str, bootstrap: str | None, extra: list[str] | None,
              *, fault: str | None = None) -> list[str]:
    """The command line of a node process; with ``fault`` it runs the faulty double of ``role``."""
    if fault is None:
        argv = [sys.executable, *NODE_ENTRY, role]
    else:
        argv = [sys.executable, *FAULTY_NODE_ENTRY, role, "--fault", fault]
    argv += ["--home", str(home), "--listen", listen, "--api", api]
    if bootstrap:
        argv += ["--bootstrap", bootstrap]
    return argv + list(extra or [])


def spawn_node(
    role: str,
    home: Path,
    *,
    listen: str = "/ip4/127.0.0.1/tcp/0",
    api: str = "127.0.0.1:0",
    bootstrap: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    fault: str | None = None,
    wrap: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Spawn ``fedswarm node ROLE`` without waiting; pair with :func:`wait_ready`.

    ``fault`` (``poison``, ``lazy`` for a trainer; ``never-settle`` for a client) starts the
    node through ``python -m fedswarm.testing.node`` with that fault-injecting double instead.
    ``wrap`` prefixes the command line with a command that execs it (``ip netns exec NS``: the
    node then runs in that network namespace, under the same pid).
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / NODE_INFO_FILE).unlink(missing_ok=True)
    log_path = home / "node.log"
    logf = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    argv = [*(wrap or []), *node_argv(role, home, listen, api, bootstrap, extra_args, fault=fault)]
    popen = subprocess.Popen(argv,
                             stdout=logf, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    logf.close()
    return popen, log_path


def wait_ready(role: str, home: Path, popen: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> NodeProcess:
    """Wait for the node's ``node.json`` (written once it listens); raises on early exit."""
    info_path = Path(home) / NODE_INFO_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{role} node exited with code {popen.returncode}:\n{tail}")
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text())
            except json.JSONDecodeError:
                info = {}
            if info.get("pid") == popen.pid:
                return NodeProcess(role, Path(home), popen, info, log_path)
        time.sleep(0.05)
    popen.kill()
    raise RuntimeError(f"{role} node did not become ready within {timeout:.0f} s (log: {log_path})")


def start_node(role: str, home: Path, *, timeout: float = 60.0, **kwargs: Any) -> NodeProcess:
    """Spawn a node and wait until it is ready."""
    popen, log_path = spawn_node(role, home, **kwargs)
    return wait_ready(role, home, popen, log_path, timeout)


def start_nodes(specs: list[tuple[str, Path, dict[str, Any]]], timeout: float = 90.0) -> list[NodeProcess]:
    """Spawn several nodes at once (Python start-up dominates) and wait for all of them."""
    spawned = [(role, home, *spawn_node(role, home, **kw)) for role, home, kw in specs]
    out: list[NodeProcess] = []
    try:
        for role, home, popen, log_path in spawned:
            out.append(wait_ready(role, home, popen, log_path, timeout))
    except Exception:
        for _, _, popen, _ in spawned:
            if popen.poll() is None:
                popen.kill()
        raise
    return out
