"""Whole paid jobs end to end: devnet + bootstrap + client + trainers as real processes.

Each test runs `fedswarm demo` in-process (it starts and stops every process itself) and
checks the report against the chain and the audit log it read.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedswarm.demo import run_demo

pytestmark = pytest.mark.slow


def _assert_money_adds_up(report: dict) -> None:
    """The escrow v2 books, read from the chain: released, and deposited = paid + refunded to
    the wei; each trainer paid its registered price per unit settled or claimed, and withdrew it."""
    esc = report["escrow"]
    assert esc["released"] and esc["held_wei"] == 0, esc
    assert esc["deposited_wei"] == esc["paid_wei"] + esc["refunded_wei"] > 0, esc
    assert esc["balanced"] and esc["released_refund_wei"] is not None, esc
    for t in report["trainers"]:
        assert t["paid_wei"] == (t["units_accepted"] + t["units_claimed"]) * t["price_wei"], t
        assert t["withdrawn_wei"] == t["paid_wei"], t  # pulled its pay after the job
    assert sum(t["paid_wei"] for t in report["trainers"]) == esc["paid_wei"]


def _assert_no_chain_tx_per_unit(report: dict) -> None:
    """One funding, settlement in batches, one completion, one release (+ withdrawals)."""
    ch = report["chain"]
    tx = ch["transactions"]
    assert tx["fund"] == 1 and tx["complete"] == 1 and tx["release"] == 1, tx
    assert tx.get("claim", 0) == 0, tx  # an honest client settles inside the settle window
    assert 1 <= tx["settle"] <= len(report["rounds"]) < ch["units"], tx
    assert set(tx) <= {"fund", "add_trainers", "settle", "complete", "release", "withdraw"}, tx
    assert ch["gas"]["total"] > 0 and ch["claim_window_s"] == 10 and ch["settle_window_s"] == 30, ch


def _assert_trail_and_result(report: dict) -> None:
    assert report["audit"]["verified"] and report["audit"]["messages"] > 10
    states = report["audit"]["states"]
    # v2: deliveries are receipted off chain (nothing is committed on chain per unit)
    for state in ("prepared", "escrowed", "downloading", "training", "uploaded", "receipted", "delivered",
                  "round_settled", "done"):
        assert states.get(state, 0) >= 1, (state, states)
    res = report["result"]
    assert res["decrypted"] and res["other_key_refused"] and len(res["sha256"]) == 64


def test_breast_cancer_three_trainers(tmp_path):
    # The default devnet: a block every 2 s, like Hedera.
    report = run_demo(trainers=3, rounds=5, dataset="breast_cancer", workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    assert report["final"]["val_accuracy"] >= 0.95
    assert len(report["rounds"]) == 5 and all(r["accepted"] >= 3 for r in report["rounds"])
    _assert_money_adds_up(report)
    assert report["escrow"]["released_by"] == "operator", report["escrow"]  # the client's settler
    assert report["chain"]["block_time"] == 2.0
    _assert_no_chain_tx_per_unit(report)
    _assert_trail_and_result(report)


def test_digits_four_trainers(tmp_path):
    report = run_demo(trainers=4, rounds=5, dataset="digits", workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    assert report["final"]["val_accuracy"] >= 0.93
    # A trainer keeps its slot, so its chunk comes from the store once and from its cache after.
    fetched = sum(t.get("chunks_downloaded", 0) for t in report["trainers"])
    reused = sum(t.get("chunks_cached", 0) for t in report["trainers"])
    assert fetched > 0 and reused >= 3 * fetched, report["trainers"]
    _assert_money_adds_up(report)


@pytest.mark.parametrize("fault", ["poison", "lazy"])
def test_cheating_trainer_rejected_and_unpaid(tmp_path, fault):
    report = run_demo(trainers=3, rounds=5, faults=[fault], workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    assert report["final"]["val_accuracy"] >= 0.95
    cheaters = [t for t in report["trainers"] if t["units_committed"] and not t["units_accepted"]]
    assert len(cheaters) == 1 and cheaters[0]["paid_wei"] == 0 and cheaters[0]["units_rejected"] >= 5
    assert any("rejected" in line for line in report["faults"]["observed"])
    if fault == "lazy":  # caught against the client's reference (its step is zero), not by luck
        assert any("norm ratio to the reference" in line or "re-execution" in line
                   for line in report["faults"]["observed"]), report["faults"]
    _assert_money_adds_up(report)


def test_trainer_killed_mid_round(tmp_path):
    report = run_demo(trainers=3, rounds=4, faults=["kill"], workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    killed = report["faults"]["killed_peer"]
    assert sum(r["reassigned"] for r in report["rounds"]) >= 1
    dead = next(t for t in report["trainers"] if t["peer_id"] == killed)
    # paid only for what was settled before it died; its last unit never got paid
    assert dead["paid_wei"] == dead["units_accepted"] * dead["price_wei"]
    assert dead["units_accepted"] < 4
    assert report["final"]["val_accuracy"] >= 0.95
    esc = report["escrow"]
    assert esc["deposited_wei"] == esc["paid_wei"] + esc["refunded_wei"]


def test_client_restart_mid_round(tmp_path):
    # FedAdam keeps server state between rounds: the restart must not lose it.
    report = run_demo(trainers=3, rounds=4, faults=["client-restart"], strategy="fedadam",
                      workdir=tmp_path, quiet=True)
    assert report["ok"], report.get("error")
    assert any("restarted" in line for line in report["faults"]["observed"])
    _assert_money_adds_up(report)  # nothing paid twice: the contract and the chain checks agree
    for t in report["trainers"]:
        assert t["units_accepted"] <= 4
    _assert_fedadam_state_chain(tmp_path / "client", rounds=4)


def _assert_fedadam_state_chain(client_home, rounds: int) -> None:
    """Every round's global weights follow from the FedAdam state saved with them, and each
    state follows from the one before (m and v agree on the round's mean delta): a client
    that restarted with fresh moments would break the chain at the round after the restart."""
    from safetensors.numpy import load_file

    from fedswarm.learning.weights import flatten_state, load_weights_file

    (job_dir,) = [p for p in (client_home / "jobs").iterdir() if p.is_dir()]
    eta, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3  # FedAdam's defaults (the demo sets none)
    xs = [flatten_state(load_weights_file(job_dir / f"global-{r}.safetensors"))[0] for r in range(rounds + 1)]
    states = {r: load_file(str(job_dir / f"strategy-{r}.safetensors")) for r in range(1, rounds + 1)}
    m_prev, v_prev = np.zeros_like(xs[0]), np.full_like(xs[0], tau**2)
    for r in range(1, rounds + 1):
        m, v = states[r]["m"], states[r]["v"]
        np.testing.assert_allclose(xs[r], xs[r - 1] + eta * m / (np.sqrt(v) + tau), rtol=1e-5, atol=1e-6)
        delta = (m - b1 * m_prev) / (1 - b1)
        np.testing.assert_allclose(v, b2 * v_prev + (1 - b2) * delta**2, rtol=1e-3, atol=1e-9,
                                   err_msg=f"round {r - 1}: the server state does not follow the last one")
        m_prev, v_prev = m, v


def test_client_that_never_settles_is_claimed(tmp_path):
    report = run_demo(trainers=2, rounds=1, faults=["never-settle"], workdir=tmp_path, quiet=True)
    assert any("claimed" in line for line in report["faults"]["observed"]), report["faults"]
    paid = [t for t in report["trainers"] if t["paid_wei"]]
    assert len(paid) >= 2
