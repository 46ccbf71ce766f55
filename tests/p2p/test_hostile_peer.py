"""End to end: an outside peer sends garbage to a whole network, which keeps working.

Real processes: devnet, bootstrap, client, three trainers, and the attacker
(``hostile_peer.py``, its own process with a fresh key). It publishes deep (100 KB of ``[``),
huge and random messages on every topic and sends random, oversized and deep RPC frames to
every node. Afterwards every node still answers ``/status``, has counted the attacker and
banned it, and a small paid job runs to the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedswarm.demo.run import DEFAULT_PRICE, _submit, _wait_mesh, bundled_dataset
from fedswarm.roles.launcher import start_node, start_nodes

pytestmark = pytest.mark.slow

ATTACKER = Path(__file__).with_name("hostile_peer.py")


def test_hostile_peer_changes_nothing(tmp_path: Path) -> None:
    from fedswarm.devnet import Devnet

    devnet = Devnet.start(tmp_path / "devnet")
    nodes = []
    try:
        dn = ["--devnet-home", str(tmp_path / "devnet")]
        hb = ["--heartbeat", "1", "--peer-timeout", "8"]
        boot = start_node("bootstrap", tmp_path / "bootstrap", extra_args=hb)
        nodes.append(boot)
        specs = [("client", tmp_path / "client", {"bootstrap": boot.addr, "extra_args": [*dn, *hb]})]
        specs += [("trainer", tmp_path / f"trainer{i}",
                   {"bootstrap": boot.addr, "extra_args": [*dn, *hb, "--no-gpu", "--price-wei", str(DEFAULT_PRICE + i)]})
                  for i in range(3)]
        started = start_nodes(specs)
        nodes += started
        client = started[0]
        _wait_mesh(client, 3)

        # Attack.
        argv = [sys.executable, str(ATTACKER), str(tmp_path / "attacker"), boot.addr, *(n.peer_id for n in nodes)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        attacker = report["peer_id"]
        assert report["published"] >= 9

        # Every node is up, counted the garbage and banned the attacker.
        for node in nodes:
            assert node.popen.poll() is None, f"{node.role} died"
            status = httpx.get(f"{node.api}/status", timeout=30).json()
            limits = status["limits"]
            counters = limits["counters"]
            assert attacker in limits["banned"], (node.role, limits)
            # strikes until the ban (gossip or RPC, whichever came first), refusals after it
            strikes = sum(counters.get(k, 0) for k in ("rpc_oversize", "rpc_bad_frame", "rpc_bad_request",
                                                       "rpc_unknown_type", "gossip_invalid", "gossip_oversize",
                                                       "gossip_rejected", "gossip_bad_frame"))
            refused = sum(counters.get(k, 0) for k in ("rpc_refused_banned", "ban_refused_connections",
                                                       "gossip_refused_banned", "gossip_dropped_banned"))
            assert strikes >= 10 and counters["bans"] >= 1, (node.role, counters)
            assert refused + counters.get("ban_disconnects", 0) >= 1, (node.role, counters)
            assert limits["recursion_limit"] <= 1000
            for answer in report["rpc"][node.peer_id]:
                assert "Traceback" not in answer
        boot_counters = httpx.get(f"{boot.api}/status", timeout=30).json()["limits"]["counters"]
        assert boot_counters.get("gossip_invalid", 0) + boot_counters.get("gossip_oversize", 0) >= 3, boot_counters

        # A small paid job still runs to the end.
        data, label, example = bundled_dataset("breast_cancer", tmp_path)
        terms = {"rounds": 2, "trainers": 2, "standby": 1, "strategy": "fedavg", "label": label,
                 "round_deadline_s": 60.0, "price_cap_wei": 10**16, "settle_window_s": 3600,
                 "local_epochs": 1, "batch_size": 32, "lr": 0.005}
        job_id = _submit(client, data, example, terms)
        deadline = time.monotonic() + 600
        job: dict = {}
        while time.monotonic() < deadline:
            job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=30).json()
            if job.get("state") in ("done", "failed", "cancelled"):
                break
            time.sleep(2)
        assert job.get("state") == "done", json.dumps(job)[:3000]
        for node in nodes:
            assert node.popen.poll() is None
    finally:
        for node in reversed(nodes):
            node.stop()
        devnet.stop()
