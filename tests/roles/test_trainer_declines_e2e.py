"""Trainers decline jobs the chain does not fund as they bid (real devnet, client and trainer
processes): a client that registers its trainers 1 wei under their bids gets no work done, and
a trainer whose settle-window limit the job exceeds declines while a standby takes its unit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedswarm.demo import bundled_dataset
from fedswarm.devnet import Devnet
from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes
from fedswarm.roles.trainer.records import TrainerDB

pytestmark = pytest.mark.slow
HB = ["--heartbeat", "0.5", "--peer-timeout", "3"]
PRICE = 10**15


@pytest.fixture(scope="module")
def network(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("declines")
    devnet = Devnet.start(root / "devnet")
    dn = ["--devnet-home", str(root / "devnet")]
    nodes: list[NodeProcess] = []
    try:
        boot = start_node("bootstrap", root / "bootstrap", extra_args=HB)
        nodes.append(boot)
        nodes += start_nodes([
            ("client", root / "cheap", {"bootstrap": boot.addr, "extra_args": dn + HB, "fault": "misregister-price"}),
            ("client", root / "honest", {"bootstrap": boot.addr, "extra_args": dn + HB}),
            ("trainer", root / "t0", {"bootstrap": boot.addr, "extra_args": [*dn, *HB, "--price-wei", str(PRICE)]}),
            # Cheaper (chosen first) but accepts settle windows of a minute at most.
            ("trainer", root / "t1", {"bootstrap": boot.addr, "extra_args": [
                *dn, *HB, "--price-wei", str(PRICE - 10**13), "--max-settle-window", "60"]}),
        ])
        for client in nodes[1:3]:
            deadline = time.monotonic() + 60
            while sum(t["online"] for t in httpx.get(f"{client.api}/api/v1/trainers", timeout=10).json()["trainers"]) < 2:
                assert time.monotonic() < deadline, "trainers never appeared"
                time.sleep(0.3)
        data, _, _ = bundled_dataset("breast_cancer", root)
        yield {"cheap": nodes[1], "honest": nodes[2], "t0": nodes[3], "t1": nodes[4], "data": data}
    finally:
        for n in reversed(nodes):
            n.stop()
        devnet.stop()


def _run_job(client: NodeProcess, data: Path, terms: dict[str, Any], timeout: float = 400) -> dict[str, Any]:
    form = {"terms": json.dumps({"rounds": 1, "label": "label", "round_deadline_s": 60, **terms}),
            "example": "breast_cancer"}
    resp = httpx.post(f"{client.api}/api/v1/jobs", files={"dataset": (data.name, data.read_bytes())},
                      data=form, timeout=120)
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("failed", "done", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(1)


def _declined(trainer: NodeProcess, job_id: str) -> tuple[str | None, list[Any]]:
    db = TrainerDB(trainer.home / "trainer.db")
    try:
        job = db.job(job_id)
        return (job.declined if job else None), db.units(job_id=job_id)
    finally:
        db.close()


def test_trainers_registered_under_their_price_do_no_work(network) -> None:  # type: ignore[no-untyped-def]
    job = _run_job(network["cheap"], network["data"], {"trainers": 2, "standby": 0})

    assert job["state"] != "done", job
    for name in ("t0", "t1"):
        declined, units = _declined(network[name], job["job_id"])
        assert declined and "registered at" in declined and "we bid" in declined, (name, declined)
        assert units == [], (name, units)  # it trained nothing
        status = httpx.get(f"{network[name].api}/status", timeout=10).json()
        assert status["trainer"]["stats"].get("units_declined", 0) >= 1


def test_a_settle_window_over_the_limit_is_declined_and_the_standby_trains(network) -> None:  # type: ignore[no-untyped-def]
    job = _run_job(network["honest"], network["data"], {"trainers": 1, "standby": 1, "settle_window_s": 3600})

    declined, units = _declined(network["t1"], job["job_id"])
    assert declined and "settle window 3600 s is over our limit of 60 s" in declined, declined
    assert units == []
    _, done = _declined(network["t0"], job["job_id"])
    assert done and all(u.state.value in ("delivered", "receipted", "paid", "claimed") for u in done), done
    assert job["state"] == "done", job
