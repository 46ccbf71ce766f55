"""Settlement v2 end to end: a devnet (mining per transaction), a bootstrap, a client and
trainers as real processes; every money figure is read back from the chain.

Windows are the shortest the devnet allows (settle 10 s, claim: the deployment's minimum), so
receipts become claimable and jobs releasable within a test.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from web3 import Web3

from fedswarm.demo import chain
from fedswarm.demo.run import _submit, _wait_mesh, bundled_dataset
from fedswarm.devnet import Devnet
from fedswarm.ledger.escrow import EscrowV2, JobStatusV2, JobTerms, TrainerTerms, job_key_of
from fedswarm.ledger.escrow_books import JobBooks, job_books
from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes

pytestmark = pytest.mark.slow
PRICE = 10**15
SETTLE_S = 10


@dataclass
class Swarm:
    root: Path
    devnet: Devnet
    client: NodeProcess
    trainers: list[NodeProcess]
    nodes: list[NodeProcess] = field(default_factory=list)

    def get(self, job_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.client.api}/api/v1/jobs/{job_id}", timeout=30).json()

    def wait(self, job_id: str, until: Any, timeout: float = 240, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                job = self.get(job_id)
                if until(job):
                    return job
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what or until}: state {job.get('state')}, "
                             f"error {job.get('error')}, escrow {job.get('escrow')}")

    def submit(self, **terms: Any) -> str:
        data, label, example = bundled_dataset("breast_cancer", self.root)
        base = {"rounds": 2, "trainers": 2, "standby": 0, "label": label, "round_deadline_s": 60.0,
                "price_cap_wei": 10**16, "settle_window_s": SETTLE_S,
                "claim_window_s": int(self.devnet.state["chain"]["escrow_v2_min_claim_window"]),
                "local_epochs": 1, "batch_size": 32, "lr": 0.005}
        return _submit(self.client, data, example, {**base, **terms})

    def escrow(self, key: str | None = None) -> EscrowV2:
        return chain.reader(self.devnet, key)

    def books(self, job: dict[str, Any]) -> JobBooks:
        return job_books(self.escrow(), bytes.fromhex(job["escrow"]["job_key"]))


def _start(root: Path, trainers: int, client_fault: str | None = None, hedera_units: bool = False,
           client_env: dict[str, str] | None = None) -> Swarm:
    devnet = Devnet.start(root / "devnet", block_time=0, hedera_units=hedera_units)
    nodes: list[NodeProcess] = []
    try:
        dn = ["--devnet-home", str(root / "devnet")]
        hb = ["--heartbeat", "1", "--peer-timeout", "8"]
        boot = start_node("bootstrap", root / "bootstrap", extra_args=hb)
        nodes.append(boot)
        fault = {"fault": client_fault} if client_fault else {}
        specs: list[tuple[str, Path, dict[str, Any]]] = [
            ("client", root / "client", {"bootstrap": boot.addr, "extra_args": [*dn, *hb], "env": client_env,
                                         **fault})]
        for i in range(trainers):
            specs.append(("trainer", root / f"trainer{i}", {
                "bootstrap": boot.addr,
                "extra_args": [*dn, *hb, "--no-gpu", "--price-wei", str(PRICE + 1000 * i)]}))
        started = start_nodes(specs)
        nodes += started
        _wait_mesh(started[0], trainers)
    except BaseException:
        for n in reversed(nodes):
            n.stop()
        devnet.stop()
        raise
    return Swarm(root, devnet, started[0], started[1:], nodes)


@pytest.fixture
def swarm_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Swarm] = []

    def make(trainers: int, client_fault: str | None = None, hedera_units: bool = False,
             client_env: dict[str, str] | None = None) -> Swarm:
        s = _start(tmp_path, trainers, client_fault, hedera_units, client_env)
        made.append(s)
        return s

    yield make
    for s in made:
        for n in reversed(s.nodes):
            n.stop()
        s.devnet.stop()


def _receipted(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in job["units"] if u.get("receipt")]


def _wait_chain_time(escrow: EscrowV2, t: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while escrow.chain_time() <= t:
        assert time.monotonic() < deadline, f"chain time never passed {t}"
        time.sleep(1)
        # a transaction mines a block (devnet mines per transaction): the clock moves on
        escrow.ledger.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def _owed_units(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The units the client's receipts and verdicts owe: every receipted unit not rejected on chain."""
    return [u for u in units if u.get("receipt")
            and not (u["verdict"] == "rejected" and u["settled"] and u["settle_tx"])]


def _owed(job: dict[str, Any]) -> int:
    """What the client's receipts and verdicts owe, in wei."""
    return sum(u["price_wei"] for u in _owed_units(job["units"]))


def _assert_money(books: JobBooks, units: list[dict[str, Any]]) -> None:
    """The chain paid every trainer exactly its price times its owed units (each unit once, by
    verdict or by claim), a registered trainer owed nothing (a standby never assigned) got
    nothing, and once released the payer got back everything else."""
    owed: dict[str, list[dict[str, Any]]] = {}
    for u in _owed_units(units):
        owed.setdefault(u["trainer_address"].lower(), []).append(u)
    assert set(owed) <= set(books.trainers), (owed.keys(), books.as_dict())
    for addr, t in books.trainers.items():
        mine = owed.get(addr, [])
        assert all(u["price_wei"] == t.price for u in mine), (addr, t.as_dict())
        assert t.accepted + t.claimed == len(mine), (addr, t.as_dict(), len(mine))  # never twice
        assert t.paid == t.price * len(mine), (addr, t.as_dict(), len(mine))
    assert books.paid == sum(u["price_wei"] for us in owed.values() for u in us)
    assert books.released and books.balanced, books.as_dict()
    assert books.refunded == books.deposited - books.paid, books.as_dict()


def test_honest_job_settles_off_the_round_path_and_a_squatter_changes_nothing(swarm_factory: Any) -> None:
    s = swarm_factory(3)  # two chosen, one standby that is never assigned: registered, paid 0
    job_id = s.submit(rounds=2, standby=1)
    job = s.wait(job_id, lambda j: j["escrow"]["job_key"] and j["state"] in ("escrowed", "running", "finishing", "done"),
                 what="funding")
    esc = job["escrow"]
    # Another key funds with the same nonce (naming our client as operator): a different job key.
    sq = s.escrow(s.devnet.state["chain"]["faucet_key"])  # a funded dev account, not the client
    sq_terms = JobTerms(operator=esc["operator"], deadline=int(time.time()) + 600, settle_window=SETTLE_S,
                        claim_window=10, price_cap=10**16, unit_budget=1)
    sq.fund(int(esc["nonce"]), sq_terms, [TrainerTerms(job["trainers_detail"][0]["address"], PRICE, 1)], PRICE)
    assert job_key_of(sq.address, int(esc["nonce"])).hex() != esc["job_key"]
    assert job_key_of(esc["payer"], int(esc["nonce"])).hex() == esc["job_key"]

    job = s.wait(job_id, lambda j: j["state"] in ("done", "failed"), what="the job's end")
    assert job["state"] == "done", job["error"]
    job = s.wait(job_id, lambda j: j["escrow"]["released"], timeout=120, what="the release")
    esc = job["escrow"]
    kinds = {k: len(v) for k, v in esc["transactions"].items()}
    assert kinds.get("fund") == 1 and kinds.get("complete") == 1 and kinds.get("release") == 1, kinds
    assert 1 <= kinds.get("settle", 0) <= 2, kinds  # batches, never one per unit (4 units)
    # Completion came after the last batch: every settle transaction precedes it.
    settle_ts = max(t["ts"] for t in esc["transactions"]["settle"])
    assert settle_ts <= esc["transactions"]["complete"][0]["ts"]
    books = s.books(job)
    assert books.released and books.balanced
    assert books.paid == sum(u["price_wei"] for u in job["units"] if u["verdict"] == "accepted") > 0
    assert esc["refunded_wei"] == books.refunded == books.deposited - books.paid
    _assert_money(books, job["units"])
    standby = next(t["address"] for t in job["trainers_detail"] if t["standby"]).lower()
    assert standby in books.trainers and books.trainers[standby].units > 0
    assert books.trainers[standby].paid == 0 and not any(u["trainer_address"].lower() == standby for u in job["units"])
    # Every round closed before the next started, with no chain transaction on its path: the
    # settle batches are in the settler's record, none at a round's boundary is required.
    assert all(r["state"] == "settled" for r in job["rounds_detail"])


def test_client_that_never_settles_is_paid_from_receipts(swarm_factory: Any) -> None:
    s = swarm_factory(2, client_fault="never-settle")
    job_id = s.submit(rounds=1, deadline_s=60)
    job = s.wait(job_id, lambda j: j["state"] in ("done", "failed"), what="the job's end")
    assert job["state"] == "done", job["error"]
    assert not job["escrow"]["transactions"].get("settle") and not job["escrow"]["transactions"].get("complete")
    receipted = _receipted(job)
    assert len(receipted) >= 2
    deadline = time.monotonic() + 120
    while True:
        books = s.books(job)
        if sum(t.claimed for t in books.trainers.values()) >= len(receipted):
            break
        assert time.monotonic() < deadline, books.as_dict()
        time.sleep(1)
    assert books.paid == sum(u["price_wei"] for u in receipted)
    # The client's settler still releases the job once due (it never completed: after the deadline).
    job = s.wait(job_id, lambda j: j["escrow"]["released"], timeout=180, what="the release")
    _assert_money(s.books(job), job["units"])


def test_hedera_units_claims_withdrawals_and_balances_come_out_in_tinybar(swarm_factory: Any) -> None:
    """The devnet in Hedera's units (the EVM in tinybar, the RPC in weibar, as through Hedera's
    relay): the real client funds and releases, the trainers claim with receipts and withdraw,
    and every figure (the chain's books, the client's record, the wallet balances the nodes'
    APIs show) is in contract units and matches what the EVM holds. A money path that skipped
    ValueUnits would be refused or off by 10^10."""
    s = swarm_factory(2, client_fault="never-settle", hedera_units=True)
    chain_block = s.devnet.state["chain"]
    assert chain_block["value_units"] == "hedera"
    job_id = s.submit(rounds=1, deadline_s=60)
    job = s.wait(job_id, lambda j: j["state"] in ("done", "failed"), what="the job's end")
    assert job["state"] == "done", job["error"]
    receipted = _receipted(job)
    job = s.wait(job_id, lambda j: j["escrow"]["released"], timeout=180, what="the release")
    books = s.books(job)
    _assert_money(books, job["units"])
    assert books.deposited == job["deposited_wei"] and sum(t.claimed for t in books.trainers.values()) == len(receipted)
    evm = Web3(Web3.HTTPProvider(chain_block["anvil_url"]))
    paid = {a: t.paid for a, t in books.trainers.items() if t.paid}
    deadline = time.monotonic() + 120
    while {a: s.books(job).trainers[a].withdrawn for a in paid} != paid:  # the trainers withdraw their pay
        assert time.monotonic() < deadline, s.books(job).as_dict()
        time.sleep(1)
    # The wallet balance the client's API shows is the EVM's, in tinybar (read twice around the
    # EVM's answer: the client may send a transaction meanwhile).
    deadline = time.monotonic() + 60
    while True:
        before = httpx.get(f"{s.client.api}/api/v1/node", timeout=30).json()
        evm_balance = evm.eth.get_balance(Web3.to_checksum_address(before["address"]))
        after = httpx.get(f"{s.client.api}/api/v1/node", timeout=30).json()
        if before["balance_wei"] == after["balance_wei"] or time.monotonic() > deadline:
            break
    assert after["balance_wei"] == evm_balance > 0, (after, evm_balance)
    for t in s.trainers:  # what each trainer shows as still to withdraw: nothing, in any unit
        status = httpx.get(f"{t.api}/status", timeout=30).json()["trainer"]
        assert status["pending_wei"] == 0 and evm.eth.get_balance(status["address"]) > 0, status


def test_client_killed_for_good_pays_receipts_and_anyone_releases(swarm_factory: Any) -> None:
    s = swarm_factory(2)
    job_id = s.submit(rounds=3, deadline_s=60)
    job = s.wait(job_id, lambda j: len(_receipted(j)) >= 2, what="receipts")
    s.client.popen.send_signal(signal.SIGKILL)
    s.client.popen.wait(10)
    db_job = _client_records(s.root / "client", job_id)
    receipted = [u for u in db_job if u["receipt"]]
    settled_ok = [u for u in receipted if u["settled"] and u["settle_tx"]]
    escrow = s.escrow()
    key = bytes.fromhex(job["escrow"]["job_key"])
    view = escrow.job(key)
    assert view.status == JobStatusV2.OPEN
    # Trainers claim what was not settled, within the claim window; then anyone releases.
    deadline = time.monotonic() + 180
    while True:
        books = job_books(escrow, key)
        done = sum(t.claimed + t.accepted + t.rejected for t in books.trainers.values())
        if done >= len(receipted):
            break
        assert time.monotonic() < deadline, (books.as_dict(), len(receipted), len(settled_ok))
        time.sleep(1)
    _wait_chain_time(escrow, view.release_at)
    stranger = s.escrow(s.devnet.state["chain"]["faucet_key"])
    stranger.release(key)
    books = job_books(escrow, key)
    assert books.released and books.balanced and books.paid > 0
    assert books.released_by and books.released_by.lower() == stranger.address.lower()
    payer = job["escrow"]["payer"]
    assert escrow.pending(payer) >= books.deposited - books.paid
    assert books.refunded == books.deposited - books.paid
    _assert_money(books, db_job)


def test_cancelled_job_still_pays_receipts_and_refunds_the_rest(swarm_factory: Any) -> None:
    s = swarm_factory(2)
    job_id = s.submit(rounds=4)
    s.wait(job_id, lambda j: len(_receipted(j)) >= 2, what="receipts")
    r = httpx.post(f"{s.client.api}/api/v1/jobs/{job_id}/cancel", timeout=30)
    assert r.status_code == 200, r.text
    job = s.wait(job_id, lambda j: j["state"] == "cancelled" and j["escrow"]["released"], timeout=180,
                 what="cancel and release")
    assert "cancel" in job["escrow"]["transactions"], job["escrow"]
    books = s.books(job)
    assert books.released and books.balanced
    assert books.paid == _owed(job) > 0  # every receipt paid: by verdict or by claim
    assert books.refunded == books.deposited - books.paid == job["escrow"]["refunded_wei"]
    _assert_money(books, job["units"])


def test_failed_job_refunds_its_payer(swarm_factory: Any) -> None:
    s = swarm_factory(2)
    job_id = s.submit(rounds=3)
    s.wait(job_id, lambda j: j["state"] == "running", what="running")
    for t in s.trainers:  # everyone gone after funding: the job cannot go on
        t.popen.send_signal(signal.SIGKILL)
    job = s.wait(job_id, lambda j: j["state"] in ("failed", "done"), timeout=240, what="the failure")
    assert job["state"] == "failed", job
    job = s.wait(job_id, lambda j: j["escrow"]["released"], timeout=180, what="the release")
    assert "cancel" in job["escrow"]["transactions"]
    books = s.books(job)
    assert books.released and books.balanced
    assert books.refunded == books.deposited - books.paid == job["escrow"]["refunded_wei"]
    _assert_money(books, job["units"])  # nothing owed: nothing paid, everything back


def _client_records(home: Path, job_id: str) -> list[dict[str, Any]]:
    """The dead client's unit records, read from its SQLite file."""
    import json
    import sqlite3

    conn = sqlite3.connect(home / "client.sqlite")
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT body FROM units WHERE job_id = ?", (job_id,))]
    finally:
        conn.close()


def test_a_wallet_that_pays_after_its_window_gets_all_of_it_back(swarm_factory: Any) -> None:
    # A wallet sends the quoted funding call after the payment window closed (the contract
    # knows nothing of the window): the node, whose job failed unpaid, finds it funded,
    # cancels it, and the release returns everything to the wallet's balance in the escrow.
    import secrets

    from fedswarm.demo.wallet_user import WalletUser
    from fedswarm.devnet.services import fund_address

    s = swarm_factory(2, client_env={"FEDSWARM_PAYMENT_WINDOW_S": "4"})
    user = WalletUser(s.client.api, "0x" + secrets.token_hex(32))
    fund_address(s.devnet.state, user.address, 10**19)
    user.sign_in()
    data, label, example = bundled_dataset("breast_cancer", s.root)
    terms = {"rounds": 2, "trainers": 2, "standby": 0, "label": label, "round_deadline_s": 60.0,
             "price_cap_wei": 10**16, "settle_window_s": SETTLE_S,
             "claim_window_s": int(s.devnet.state["chain"]["escrow_v2_min_claim_window"])}
    job_id = user.submit(data, terms, example)
    funding = user.wait_funding(job_id)
    job = s.wait(job_id, lambda j: j["state"] == "failed", timeout=60, what="the window to close unpaid")
    assert "not paid in time" in job["error"]

    user.pay(job_id, funding, s.devnet.state["chain"]["rpc_url"])  # late
    key = bytes.fromhex(funding["job_key"][2:])
    assert s.escrow().job(key).status == JobStatusV2.OPEN  # the chain took it

    job = s.wait(job_id, lambda j: j["escrow"]["released"], timeout=180, what="the late payment cancelled and released")
    assert job["state"] == "failed" and "cancel" in job["escrow"]["transactions"], job["escrow"]
    assert any("after the payment window closed: cancelling" in e["msg"] for e in job["events"]), job["events"]
    books = job_books(s.escrow(), key)
    assert books.released and books.balanced and books.paid == 0
    assert books.refunded == books.deposited == int(funding["total_wei"]), books.as_dict()
    assert s.escrow().pending(user.address) == books.deposited  # the wallet's to withdraw
