"""A network test bed on one Linux machine: every node on a host of its own.

A Linux bridge in the root namespace (address ``10.S.0.1``) and one network namespace per
"host", each joined to the bridge by a veth pair and given its own address ``10.S.0.N``. The
devnet services (store, anvil, audit log) run on a host of their own, nodes run with the
normal CLI under ``ip netns exec``; the test process (root namespace) reaches every API over
the bridge. A link is cut with ``ip link set DEV down`` on the bridge side of the host's veth:
packets are dropped both ways and nothing is reset (a blackhole, like a closed laptop or a
dead Wi-Fi), and ``tc tbf`` limits a host's uplink.

Everything a :class:`Testbed` creates carries a per-run name prefix that holds the creating
pid (``fsnet-<pid>-…`` namespaces, ``fsn<pid>…`` links), so :meth:`Testbed.close` removes it
all even after a failure and :func:`sweep_stale` removes what a crashed run left. Needs root
(``CAP_NET_ADMIN``) and iproute2; :func:`unavailable_reason` says in one line why not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedswarm.devnet.services import pid_alive
from fedswarm.roles.launcher import NodeProcess, spawn_node, wait_ready

NS_PREFIX = "fsnet-"
LINK_PREFIX = "fsn"
API_PORT = 8080
P2P_PORT = 4001
SUBNET_LOCK = "/tmp/fedswarm-netns-subnet.lock"
API_TOKEN = "netns-testbed-token"  # the nodes' APIs bind the bridge: a token is required


class TestbedError(RuntimeError):
    """A namespace, link or process of the test bed could not be set up."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise TestbedError(f"ip {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (one line), or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN)"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()[:120]}"
        link = _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if link.returncode != 0:
            return f"cannot create a veth pair: {link.stderr.strip()[:120]}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def _kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remove_run(run: str) -> None:
    """Remove every namespace and link of run ``run`` (its processes first, by pid)."""
    names = [n.split()[0] for n in _ip("netns", "list", check=False).stdout.splitlines() if n.strip()]
    mine = [n for n in names if n.startswith(f"{NS_PREFIX}{run}-")]
    for ns in mine:  # a process keeps a deleted namespace alive: stop them all first
        _kill_pids(_ns_pids(ns))
    for ns in mine:
        _ip("netns", "del", ns, check=False)
    links = _ip("-o", "link", "show", check=False).stdout
    for name in re.findall(rf"^\d+: ({LINK_PREFIX}{run}[a-z]\w*)[@:]", links, re.M):
        _ip("link", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of test-bed runs whose creating process is gone."""
    names = [n.split()[0] for n in _ip("netns", "list", check=False).stdout.splitlines() if n.strip()]
    runs = {m.group(1) for n in names if (m := re.match(rf"{NS_PREFIX}(\d+)-", n))}
    links = _ip("-o", "link", "show", check=False).stdout
    runs |= set(re.findall(rf"^\d+: {LINK_PREFIX}(\d+)[a-z]", links, re.M))
    stale = sorted(r for r in runs if not pid_alive(int(r)))
    for run in stale:
        remove_run(run)
    return stale


@dataclass
class Host:
    """One namespace on the bridge: its name, address and the bridge side of its link."""

    label: str
    ns: str
    addr: str
    dev: str

    @property
    def wrap(self) -> list[str]:
        """Prefix that runs a command inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns]


@dataclass
class Testbed:
    """The bridge, the hosts and the processes of one run (see the module docstring)."""

    workdir: Path
    run: str = field(default_factory=lambda: str(os.getpid()))
    hosts: dict[str, Host] = field(default_factory=dict)
    nodes: list[NodeProcess] = field(default_factory=list)
    devnet_proc: subprocess.Popen[bytes] | None = None
    devnet_home: Path | None = None
    subnet: str = ""

    @property
    def bridge(self) -> str:
        return f"{LINK_PREFIX}{self.run}br"

    def create(self) -> Testbed:
        """Make the bridge (addressed in the root namespace) on a 10.S.0.0/24 not in use."""
        remove_run(self.run)  # a previous test bed of this very process, left half-built
        # Test beds of parallel runs (pytest-xdist workers) pick their subnets one at a time.
        with open(SUBNET_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _ip("-o", "-4", "addr", "show", check=False).stdout
            free = [s for s in range(200, 250) if f"inet 10.{s}." not in used]
            if not free:
                raise TestbedError("no free 10.S.0.0/24 subnet (S in 200-249) for the test bed")
            self.subnet = f"10.{free[0]}.0"
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, label: str) -> Host:
        """A namespace joined to the bridge with the next free address."""
        n = len(self.hosts) + 2
        host = Host(label, f"{NS_PREFIX}{self.run}-{label}", f"{self.subnet}.{n}", f"{LINK_PREFIX}{self.run}v{n}")
        _ip("netns", "add", host.ns)
        self.hosts[label] = host
        _ip("link", "add", host.dev, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.dev, "master", self.bridge, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    # -- faults

    def cut(self, label: str) -> None:
        """Blackhole ``label``'s link: nothing in or out, no reset."""
        _ip("link", "set", self.hosts[label].dev, "down")

    def restore(self, label: str) -> None:
        """Bring ``label``'s link back."""
        _ip("link", "set", self.hosts[label].dev, "up")

    def limit_uplink(self, label: str, kbit: int) -> None:
        """Cap what ``label`` sends at ``kbit`` kbit/s (tbf on its side of the link)."""
        burst = max(16, kbit // 8)  # ~1/8 s of traffic: a tight bucket, no long bursts
        subprocess.run([*self.hosts[label].wrap, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                        "rate", f"{kbit}kbit", "burst", f"{burst}kbit", "latency", "500ms"],
                       check=True, capture_output=True, timeout=30)

    def unlimit_uplink(self, label: str) -> None:
        """Remove ``label``'s uplink cap."""
        subprocess.run([*self.hosts[label].wrap, "tc", "qdisc", "del", "dev", "eth0", "root"],
                       check=False, capture_output=True, timeout=30)

    # -- processes

    def start_devnet(self, label: str = "services", block_time: float = 0.0, timeout: float = 120.0) -> dict[str, Any]:
        """``fedswarm devnet up`` on host ``label`` bound to its address; returns devnet.json."""
        host = self.hosts.get(label) or self.add_host(label)
        self.devnet_home = self.workdir / "devnet"
        self.devnet_home.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "devnet-up.log", "ab")  # noqa: SIM115 - the child owns it
        self.devnet_proc = subprocess.Popen(
            [*host.wrap, sys.executable, "-m", "fedswarm.cli", "devnet", "up", "--home", str(self.devnet_home),
             "--host", host.addr, "--block-time", str(block_time)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        state_path = self.devnet_home / "devnet.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.devnet_proc.poll() is not None:
                tail = (self.workdir / "devnet-up.log").read_text(errors="replace")[-1500:]
                raise TestbedError(f"devnet exited with code {self.devnet_proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_path.read_text())
                if state.get("owner_pid") == self.devnet_proc.pid and not state.get("stopped_at"):
                    return state
            time.sleep(0.1)
        raise TestbedError(f"devnet did not come up within {timeout:.0f} s")

    def spawn(self, role: str, label: str, extra: list[str], bootstrap: str | None = None,
              fault: str | None = None) -> tuple[str, Path, subprocess.Popen[bytes], Path]:
        """Spawn a node on a new host ``label`` (pair with :meth:`wait`)."""
        host = self.add_host(label)
        home = self.workdir / label
        assert self.devnet_home is not None, "start the devnet first"
        popen, log = spawn_node(
            role, home, listen=f"/ip4/{host.addr}/tcp/{P2P_PORT}", api=f"{host.addr}:{API_PORT}",
            bootstrap=bootstrap, extra_args=["--devnet-home", str(self.devnet_home), *extra],
            env={"FEDSWARM_API_TOKEN": API_TOKEN}, fault=fault, wrap=host.wrap)
        return role, home, popen, log

    def wait(self, spawned: tuple[str, Path, subprocess.Popen[bytes], Path], timeout: float = 90.0) -> NodeProcess:
        """Wait until a spawned node is ready; it is stopped by :meth:`close`."""
        role, home, popen, log = spawned
        try:
            node = wait_ready(role, home, popen, log, timeout)
        except Exception:
            _kill_pids([popen.pid])
            raise
        self.nodes.append(node)
        return node

    def close(self) -> None:
        """Stop every process (by pid), then remove every namespace and link of this run."""
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        if self.devnet_proc is not None and self.devnet_proc.poll() is None:
            _kill_pids([self.devnet_proc.pid], timeout=15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.devnet_proc.wait(5)
        if self.devnet_home is not None:  # services a killed `devnet up` left running
            with contextlib.suppress(OSError, ValueError):
                pids = json.loads((self.devnet_home / "devnet.json").read_text()).get("pids") or {}
                _kill_pids([p for p in pids.values() if isinstance(p, int) and pid_alive(p)])
        remove_run(self.run)


def api(node: NodeProcess, method: str, path: str, timeout: float = 30.0, **kw: Any) -> httpx.Response:
    """Call a test-bed node's API (with the test bed's token)."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    return httpx.request(method, f"{node.api}{path}", headers=headers, timeout=timeout, **kw)


def left_behind(run: str) -> list[str]:
    """Namespaces and links of ``run`` that still exist (empty after a clean :meth:`Testbed.close`)."""
    names = [n.split()[0] for n in _ip("netns", "list", check=False).stdout.splitlines() if n.strip()]
    links = _ip("-o", "link", "show", check=False).stdout
    return ([n for n in names if n.startswith(f"{NS_PREFIX}{run}-")]
            + re.findall(rf"^\d+: ({LINK_PREFIX}{run}[a-z]\w*)[@:]", links, re.M))
