"""The trainer's settlement checks, fast: receipts and refusals from the operator, the
operator's assignment, and the chain's job terms before the first unit (an in-process fake of
EscrowV2's views; no chain, no processes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from eth_account import Account

from fedswarm.identity import load_identity
from fedswarm.ledger.escrow_types import JobStatusV2, JobView, Registration
from fedswarm.ledger.receipts import EscrowDomain, Receipt, ReceiptError, sign_receipt
from fedswarm.market.operator import SignatureError, sign_assignment, sign_refusal
from fedswarm.p2p.node import Rejected
from fedswarm.protocol.job import ChunkRef, UnitAccepted, UnitReceipt, UnitRefused, WorkUnit
from fedswarm.protocol.preprocessing import Preprocessing
from fedswarm.roles.trainer import TrainerOptions
from fedswarm.roles.trainer.checks import (
    assignment_refusal,
    chain_refusal,
    check_receipt,
    check_refusal,
)
from fedswarm.roles.trainer.records import JobRecord, ReceiptStatus, TrainerDB, UnitState
from fedswarm.roles.trainer.unit import UnitFlow

CHAIN = 31337
CONTRACT = "0x" + "ab" * 20
PRICE = 10**15
JOB_KEY = "11" * 32
UPDATE = "22" * 32
CLIENT_PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"

OPERATOR = Account.create()
TRAINER = Account.create()


def _job(**kw: Any) -> JobRecord:
    base = JobRecord("job-1", CLIENT_PEER, "0.0.5", PRICE, "bid", None, operator=OPERATOR.address,
                     contract=CONTRACT, chain_id=CHAIN)
    return replace(base, **kw)


def _unit(trainer: str = TRAINER.address, signer: Any = OPERATOR, **kw: Any) -> WorkUnit:
    fields: dict[str, Any] = {
        "job_id": "job-1", "round": 2, "unit": 3, "model": {"format": "x"}, "preprocessing": Preprocessing(
            features=["a"], mean=[0.0], std=[1.0], label="y", classes=["0", "1"], task="classification"),
        "global_url": "http://127.0.0.1:9/g", "global_sha256": "33" * 32, "global_size": 10,
        "global_sealed_key": "k", "chunks": [ChunkRef(chunk_id="c0", url="http://127.0.0.1:9/c", sha256="44" * 32,
                                                      size=10, rows=5, sealed_key="k")],
        "epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 1, "deadline": time.time() + 600,
        "put_url": "http://127.0.0.1:9/p", "put_max_bytes": 1000, "client_box_public": "55" * 32,
        "audit_topic": "0.0.5", "job_key": JOB_KEY, "contract": CONTRACT, "chain_id": CHAIN,
        "operator": OPERATOR.address, "trainer": trainer,
    }
    fields.update(kw)
    sig = sign_assignment(signer, job_key=fields["job_key"], contract=fields["contract"], chain_id=fields["chain_id"],
                          round_=fields["round"], unit=fields["unit"], trainer=trainer, deadline=fields["deadline"],
                          global_sha256=fields["global_sha256"], chunk_sha256s=[c.sha256 for c in fields["chunks"]])
    return WorkUnit(**fields, assignment_sig=sig)


def _receipt_msg(wu: WorkUnit, signer: Any = OPERATOR, *, issued_at: int | None = None,
                 trainer: str = TRAINER.address, update: str = UPDATE, domain: EscrowDomain | None = None,
                 **kw: Any) -> UnitReceipt:
    issued = int(time.time()) if issued_at is None else issued_at
    receipt = Receipt(job_key=bytes.fromhex(JOB_KEY), round=wu.round, unit=wu.unit, trainer=trainer,
                      update_hash=bytes.fromhex(update), issued_at=issued)
    sig = sign_receipt(receipt, domain or EscrowDomain(CHAIN, CONTRACT), signer)
    fields = {"job_id": wu.job_id, "round": wu.round, "unit": wu.unit, "job_key": JOB_KEY, "trainer": trainer,
              "update_sha256": update, "issued_at": issued, "signature": "0x" + sig.hex()}
    fields.update(kw)
    return UnitReceipt(**fields)


def _check(msg: UnitReceipt, wu: WorkUnit) -> Receipt:
    return check_receipt(msg, wu, TRAINER.address, UPDATE, domain=EscrowDomain(CHAIN, CONTRACT),
                         operator=OPERATOR.address, now=time.time(), skew_s=60)


# -- receipts ----------------------------------------------------------------------------------


def test_a_receipt_for_what_we_delivered_is_accepted() -> None:
    wu = _unit()
    receipt = _check(_receipt_msg(wu), wu)
    assert receipt.update_hash.hex() == UPDATE and receipt.trainer == TRAINER.address


@pytest.mark.parametrize("case", ["wrong-signer", "other-contract", "other-chain"])
def test_a_receipt_not_signed_by_the_operator_for_this_escrow_is_refused(case: str) -> None:
    wu = _unit()
    msg = {
        "wrong-signer": lambda: _receipt_msg(wu, Account.create()),
        "other-contract": lambda: _receipt_msg(wu, domain=EscrowDomain(CHAIN, "0x" + "cd" * 20)),
        "other-chain": lambda: _receipt_msg(wu, domain=EscrowDomain(CHAIN + 1, CONTRACT)),
    }[case]()
    with pytest.raises(ReceiptError, match="not by the job's operator"):
        _check(msg, wu)


@pytest.mark.parametrize("field,value,match", [
    ("round", 5, "round"), ("unit", 9, "unit"), ("job_id", "job-2", "job_id"),
    ("job_key", "99" * 32, "job_key"), ("update_sha256", "77" * 32, "update_sha256"),
])
def test_a_receipt_for_other_fields_is_refused(field: str, value: Any, match: str) -> None:
    wu = _unit()
    with pytest.raises(ReceiptError, match=match):
        _check(_receipt_msg(wu, **{field: value}), wu)


def test_a_receipt_naming_another_trainer_or_update_signed_as_such_is_refused() -> None:
    wu = _unit()
    other = Account.create().address
    with pytest.raises(ReceiptError, match="names trainer"):
        _check(_receipt_msg(wu, trainer=other), wu)
    with pytest.raises(ReceiptError, match="update_sha256"):
        _check(_receipt_msg(wu, update="88" * 32), wu)


@pytest.mark.parametrize("offset", [-3600, -61, 61, 86_400])
def test_a_receipt_issued_far_from_our_clock_is_refused(offset: int) -> None:
    wu = _unit()
    with pytest.raises(ReceiptError, match="from our clock"):
        _check(_receipt_msg(wu, issued_at=int(time.time()) + offset), wu)
    assert _check(_receipt_msg(wu, issued_at=int(time.time()) + (offset // abs(offset)) * 50), wu)


def test_a_signed_refusal_is_accepted_and_a_forged_one_is_not() -> None:
    wu = _unit()

    def refusal(signer: Any, reason: str = "reassigned", **kw: Any) -> UnitRefused:
        sig = sign_refusal(signer, JOB_KEY, wu.round, wu.unit, TRAINER.address, UPDATE, reason)
        fields = {"job_id": wu.job_id, "round": wu.round, "unit": wu.unit, "trainer": TRAINER.address,
                  "update_sha256": UPDATE, "reason": reason, "signature": sig}
        fields.update(kw)
        return UnitRefused(**fields)

    check_refusal(refusal(OPERATOR), wu, TRAINER.address, UPDATE, OPERATOR.address)
    with pytest.raises(SignatureError, match="not the job's operator"):
        check_refusal(refusal(Account.create()), wu, TRAINER.address, UPDATE, OPERATOR.address)
    with pytest.raises(SignatureError):  # the reason is signed: it cannot be swapped
        check_refusal(refusal(OPERATOR, reason="unknown-unit").model_copy(update={"reason": "bad-object"}),
                      wu, TRAINER.address, UPDATE, OPERATOR.address)
    with pytest.raises(SignatureError, match="another unit"):
        check_refusal(refusal(OPERATOR, unit=wu.unit + 1), wu, TRAINER.address, UPDATE, OPERATOR.address)


# -- the operator's assignment -----------------------------------------------------------------


def test_assignments_must_be_signed_by_the_announced_operator_for_this_trainer() -> None:
    job = _job()
    assert assignment_refusal(job, _unit(), TRAINER.address, CHAIN) is None
    assert "not signed by the operator" in (assignment_refusal(job, _unit(signer=Account.create()),
                                                                TRAINER.address, CHAIN) or "")
    other = Account.create().address
    assert "not to this trainer" in (assignment_refusal(job, _unit(trainer=other), TRAINER.address, CHAIN) or "")
    assert "announced by" in (assignment_refusal(_job(operator=other), _unit(), TRAINER.address, CHAIN) or "")
    assert "escrow" in (assignment_refusal(job, _unit(), TRAINER.address, CHAIN + 1) or "")
    assert "lacks" in (assignment_refusal(job, _unit().model_copy(update={"assignment_sig": None}),
                                          TRAINER.address, CHAIN) or "")
    assert "v2 escrow" in (assignment_refusal(_job(operator=None, contract=None), _unit(), TRAINER.address,
                                              CHAIN) or "")
    # A signed field changed afterwards (the deadline) breaks the signature.
    moved = _unit().model_copy(update={"deadline": time.time() + 9999})
    assert "not signed" in (assignment_refusal(job, moved, TRAINER.address, CHAIN) or "")


# -- the job's terms on chain ------------------------------------------------------------------


def _view(**kw: Any) -> JobView:
    base = JobView(payer=OPERATOR.address, operator=OPERATOR.address, status=JobStatusV2.OPEN,
                   deadline=int(time.time()) + 3600, close_at=0, settle_window=600, claim_window=86_400,
                   release_at=0, price_cap=2 * PRICE, unit_budget=10, units_registered=4, units_done=0,
                   escrow=10 * PRICE, free=0, reserved=4 * PRICE)
    return replace(base, **kw)


REG = Registration(price=PRICE, units=2, used=0, registered=True)


@pytest.mark.parametrize("view,reg,match", [
    (_view(status=JobStatusV2.CANCELLED), REG, "cancelled on chain"),
    (_view(status=JobStatusV2.NONE), REG, "none on chain"),
    (_view(operator=Account.create().address), REG, "chain names operator"),
    (_view(), Registration(0, 0, 0, False), "not registered"),
    (_view(), Registration(PRICE // 2, 2, 0, True), "registered at"),
    (_view(), Registration(PRICE * 2, 2, 0, True), "registered at"),
    (_view(deadline=int(time.time()) - 1), REG, "deadline"),
    (_view(settle_window=86_401), REG, "settle window 86401 s is over our limit of 86400 s"),
])
def test_chain_terms_that_differ_from_the_bid_are_refused(view: JobView, reg: Registration, match: str) -> None:
    assert match in (chain_refusal(_job(), view, reg, now=time.time(), max_settle_window_s=86_400) or "")


def test_chain_terms_as_bid_pass() -> None:
    assert chain_refusal(_job(), _view(settle_window=86_400), REG, now=time.time(), max_settle_window_s=86_400) is None


# -- the unit RPC with a fake escrow -----------------------------------------------------------


@dataclass
class FakeEscrow:
    """EscrowV2's two views, counted."""

    view: JobView
    reg: Registration
    contract_address: str = CONTRACT
    reads: list[str] = field(default_factory=list)

    def job(self, job_key: bytes) -> JobView:
        self.reads.append("job")
        return self.view

    def trainer(self, job_key: bytes, address: str) -> Registration:
        self.reads.append("trainer")
        return self.reg


class Flow(UnitFlow):
    started: list[WorkUnit]

    async def _run_unit(self, wu: WorkUnit) -> None:  # no training here
        self.started.append(wu)


def _flow(tmp_path: Path, escrow: FakeEscrow, nursery: trio.Nursery) -> Flow:
    identity = load_identity(tmp_path / "keys")
    node = SimpleNamespace(peer_id="12D3KooWtrainer", nursery=nursery)
    db = TrainerDB(tmp_path / "t.db")
    db.add_job("job-1", CLIENT_PEER, "0.0.5", PRICE, operator=OPERATOR.address, contract=CONTRACT, chain_id=CHAIN)
    flow = Flow(node, identity, None, SimpleNamespace(), SimpleNamespace(pid=1), db, tmp_path / "w",  # type: ignore[arg-type]
                TrainerOptions(price_wei=PRICE), CHAIN, escrow)  # type: ignore[arg-type]
    flow.started = []
    return flow


async def test_units_are_declined_unless_the_chain_registers_us_as_bid(tmp_path: Path) -> None:
    escrow = FakeEscrow(_view(), Registration(PRICE * 3, 2, 0, True))
    async with trio.open_nursery() as nursery:
        flow = _flow(tmp_path, escrow, nursery)
        me = flow.identity.address

        # Registered at another price: declined, recorded and audited; nothing started.
        with pytest.raises(Rejected, match="registered at"):
            await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=0), None)
        assert flow.started == [] and flow.db.units() == []
        assert "registered at" in (flow.db.job("job-1").declined or "")  # type: ignore[union-attr]
        topic, msg = flow._audit_recv.receive_nowait()
        assert msg["state"] == "declined" and "registered at" in msg["reason"]

        # Registered as bid: accepted; the check is cached for the job's next units.
        escrow.reg = Registration(PRICE, 2, 0, True)
        reply, _ = await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=0), None)
        assert isinstance(reply, UnitAccepted)
        reads = len(escrow.reads)
        flow._running.clear()
        flow.db.set_unit(("job-1", 2, 0), UnitState.DELIVERED)
        flow.db.add_receipt("job-1", 2, 0, contract=CONTRACT, chain_id=CHAIN, operator=OPERATOR.address,
                            receipt={}, signature="0x")
        await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=1), None)
        assert len(escrow.reads) == reads  # 1 receipt + 0 in hand < 2 units: no chain read
        await trio.sleep(0)

        # Budget used (1 receipt + 1 unit in hand = the 2 registered units): re-read, declined.
        with pytest.raises(Rejected, match="budget used"):
            await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=2), None)
        assert len(escrow.reads) == reads + 2

        # A unit assigned to someone else, or not by the operator, never reaches the chain.
        with pytest.raises(Rejected, match="not to this trainer"):
            await flow._on_work_unit(CLIENT_PEER, _unit(unit=3), None)
        with pytest.raises(Rejected, match="not signed by the operator"):
            await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=3, signer=Account.create()), None)
        assert len(escrow.reads) == reads + 2
        assert sorted(wu.unit for wu in flow.started) == [0, 1]

        # A stopped job refuses every unit.
        flow.db.stop_job("job-1", "no receipt for unit 2/1 before its deadline")
        with pytest.raises(Rejected, match="stopped working for job job-1: no receipt"):
            await flow._on_work_unit(CLIENT_PEER, _unit(trainer=me, unit=4), None)


@pytest.mark.parametrize("view,limit,match", [
    (_view(settle_window=7200), 3600, "settle window 7200 s is over our limit of 3600 s"),
    (_view(operator=Account.create().address), 86_400, "chain names operator"),
])
async def test_a_job_whose_terms_we_do_not_accept_gets_no_work(tmp_path: Path, view: JobView, limit: int,
                                                               match: str) -> None:
    async with trio.open_nursery() as nursery:
        flow = _flow(tmp_path, FakeEscrow(view, REG), nursery)
        flow.options.max_settle_window_s = limit
        with pytest.raises(Rejected, match=match):
            await flow._on_work_unit(CLIENT_PEER, _unit(trainer=flow.identity.address), None)
        assert flow.started == [] and "job-1" not in flow._job_checked


def test_receipts_are_stored_once_and_follow_their_settlement(tmp_path: Path) -> None:
    db = TrainerDB(tmp_path / "t.db")
    args = {"contract": CONTRACT, "chain_id": CHAIN, "operator": OPERATOR.address, "signature": "0x01"}
    assert db.add_receipt("j", 0, 1, receipt={"a": 1}, **args)
    assert not db.add_receipt("j", 0, 1, receipt={"a": 2}, **args)
    db.set_receipt(("j", 0, 1), ReceiptStatus.CLAIMED, tx="0xabc")
    db.close()
    db = TrainerDB(tmp_path / "t.db")
    rec = db.receipt("j", 0, 1)
    assert rec is not None and rec.receipt == {"a": 1} and rec.status == ReceiptStatus.CLAIMED and rec.tx == "0xabc"
    assert db.receipts(status=ReceiptStatus.HELD) == [] and len(db.receipts("j")) == 1
