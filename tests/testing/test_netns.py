"""The namespace test bed itself: hosts reach each other over the bridge, a cut link is a
blackhole that comes back, and nothing of a run is left behind (also after a crash)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedswarm.devnet.services import pid_alive
from fedswarm.testing import netns

REASON = netns.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CONNECT = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])); print('ok')"


def _connects(host: netns.Host, addr: str, port: int, timeout: float) -> bool:
    out = subprocess.run([*host.wrap, sys.executable, "-c", CONNECT, addr, str(port), str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 20)
    return out.stdout.strip() == "ok"


def test_hosts_reach_each_other_and_a_cut_link_is_a_blackhole(tmp_path: Path) -> None:
    bed = netns.Testbed(tmp_path).create()
    try:
        a, b = bed.add_host("a"), bed.add_host("b")
        assert a.addr != b.addr and a.addr.startswith(bed.subnet)
        server = subprocess.Popen([*b.wrap, sys.executable, "-m", "http.server", "--bind", b.addr, "8000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bed.nodes = []
        try:
            assert _wait_connects(a, b.addr, 8000)
            bed.cut("b")
            assert not _connects(a, b.addr, 8000, 1.5)  # no answer, no reset: the connect times out
            bed.restore("b")
            assert _wait_connects(a, b.addr, 8000)
        finally:
            server.kill()
            server.wait(10)
    finally:
        bed.close()
    assert netns.left_behind(bed.run) == []


def _wait_connects(host: netns.Host, addr: str, port: int) -> bool:
    return any(_connects(host, addr, port, 3.0) for _ in range(10))


def test_sweeper_removes_what_a_crashed_run_left(tmp_path: Path) -> None:
    # A child process builds a test bed with a process inside and dies without cleaning up.
    code = ("import sys, subprocess, os; from pathlib import Path; from fedswarm.testing import netns;"
            "bed = netns.Testbed(Path(sys.argv[1])).create(); h = bed.add_host('x');"
            "p = subprocess.Popen([*h.wrap, 'sleep', '600'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(bed.run, p.pid, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    run, pid = out.stdout.split()
    assert netns.left_behind(run), "the crashed run should have left its namespace and links"
    assert run in netns.sweep_stale()
    assert netns.left_behind(run) == []
    # The process inside was stopped (by pid) before its namespace went (a zombie counts as gone:
    # its parent, the crashed run, is not there to reap it).
    assert not pid_alive(int(pid))
