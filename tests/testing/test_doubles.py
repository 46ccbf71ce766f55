"""The fault-injecting doubles and how they are started (fast: no node processes)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedswarm.cli import build_parser
from fedswarm.learning.weights import load_weights_bytes, save_weights_bytes, save_weights_file
from fedswarm.roles.client import ClientRole
from fedswarm.roles.launcher import node_argv
from fedswarm.roles.trainer import TrainedUpdate, Trainer, UnitInputs
from fedswarm.testing import node as testing_node
from fedswarm.testing.client import NeverSettleClient
from fedswarm.testing.faults import (
    POISON_SCALE,
    LazyTrainer,
    PoisonTrainer,
    TrainerFault,
    faulty_trainer_class,
)


def _inputs(tmp_path: Path) -> tuple[UnitInputs, dict[str, np.ndarray]]:
    glob = {"w": np.zeros((4, 3), np.float32), "n": np.array(5, np.int64)}
    save_weights_file(tmp_path / "g.safetensors", glob)
    return UnitInputs(tmp_path / "g.safetensors", [], rows=40), glob


def _unit() -> Any:
    return SimpleNamespace(epochs=2, seed=1)  # the fields make_update reads


async def test_lazy_trainer_hands_back_the_global_weights_and_claims_the_samples(tmp_path: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    lazy = object.__new__(LazyTrainer)  # make_update needs none of the node's state

    out = await lazy.make_update(_unit(), inputs, deadline_s=30)

    assert out.data == inputs.global_path.read_bytes()
    assert (out.num_samples, out.train_loss, out.batches) == (80, None, 0)


async def test_poison_trainer_trains_then_blows_up_the_delta(tmp_path: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    honest = save_weights_bytes({"w": np.full((4, 3), 0.01, np.float32), "n": np.array(5, np.int64)})
    calls: list[float] = []

    async def train(wu: Any, inp: UnitInputs, deadline_s: float) -> TrainedUpdate:
        calls.append(deadline_s)
        return TrainedUpdate(honest, 80, 0.5, 3)

    poison = object.__new__(PoisonTrainer)
    poison._train = train  # type: ignore[method-assign]  # the worker is not started here

    out = await poison.make_update(_unit(), inputs, deadline_s=30)

    assert calls == [30]  # it did train (the honest path), then poisoned the result
    w = load_weights_bytes(out.data)["w"]
    assert w.shape == (4, 3) and np.abs(w).mean() > 0.01 * POISON_SCALE / 2
    assert (out.num_samples, out.train_loss, out.batches) == (80, 0.5, 3)


def test_fault_names_map_to_trainer_doubles() -> None:
    assert faulty_trainer_class("lazy") is LazyTrainer
    assert faulty_trainer_class("poison") is PoisonTrainer
    assert all(issubclass(faulty_trainer_class(f.value), Trainer) for f in TrainerFault)
    with pytest.raises(ValueError):
        faulty_trainer_class("kill")


async def test_never_settle_client_sends_nothing_to_the_chain() -> None:
    class NoChain:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the never-settle client touched the ledger ({name})")

    client = object.__new__(NeverSettleClient)
    client.svc = SimpleNamespace(ledger=NoChain(), escrow=NoChain())  # type: ignore[assignment]
    client.escrow = NoChain()  # type: ignore[assignment]
    job: Any = SimpleNamespace(job_id="j1", job_key="11" * 32)

    assert await client.submit_verdicts(job, []) is None
    assert await client.complete_job(job, b"{}", bytes(32)) is None
    # It overrides the role's settlement seam, which the honest client runs on chain.
    for seam in ("submit_verdicts", "complete_job"):
        assert getattr(NeverSettleClient, seam) is not getattr(ClientRole, seam)


def test_misregistering_clients_register_their_trainers_wrongly() -> None:
    from eth_account import Account

    from fedswarm.testing.client import MisregisteringClient, UnregisteringClient

    bids = [{"address": Account.create().address, "price_wei": 1000}]
    job: Any = SimpleNamespace(terms=SimpleNamespace(rounds=4), chosen=bids, standby=bids)
    honest = ClientRole.fund_trainers(object.__new__(ClientRole), job)
    assert [(t.trainer, t.price, t.units) for t in honest] == [(bids[0]["address"], 1000, 6),
                                                               (bids[0]["address"], 1000, 3)]

    cheap = MisregisteringClient.fund_trainers(object.__new__(MisregisteringClient), job)
    assert [(t.trainer, t.price, t.units) for t in cheap] == [(t.trainer, 999, t.units) for t in honest]
    strangers = UnregisteringClient.fund_trainers(object.__new__(UnregisteringClient), job)
    assert [t.price for t in strangers] == [1000, 1000]
    assert not {t.trainer for t in strangers} & {bids[0]["address"]}
    for fault in ("misregister-price", "misregister-absent"):
        args = testing_node.build_parser().parse_args(["node", "client", "--fault", fault])
        assert args.fault == fault


def test_the_normal_node_command_knows_no_faults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["node", "trainer"]).role == "trainer"
    with pytest.raises(SystemExit):
        parser.parse_args(["node", "trainer", "--fault", "lazy"])


def test_testing_node_takes_the_node_flags_plus_a_fault_for_its_role(capsys: pytest.CaptureFixture[str]) -> None:
    parser = testing_node.build_parser()
    args = parser.parse_args(["node", "trainer", "--fault", "poison", "--price-wei", "7", "--no-gpu"])
    assert (args.role, args.fault, args.price_wei, args.no_gpu) == ("trainer", "poison", 7, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["node", "trainer"])  # --fault is required
    args = parser.parse_args(["node", "client", "--fault", "never-settle"])
    assert (args.role, args.fault) == ("client", "never-settle")
    with pytest.raises(SystemExit):
        testing_node.main(["bootstrap", "--fault", "lazy"])  # no such double
    assert "has no fault" in capsys.readouterr().err


def test_launcher_starts_faulty_nodes_through_the_testing_entry_point(tmp_path: Path) -> None:
    honest = node_argv("trainer", tmp_path, "/ip4/127.0.0.1/tcp/0", "127.0.0.1:0", None, ["--no-gpu"])
    faulty = node_argv("trainer", tmp_path, "/ip4/127.0.0.1/tcp/0", "127.0.0.1:0", None, ["--no-gpu"],
                       fault="lazy")
    assert honest[:5] == [sys.executable, "-m", "fedswarm.cli", "node", "trainer"] and "--fault" not in honest
    assert faulty[:6] == [sys.executable, "-m", "fedswarm.testing.node", "trainer", "--fault", "lazy"]
    assert faulty[6:] == honest[5:]  # the same flags otherwise
