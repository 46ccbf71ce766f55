"""Bad submissions fail with a one-line reason and move no money (real devnet and nodes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from fedswarm.demo import bundled_dataset
from fedswarm.devnet import Devnet
from fedswarm.roles.launcher import start_node, start_nodes

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "fedswarm" / "examples"
HB = ["--heartbeat", "0.5", "--peer-timeout", "3"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("bad")
    devnet = Devnet.start(root / "devnet")
    dn = ["--devnet-home", str(root / "devnet")]
    nodes = []
    try:
        boot = start_node("bootstrap", root / "bootstrap", extra_args=HB)
        nodes.append(boot)
        nodes += start_nodes([("client", root / "client", {"bootstrap": boot.addr, "extra_args": dn + HB})]
                             + [("trainer", root / f"t{i}", {"bootstrap": boot.addr,
                                                           "extra_args": [*dn, *HB, "--price-wei", str(10**15)]})
                                for i in range(2)])
        client = nodes[1]
        deadline = time.monotonic() + 60
        while sum(t["online"] for t in httpx.get(f"{client.api}/api/v1/trainers", timeout=10).json()["trainers"]) < 2:
            assert time.monotonic() < deadline, "trainers never appeared"
            time.sleep(0.3)
        data, _, _ = bundled_dataset("breast_cancer", root)
        yield devnet, client, data, root
    finally:
        for n in reversed(nodes):
            n.stop()
        devnet.stop()


def _submit(client, data: Path, terms: dict, model: dict | None = None, example: str | None = "breast_cancer"):  # type: ignore[no-untyped-def]
    files = {"dataset": (data.name, data.read_bytes())}
    form = {"terms": json.dumps({"trainers": 2, "standby": 0, "rounds": 1, **terms})}
    if model is not None:
        files["model"] = ("model.json", json.dumps(model).encode())  # type: ignore[assignment]
    elif example:
        form["example"] = example
    return httpx.post(f"{client.api}/api/v1/jobs", files=files, data=form, timeout=120)


def _money_state(devnet, client) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(devnet.state["chain"]["rpc_url"]))
    created = w3.eth.get_logs({"address": devnet.state["chain"]["contract_address"], "fromBlock": 0})
    return w3.eth.get_balance(client.info["address"]), len(created)


def _one_line(resp: httpx.Response, *needles: str) -> str:
    assert resp.status_code == 400, resp.text
    msg = resp.json()["error"]
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def test_refused_at_submission(network):  # type: ignore[no-untyped-def]
    devnet, client, data, root = network
    before = _money_state(devnet, client)

    _one_line(_submit(client, data, {"label": "no_such_column"}), "no_such_column")

    spec = json.loads((EXAMPLES / "breast_cancer.seq.json").read_text())
    huge = {**spec, "layers": [{"type": "Linear", "in_features": 30, "out_features": 3_000_000},
                               {"type": "ReLU"}, {"type": "Linear", "in_features": 3_000_000, "out_features": 2}]}
    _one_line(_submit(client, data, {"label": "label"}, model=huge), "model rejected")

    graph = _graph_with_unknown_op()
    msg = _one_line(_submit(client, data, {"label": "label"}, model=graph), "model rejected")
    assert "aten.fedswarm_not_an_op" in msg or "not allowed" in msg or "unknown" in msg

    assert _money_state(devnet, client) == before  # no escrow, no transaction
    jobs = httpx.get(f"{client.api}/api/v1/jobs", timeout=10).json()["jobs"]
    assert jobs == []  # a refused submission leaves no job behind


def test_price_cap_below_every_bid(network):  # type: ignore[no-untyped-def]
    devnet, client, data, root = network
    before = _money_state(devnet, client)
    resp = _submit(client, data, {"label": "label", "price_cap_wei": 1000})
    assert resp.status_code == 200
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 120
    while True:
        job = httpx.get(f"{client.api}/api/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("failed", "done"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job["state"] == "failed" and "price cap" in job["error"] and "\n" not in job["error"]
    assert _money_state(devnet, client) == before  # failed before escrow: nothing spent


def _graph_with_unknown_op() -> dict:
    import torch

    from fedswarm.learning.graph import export_model

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(30, 2)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.relu(self.fc(x))

    graph, _ = export_model(Tiny(), (torch.randn(2, 30),))
    text = json.dumps(graph)
    assert "aten.relu.default" in text
    return json.loads(text.replace("aten.relu.default", "aten.fedswarm_not_an_op.default"))
