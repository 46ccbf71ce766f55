"""The API binds loopback by default; a token guards mutating calls; non-loopback needs one."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from fedswarm.roles.launcher import start_node

pytestmark = pytest.mark.slow


def test_token_required_for_mutating_calls(tmp_path):
    node = start_node("bootstrap", tmp_path / "b", env={"FEDSWARM_API_TOKEN": "s3cret-token"})
    try:
        assert node.api.startswith("http://127.0.0.1:")
        assert httpx.get(f"{node.api}/status", timeout=5).status_code == 200  # reads stay open
        r = httpx.post(f"{node.api}/command", json={"cmd": "local"}, timeout=5)
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = httpx.post(f"{node.api}/command", json={"cmd": "local"}, timeout=5,
                       headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.post(f"{node.api}/command", json={"cmd": "local"}, timeout=5,
                       headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert "s3cret-token" not in node.log_path.read_text()
    finally:
        node.stop()


def test_non_loopback_bind_without_token_refused(tmp_path):
    # 192.0.2.1 is TEST-NET-1: the node must refuse before binding anything.
    out = subprocess.run([sys.executable, "-m", "fedswarm.cli", "node", "bootstrap", "--home", str(tmp_path / "b"),
                          "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "192.0.2.1:0"],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 2
    assert "needs an API token" in out.stderr


def test_roles_without_backends_say_why(tmp_path):
    # No devnet at --devnet-home: the roles cannot fund a wallet or reach a ledger. The nodes
    # still serve the mesh; the client answers every job route with 503 and the reason, and
    # both say it in /status.
    empty = tmp_path / "no-devnet"
    empty.mkdir()
    boot = start_node("bootstrap", tmp_path / "b")
    nodes = [boot]
    try:
        client = start_node("client", tmp_path / "c", bootstrap=boot.addr,
                            extra_args=["--devnet-home", str(empty)])
        nodes.append(client)
        trainer = start_node("trainer", tmp_path / "t", bootstrap=boot.addr,
                             extra_args=["--devnet-home", str(empty), "--no-gpu"])
        nodes.append(trainer)
        for path in ("/api/v1/jobs", "/api/v1/jobs/job-0123456789ab"):
            r = httpx.get(f"{client.api}{path}", timeout=5)
            assert r.status_code == 503, r.text
            assert r.json()["error"].startswith("this client node cannot run jobs: no devnet found at")
        status = httpx.get(f"{client.api}/status", timeout=5).json()
        assert status["status"] == "running" and "no devnet found" in status["jobs_unavailable"]
        status = httpx.get(f"{trainer.api}/status", timeout=5).json()
        assert "no devnet found" in status["trainer"]["jobs_unavailable"]
    finally:
        for node in reversed(nodes):
            node.stop()
