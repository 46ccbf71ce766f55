"""Smoke runs of `fedswarm bench p2p` and `fedswarm bench job` (real processes, quick sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _bench(layer: str, tmp_path: Path, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "fedswarm.cli", "--log-level", "WARNING", "bench", layer,
                           "--quick", "--json", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _latency_ok(s: dict) -> None:
    assert s["n"] > 0
    assert 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["max_ms"] < 30_000


def test_bench_p2p_quick(tmp_path: Path) -> None:
    out = _bench("p2p", tmp_path, 300)
    assert out["quick"] is True
    assert set(out["idle_rss_mb"]) == {"bootstrap", "client", "trainer"}
    assert all(20 < mb < 2000 for mb in out["idle_rss_mb"].values())
    for key in ("rpc_new_stream", "rpc_reused_stream", "pubsub_one_hop", "pubsub_two_hop"):
        _latency_ok(out[key])
    # A reused stream skips stream negotiation: it must not be slower than a new stream per call.
    assert out["rpc_reused_stream"]["median_ms"] <= out["rpc_new_stream"]["median_ms"]
    assert out["chain_direct_a_c"] is False  # the two-hop figure really went through B
    j = out["join_bootmesh_s"]
    assert 0 < j["from_ready"] <= j["from_spawn"] < 120
    assert list(tmp_path.iterdir()) == []  # scratch removed


@pytest.mark.timeout(1800)
def test_bench_job_quick(tmp_path: Path) -> None:
    out = _bench("job", tmp_path, 1700)
    assert out["trainers"] == 4 and out["nproc"] >= 1 and len(out["loadavg"]) == 3
    assert out["block_times"] == [0.0, 2.0]
    cells = {(c["model"], c["mode"], c["block_time"]): c for c in out["cells"]}
    # A fresh network: no trainer warms its worker before a bid is taken, so the first job is cold.
    assert out["cells"][0]["start"] == "cold" and out["cells"][0]["warm_workers"] == 0
    assert all(c["start"] in ("cold", "warm", "mixed") for c in out["cells"])
    assert set(cells) == {("mlp85k", mode, bt) for mode in ("noop", "train") for bt in (0.0, 2.0)}
    for c in cells.values():
        # the chain: one funding, batches, one completion, one release; never a tx per unit
        tx = c["transactions"]
        assert tx["fund"] == 1 and tx["complete"] == 1 and tx["release"] == 1, tx
        assert 1 <= tx["settle"] <= c["rounds"] < c["units_total"], tx
        assert c["released"] and c["balanced"], c
        assert c["num_params"] == 85_002 and c["rounds"] == out["rounds"]
        rw, ov = c["round_wall_s"], c["overhead_s"]
        assert 0 < rw["min"] <= rw["median"] <= rw["max"] < 600
        assert ov["median"] <= rw["median"]
        assert {"client", "trainers", "bootstrap", "devnet"} <= set(c["cpu_s_per_round"])
        assert all(v >= 0 for v in c["cpu_s_per_round"].values())
        assert c["cpu_s_per_round"]["trainers"] > 0
        assert 20 < c["trainer_rss_mb"]["idle"]["median"] <= c["trainer_rss_mb"]["peak"]["max"] < 8000
        assert c["store_bytes_per_round"] > 0
        assert c["time_to_first_round_s"] is None or c["time_to_first_round_s"] > 0
        assert len(c["per_round"]) == c["rounds"]
        for r in c["per_round"]:  # overhead is defined against the trainer-reported compute
            assert abs(r["overhead_s"] - (r["wall_s"] - r["slowest_trainer_s"])) < 1e-6
    # The train cell really trained (noop keeps the initial weights: chance level, ~0.1).
    train_acc, noop_acc = (cells[("mlp85k", "train", 2.0)]["final_accuracy"],
                           cells[("mlp85k", "noop", 2.0)]["final_accuracy"])
    assert train_acc is not None and noop_acc is not None and train_acc > noop_acc + 0.05
    g = out["goals"]
    assert isinstance(g["noop_overhead<1s"], bool) and isinstance(g["noop_round_ok"], bool)
    assert set(g["block_time_ratio"]) == {"mlp85k noop", "mlp85k train"}
    assert all(r > 0 for r in g["block_time_ratio"].values()) and g["no_tx_per_unit"] is True
    assert list(tmp_path.iterdir()) == []
