"""The wallet's payment step of the client (roles/client/payment.py) against an in-process fake
of EscrowV2's views and the real contract ABI: the fund() call it builds (payer = wallet,
operator = node, the quoted trainers), the payment window, funding with other terms (failed,
and the job key kept so the settler cancels it), and funding as quoted (escrowed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.escrow import job_key_of
from fedswarm.ledger.escrow_types import V2_CONTRACT_NAME, JobStatusV2, JobView, Registration
from fedswarm.ledger.hedera import ValueUnits
from fedswarm.roles.client.bidding import fund_trainers
from fedswarm.roles.client.payment import MAX_LATE_WATCHED, LateFunding, Payment, late_watched
from fedswarm.roles.client.records import JobRecord, JobTerms
from fedswarm.roles.client.services import JobFailed

WALLET = Account.create().address
NODE = Account.create().address
T1, T2 = Account.create().address, Account.create().address
CONTRACT = "0x" + "cc" * 20
CONTRACT_ABI = Web3().eth.contract(abi=load_artifact(V2_CONTRACT_NAME).abi)


@dataclass
class FakeEscrow:
    contract_address: str = CONTRACT
    units: ValueUnits = field(default_factory=ValueUnits.hedera)  # value in weibar, amounts in tinybar
    view: JobView | None = None
    regs: dict[str, Registration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ledger = SimpleNamespace(contract=CONTRACT_ABI)

    def min_claim_window(self) -> int:
        return 10

    def get_chain_id(self) -> int:
        return 296

    def job(self, key: bytes) -> JobView:
        return self.view or replace(_view(0), status=JobStatusV2.NONE)

    def trainer(self, key: bytes, address: str) -> Registration:
        return self.regs.get(address.lower(), Registration(0, 0, 0, False))


def _view(escrow: int, **kw: Any) -> JobView:
    base = JobView(payer=WALLET, operator=NODE, status=JobStatusV2.OPEN, deadline=int(time.time()) + 9999,
                   close_at=0, settle_window=30, claim_window=10, release_at=0, price_cap=10**16, unit_budget=0,
                   units_registered=0, units_done=0, escrow=escrow, free=0, reserved=0)
    return replace(base, **kw)


class FakeDB:
    def __init__(self) -> None:
        self.saved: list[str] = []

    def put_job(self, job: JobRecord) -> None:
        self.saved.append(job.state)


def make() -> tuple[Payment, FakeEscrow, JobRecord]:
    escrow = FakeEscrow()
    events: list[str] = []

    async def audit_entry(job: JobRecord, entry: dict[str, Any]) -> None:
        events.append(str(entry))

    svc = SimpleNamespace(escrow=escrow, db=FakeDB(), identity=SimpleNamespace(address=NODE),
                          event=lambda job, text: job.events.append({"msg": text}), audit_entry=audit_entry,
                          job=lambda job_id: job)
    job = JobRecord(job_id="job-w", terms=JobTerms(rounds=2, trainers=1, standby=1), model={}, dataset_path="/x",
                    owner=WALLET, chosen=[{"peer_id": "p1", "address": T1, "price_wei": 1000}],
                    standby=[{"peer_id": "p2", "address": T2, "price_wei": 1500}])
    return Payment(svc, fund_trainers), escrow, job  # type: ignore[arg-type]


async def test_funding_call_names_the_wallet_as_payer_and_the_node_as_operator() -> None:
    pay, escrow, job = make()
    await pay.request(job)
    f = job.funding
    assert job.state == "awaiting-payment" and f is not None
    fn, args = CONTRACT_ABI.decode_function_input(f["data"])
    assert fn.fn_name == "fund" and args["terms"]["operator"] == NODE
    trainers = fund_trainers(job)
    total = sum(t.price * t.units for t in trainers)
    assert [(t["trainer"], t["price"], t["units"]) for t in args["trainers"]] == [(t.trainer, t.price, t.units) for t in trainers]
    assert f["total_wei"] == str(total) and f["value"] == str(total * 10**10)  # weibar on a Hedera chain
    assert f["payer"] == WALLET and f["operator"] == NODE and f["to"] == CONTRACT and f["chain_id"] == 296
    assert f["job_key"] == "0x" + job_key_of(WALLET, args["nonce"]).hex()
    assert [t["standby"] for t in f["trainers"]] == [False, True]
    assert args["terms"]["deadline"] > f["expires_at"]  # the deadline counts from after the window
    assert job.job_key is None  # not the job's until the chain shows it funded


async def unpaid() -> tuple[Payment, FakeEscrow, JobRecord]:
    """A quoted job whose payment window closed with nothing on chain (then failed, as the
    driver records it)."""
    pay, escrow, job = make()
    await pay.request(job)
    assert job.funding is not None
    job.funding["expires_at"] = int(time.time()) - 1
    with pytest.raises(JobFailed, match="not paid in time.*cancelled by this node"):
        await pay.wait(job, lambda _: False)
    job.state = "failed"
    return pay, escrow, job


async def test_not_paid_in_time_fails_with_nothing_to_refund() -> None:
    pay, escrow, job = await unpaid()
    assert job.job_key is None  # fail() then closes nothing on chain


async def test_funding_with_other_terms_fails_and_keeps_the_key_for_the_cancel() -> None:
    pay, escrow, job = make()
    await pay.request(job)
    assert job.funding is not None
    total = int(job.funding["total_wei"])
    units = sum(int(t["units"]) for t in job.funding["trainers"])
    regs = {t["address"].lower(): Registration(int(t["price_wei"]), int(t["units"]), 0, True)
            for t in job.funding["trainers"]}
    escrow.regs = regs
    escrow.view = _view(total - 1, units_registered=units)  # underpaid
    with pytest.raises(JobFailed, match="other terms.*cancelled"):
        await pay.wait(job, lambda _: False)
    assert job.job_key == job.funding["job_key"][2:]
    # a trainer at another price: refused too
    pay, escrow, job = make()
    await pay.request(job)
    assert job.funding is not None
    escrow.regs = {**regs, T1.lower(): Registration(1, regs[T1.lower()].units, 0, True)}
    escrow.view = _view(total, units_registered=units)
    with pytest.raises(JobFailed, match=f"trainer {T1}"):
        await pay.wait(job, lambda _: False)
    # already cancelled by the payer: failed, nothing left for the node to cancel
    pay, escrow, job = make()
    await pay.request(job)
    escrow.view = _view(total, units_registered=units, status=JobStatusV2.CANCELLED)
    with pytest.raises(JobFailed, match="is not open"):
        await pay.wait(job, lambda _: False)
    assert job.job_key is None
    # someone else as operator: the node cannot cancel it (the payer can)
    pay, escrow, job = make()
    await pay.request(job)
    escrow.view = _view(total, units_registered=units, operator=WALLET)
    job.funding_tx_hint = "0x" + "cd" * 32
    with pytest.raises(JobFailed, match="payer can cancel"):
        await pay.wait(job, lambda _: False)
    assert job.job_key is None
    assert job.escrow_tx is None  # else fail() would take it for a v1 job and try to close it there


async def test_funded_as_quoted_is_escrowed() -> None:
    pay, escrow, job = make()
    await pay.request(job)
    assert job.funding is not None
    escrow.regs = {t["address"].lower(): Registration(int(t["price_wei"]), int(t["units"]), 0, True)
                   for t in job.funding["trainers"]}
    escrow.view = _view(int(job.funding["total_wei"]),
                        units_registered=sum(int(t["units"]) for t in job.funding["trainers"]))
    job.funding_tx_hint = "0x" + "ab" * 32
    await pay.wait(job, lambda _: False)
    assert job.state == "escrowed" and job.payer == WALLET and job.operator == NODE
    assert job.job_key == job.funding["job_key"][2:] and job.escrow_tx == job.funding_tx_hint
    assert job.deposited_wei == int(job.funding["total_wei"])


async def test_a_window_that_closes_unpaid_is_watched_until_the_deadline() -> None:
    pay, escrow, job = await unpaid()
    assert job.funding is not None
    assert job.funding["late_watch_until"] == job.funding["deadline"]
    assert late_watched([job], time.time()) == [job]
    assert late_watched([job], job.funding["deadline"] + 1) == []  # past the deadline: release does it
    funded = job.model_copy(update={"job_id": "other", "job_key": "ab" * 32})
    assert late_watched([funded, job.model_copy(update={"state": "awaiting-payment"})], time.time()) == []
    many = [job.model_copy(update={"job_id": f"j{i}", "funding": {**job.funding, "expires_at": i}})
            for i in range(MAX_LATE_WATCHED + 5)]
    picked = late_watched(many, time.time())
    assert len(picked) == MAX_LATE_WATCHED and picked[0].job_id == f"j{MAX_LATE_WATCHED + 4}"  # newest first


async def test_a_late_payment_is_handed_over_for_cancelling() -> None:
    pay, escrow, job = await unpaid()
    assert job.funding is not None
    late: list[JobRecord] = []
    watch = LateFunding(pay.svc, late.append)
    # nothing on chain yet: still watched
    assert not await watch.check(job) and late == [] and job.job_key is None
    assert late_watched([job], time.time()) == [job]
    # funded late with this node as operator: the key becomes the job's, the settler cancels it
    total = int(job.funding["total_wei"])
    escrow.view = _view(total)
    assert await watch.check(job)
    assert late == [job] and job.job_key == job.funding["job_key"][2:] and job.payer == WALLET
    assert job.deposited_wei == total and job.funding["late_watch_until"] == 0
    assert "after the payment window closed: cancelling" in job.events[-1]["msg"]
    assert late_watched([job], time.time()) == []
    # funded late naming another operator: not this node's to cancel, watched no more
    pay, escrow, job = await unpaid()
    assert job.funding is not None
    escrow.view = _view(total, operator=WALLET)
    late.clear()
    assert not await LateFunding(pay.svc, late.append).check(job)
    assert late == [] and job.job_key is None and job.funding["late_watch_until"] == 0
    assert "the payer can cancel it" in job.events[-1]["msg"]
