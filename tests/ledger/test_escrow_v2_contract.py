"""FedSwarmEscrowV2 on an in-process EVM: every function's success path and every revert."""

from __future__ import annotations

from pathlib import Path

import pytest
from _escrow_v2_chain import ETH, MIN_CLAIM, PRICE, ZERO32, V2Chain, revert_reason
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak

from fedswarm.ledger.contract import load_artifact_file
from fedswarm.ledger.escrow import job_key_of
from fedswarm.ledger.escrow_types import (
    JobStatusV2,
    SkipReason,
    TrainerTerms,
    UnitStatusV2,
    Verdict,
)

SETTLE = 50
SHA = keccak(text="result")


@pytest.fixture(scope="module")
def base() -> V2Chain:
    return V2Chain()


@pytest.fixture
def chain(base: V2Chain):
    # One deployment per module (py-evm is slow); each test runs on a snapshot.
    snap = base.tester.take_snapshot()
    yield base
    base.tester.revert_to_snapshot(snap)


@pytest.fixture
def actors(chain: V2Chain):
    """payer, operator, trainer 1, trainer 2, stranger."""
    return chain.accounts[1:6]


def funded(chain: V2Chain, actors, units: int = 2, value: int = ETH, nonce: int = 7, **kw) -> bytes:
    """A job with t1 at PRICE and t2 at 2*PRICE, ``units`` each."""
    payer, op, t1, t2, _ = actors
    trainers = [TrainerTerms(t1, PRICE, units), TrainerTerms(t2, 2 * PRICE, units)]
    return chain.fund(payer, nonce, chain.terms(op, **kw), trainers, value)


def at(chain: V2Chain, timestamp: int) -> None:
    """Make the next transaction run at ``timestamp``."""
    chain.tester.time_travel(timestamp)


def verdict(rnd: int, unit: int, trainer: str, ok: bool = True) -> Verdict:
    return Verdict(rnd, unit, trainer, keccak(text=f"u{rnd}/{unit}"), ok,
                   ZERO32 if ok else keccak(text="worse loss"))


# ---------------------------------------------------------------------------- deploy, views


def test_constructor_floor_and_domain(chain, actors):
    assert chain.fn().minClaimWindow().call() == MIN_CLAIM
    assert chain.fn().CLAIM_WINDOW_FLOOR().call() == 10
    _, name, version, chain_id, contract, _, _ = chain.fn().eip712Domain().call()
    assert (name, version, chain_id, contract) == ("FedSwarmEscrow", "2", chain.chain_id, chain.address)
    factory = chain.w3.eth.contract(abi=chain.artifact.abi, bytecode=chain.artifact.bytecode)
    tx = factory.constructor(9).build_transaction({"from": actors[0], "gas": 5_000_000})
    with pytest.raises(TransactionFailed) as info:
        chain.tester.call({k: tx[k] for k in ("from", "data", "gas")}, "pending")
    assert chain.decode_raw(info.value) == "ClaimWindowFloor(minClaimWindow=9, floor=10)"


def test_views_of_unknown_job(chain, actors):
    key = keccak(text="nothing")
    job = chain.job(key)
    assert job.status == JobStatusV2.NONE and job.release_at == 0 and job.escrow == 0
    assert tuple(chain.fn().trainer(key, actors[2]).call()) == (0, 0, 0, False)
    assert tuple(chain.fn().unitState(key, 0, 0).call())[1] == UnitStatusV2.NONE
    assert tuple(chain.fn().result(key).call()) == (b"", ZERO32)


# ---------------------------------------------------------------------------- fund


def test_fund_registers_and_reserves(chain, actors):
    payer, op, t1, t2, _ = actors
    terms = chain.terms(op, cap=3 * PRICE, budget=5)
    trainers = [TrainerTerms(t1, PRICE, 2), TrainerTerms(t2, 3 * PRICE, 3)]
    receipt = chain.tx(chain.fn().fund(9, terms.as_tuple(), [t.as_tuple() for t in trainers]), payer, ETH)
    key = job_key_of(payer, 9)
    assert chain.fn().jobKeyOf(payer, 9).call() == key
    job = chain.job(key)
    assert (job.payer, job.operator, job.status) == (payer, op, JobStatusV2.OPEN)
    assert (job.deadline, job.close_at, job.settle_window, job.claim_window) == (
        terms.deadline, terms.deadline, terms.settle_window, terms.claim_window)
    assert job.release_at == terms.deadline + terms.settle_window + terms.claim_window
    assert (job.price_cap, job.unit_budget, job.units_registered, job.units_done) == (3 * PRICE, 5, 5, 0)
    assert job.reserved == 11 * PRICE and job.escrow == ETH and job.free == ETH - 11 * PRICE
    assert tuple(chain.fn().trainer(key, t2).call()) == (3 * PRICE, 3, 0, True)
    assert chain.balance(chain.address) == ETH
    (ev,) = chain.events(receipt, "JobFunded")
    assert (ev["jobKey"], ev["payer"], ev["operator"], ev["nonce"], ev["amount"]) == (key, payer, op, 9, ETH)
    assert [(e["trainer"], e["price"], e["units"]) for e in chain.events(receipt, "TrainerAdded")] == [
        (t1, PRICE, 2), (t2, 3 * PRICE, 3)]


def test_fund_without_trainers_keeps_everything_free(chain, actors):
    payer, op = actors[:2]
    key = chain.fund(payer, 1, chain.terms(op), [], 5 * PRICE)
    job = chain.job(key)
    assert (job.free, job.reserved, job.units_registered) == (5 * PRICE, 0, 0)


def test_fund_reverts(chain, actors):
    payer, op, t1, t2, _ = actors
    f = chain.fn()

    def fund(terms, trainers, value=ETH, nonce=1):
        return lambda: chain.tx(f.fund(nonce, terms.as_tuple(), [t.as_tuple() for t in trainers]), payer, value)

    ok = chain.terms(op)
    one = [TrainerTerms(t1, PRICE, 2)]
    assert revert_reason(fund(ok, one, value=0)) == "ZeroAmount()"
    assert revert_reason(fund(chain.terms("0x" + "00" * 20), one)) == "ZeroAddress()"
    past = ok.__class__(op, chain.now(), 50, MIN_CLAIM, 2 * PRICE, 10)
    assert revert_reason(fund(past, one)).startswith("BadDeadline")
    assert revert_reason(fund(chain.terms(op, claim=MIN_CLAIM - 1), one)) == (
        f"ClaimWindowTooShort(claimWindow={MIN_CLAIM - 1}, minimum={MIN_CLAIM})")
    assert revert_reason(fund(chain.terms(op, cap=PRICE - 1), one)) == (
        f"PriceAboveCap(trainer={t1}, price={PRICE}, cap={PRICE - 1})")
    assert revert_reason(fund(chain.terms(op, budget=3), [TrainerTerms(t1, PRICE, 2), TrainerTerms(t2, PRICE, 2)])) == (
        "UnitBudgetExceeded(wanted=4, budget=3)")
    assert revert_reason(fund(ok, [TrainerTerms("0x" + "00" * 20, PRICE, 1)])).startswith("InvalidTrainer")
    assert revert_reason(fund(ok, [TrainerTerms(t1, PRICE, 0)])) == f"InvalidTrainer(trainer={t1})"
    assert revert_reason(fund(ok, [TrainerTerms(t1, PRICE, 1), TrainerTerms(t1, PRICE, 1)])) == (
        f"AlreadyRegistered(trainer={t1})")
    assert revert_reason(fund(ok, one, value=2 * PRICE - 1)) == (
        f"InsufficientFunds(available={2 * PRICE - 1}, needed={2 * PRICE})")
    chain.tx(f.fund(1, ok.as_tuple(), [one[0].as_tuple()]), payer, ETH)
    key = job_key_of(payer, 1)
    assert revert_reason(fund(ok, one)) == f"JobExists(jobKey=0x{key.hex()})"
    assert chain.balance(chain.address) == ETH  # only the one good funding


def test_job_key_cannot_be_squatted(chain, actors):
    payer, op, t1, _, squatter = actors
    # The payer's key is public while bidding; a squatter funding "the same job" (same nonce,
    # same terms) gets a key of its own: keys derive from msg.sender.
    squat = chain.fund(squatter, 7, chain.terms(squatter), [TrainerTerms(t1, PRICE, 1)], PRICE)
    mine = funded(chain, actors, nonce=7)
    assert squat != mine == job_key_of(payer, 7)
    assert chain.job(mine).payer == payer and chain.job(mine).operator == op
    assert chain.job(squat).payer == squatter
    # Nor can anyone fund a key directly: there is no call that takes one.
    assert not any(i["name"] == "jobKey" for i in chain.fn().fund.abi["inputs"])


def test_released_and_cancelled_keys_are_tombstones(chain, actors):
    payer, op = actors[:2]
    key = funded(chain, actors, nonce=3)
    chain.tx(chain.fn().cancel(key), payer)
    at(chain, chain.job(key).release_at + 1)
    chain.tx(chain.fn().release(key), payer)
    again = lambda: chain.fund(payer, 3, chain.terms(op), [], PRICE)  # noqa: E731
    assert revert_reason(again).startswith("JobExists")


# ---------------------------------------------------------------------------- addTrainers


def test_add_trainers_by_operator_and_payer(chain, actors):
    payer, op, t1, t2, stranger = actors
    key = chain.fund(payer, 1, chain.terms(op, budget=6), [TrainerTerms(t1, PRICE, 2)], 10 * PRICE)
    receipt = chain.tx(chain.fn().addTrainers(key, [TrainerTerms(t2, 2 * PRICE, 2).as_tuple()]), op)
    chain.tx(chain.fn().addTrainers(key, [TrainerTerms(stranger, PRICE, 1).as_tuple()]), payer)
    job = chain.job(key)
    assert job.reserved == 2 * PRICE + 4 * PRICE + PRICE and job.free == 3 * PRICE
    assert job.units_registered == 5
    assert chain.events(receipt, "TrainerAdded")[0]["trainer"] == t2


def test_operator_cannot_register_itself_beyond_the_payers_caps(chain, actors):
    payer, op, t1, _, stranger = actors
    key = chain.fund(payer, 1, chain.terms(op, cap=PRICE, budget=4), [TrainerTerms(t1, PRICE, 2)], ETH)
    add = lambda terms, who=op: lambda: chain.tx(chain.fn().addTrainers(key, [terms.as_tuple()]), who)  # noqa: E731
    # A wallet-funded job with plenty of free escrow: the cap and the budget still hold.
    assert revert_reason(add(TrainerTerms(op, PRICE + 1, 1))) == (
        f"PriceAboveCap(trainer={op}, price={PRICE + 1}, cap={PRICE})")
    assert revert_reason(add(TrainerTerms(op, PRICE, 3))) == "UnitBudgetExceeded(wanted=5, budget=4)"
    chain.tx(chain.fn().addTrainers(key, [TrainerTerms(op, PRICE, 2).as_tuple()]), op)  # within caps
    assert revert_reason(add(TrainerTerms(stranger, 1, 1))).startswith("UnitBudgetExceeded")
    # Settling accepts for itself pays at most price × units.
    chain.settle(key, [verdict(0, u, op) for u in range(5)], op)
    assert chain.pending(op) == 2 * PRICE


def test_add_trainers_reverts(chain, actors):
    payer, op, t1, t2, stranger = actors
    f = chain.fn()
    missing = keccak(text="missing")
    assert revert_reason(lambda: chain.tx(f.addTrainers(missing, []), op)).startswith("UnknownJob")
    key = chain.fund(payer, 1, chain.terms(op), [TrainerTerms(t1, PRICE, 2)], 4 * PRICE)
    add = lambda terms, who=op: lambda: chain.tx(f.addTrainers(key, [terms.as_tuple()]), who)  # noqa: E731
    assert revert_reason(add(TrainerTerms(t2, PRICE, 1), stranger)) == (
        f"NotPayerOrOperator(jobKey=0x{key.hex()}, caller={stranger})")
    assert revert_reason(add(TrainerTerms(t2, PRICE, 1), t1)).startswith("NotPayerOrOperator")
    assert revert_reason(add(TrainerTerms(t1, PRICE, 1))).startswith("AlreadyRegistered")
    assert revert_reason(add(TrainerTerms(t2, PRICE, 3))) == (
        f"InsufficientFunds(available={2 * PRICE}, needed={3 * PRICE})")
    at(chain, chain.job(key).deadline)
    assert revert_reason(add(TrainerTerms(t2, PRICE, 1))).startswith("DeadlinePassed")
    chain.tx(f.complete(key, b"p", SHA), op)
    assert revert_reason(add(TrainerTerms(t2, PRICE, 1))).startswith("JobNotOpen")


# ---------------------------------------------------------------------------- settle


def test_settle_accepts_and_rejects(chain, actors):
    _, op, t1, t2, _ = actors
    key = funded(chain, actors)
    v_ok, v_bad = verdict(0, 0, t1), verdict(0, 1, t2, ok=False)
    receipt = chain.settle(key, [v_ok, v_bad], op)
    assert chain.pending(t1) == PRICE and chain.pending(t2) == 0
    assert tuple(chain.fn().unitState(key, 0, 0).call()) == (t1, UnitStatusV2.ACCEPTED)
    assert tuple(chain.fn().unitState(key, 0, 1).call()) == (t2, UnitStatusV2.REJECTED)
    assert tuple(chain.fn().trainer(key, t2).call()) == (2 * PRICE, 2, 1, True)
    job = chain.job(key)
    # Reserved 2*PRICE + 4*PRICE; PRICE paid, 2*PRICE freed by the rejection.
    assert (job.escrow, job.reserved, job.free, job.units_done) == (ETH - PRICE, 3 * PRICE, ETH - 4 * PRICE, 2)
    ev = chain.events(receipt, "UnitSettled")
    assert [(e["trainer"], e["accepted"], e["amount"], e["updateHash"], e["reasonHash"]) for e in ev] == [
        (t1, True, PRICE, v_ok.update_hash, ZERO32), (t2, False, 0, v_bad.update_hash, v_bad.reason_hash)]
    assert chain.balance(chain.address) == job.escrow + chain.pending(t1)


def test_settle_skips_done_units_and_used_budgets(chain, actors):
    _, op, t1, t2, _ = actors
    key = funded(chain, actors, units=2)
    chain.settle(key, [verdict(0, 0, t1)], op)
    # Unit (0,0) again (even naming another trainer) and a third unit of t1's 2-unit budget.
    receipt = chain.settle(key, [verdict(0, 0, t1), verdict(0, 0, t2, ok=False), verdict(1, 0, t1),
                                 verdict(2, 0, t1), verdict(1, 1, t2)], op)
    skipped = [(e["round"], e["unit"], e["trainer"], e["reason"]) for e in chain.events(receipt, "UnitSkipped")]
    assert skipped == [(0, 0, t1, SkipReason.ALREADY_DONE), (0, 0, t2, SkipReason.ALREADY_DONE),
                       (2, 0, t1, SkipReason.BUDGET_USED)]
    assert chain.pending(t1) == 2 * PRICE and chain.pending(t2) == 2 * PRICE
    assert chain.fn().unitState(key, 2, 0).call()[1] == UnitStatusV2.NONE


def test_reject_after_close_refunds_payer(chain, actors):
    payer, op, t1, _, _ = actors
    key = funded(chain, actors)
    chain.tx(chain.fn().complete(key, b"p", SHA), op)
    before = chain.pending(payer)
    receipt = chain.settle(key, [verdict(0, 0, t1, ok=False)], op)
    assert chain.pending(payer) == before + PRICE
    assert chain.events(receipt, "Refunded")[0]["amount"] == PRICE
    assert chain.job(key).free == 0


def test_settle_reverts(chain, actors):
    payer, op, t1, _, stranger = actors
    missing = keccak(text="missing")
    assert revert_reason(lambda: chain.settle(missing, [], op)).startswith("UnknownJob")
    key = funded(chain, actors)
    v = [verdict(0, 0, t1)]
    assert revert_reason(lambda: chain.settle(key, v, payer)) == f"NotOperator(jobKey=0x{key.hex()}, caller={payer})"
    assert revert_reason(lambda: chain.settle(key, v, t1)).startswith("NotOperator")
    assert revert_reason(lambda: chain.settle(key, [verdict(0, 0, stranger)], op)) == f"NotRegistered(trainer={stranger})"
    at(chain, chain.job(key).release_at + 1)
    chain.tx(chain.fn().release(key), stranger)
    assert revert_reason(lambda: chain.settle(key, v, op)).startswith("JobReleasedAlready")
    assert chain.pending(t1) == 0


# ---------------------------------------------------------------------------- claim


def test_claim_after_settle_window(chain, actors):
    _, op, t1, _, _ = actors
    key = funded(chain, actors)
    r = chain.receipt(key, 0, 3, t1)
    sig = chain.sign(r, op)
    at(chain, r.issued_at + SETTLE)
    receipt = chain.claim(r, sig)
    assert chain.pending(t1) == PRICE
    assert tuple(chain.fn().unitState(key, 0, 3).call()) == (t1, UnitStatusV2.CLAIMED)
    (ev,) = chain.events(receipt, "UnitClaimed")
    assert (ev["trainer"], ev["updateHash"], ev["issuedAt"], ev["amount"]) == (t1, r.update_hash, r.issued_at, PRICE)
    job = chain.job(key)
    assert job.units_done == 1 and job.reserved == 5 * PRICE and job.escrow == ETH - PRICE


def test_claim_timing(chain, actors):
    _, op, t1, _, _ = actors
    key = funded(chain, actors)
    now = chain.now()
    future = chain.receipt(key, 0, 0, t1, issued_at=now + 500)
    sig = chain.sign(future, op)
    # Dated in the future: not claimable before issuedAt + settleWindow.
    assert revert_reason(lambda: chain.claim(future, sig)) == f"SettleWindowOpen(claimableAt={now + 500 + SETTLE})"
    past_deadline = chain.receipt(key, 0, 1, t1, issued_at=chain.job(key).deadline + 1)
    reason = revert_reason(lambda: chain.claim(past_deadline, chain.sign(past_deadline, op)))
    assert reason == f"ReceiptAfterClose(issuedAt={past_deadline.issued_at}, closeAt={chain.job(key).deadline})"
    at(chain, now + 500 + SETTLE)
    chain.claim(future, sig)
    assert chain.pending(t1) == PRICE


def test_receipt_after_completion_is_refused(chain, actors):
    _, op, t1, _, _ = actors
    key = funded(chain, actors)
    before = chain.receipt(key, 0, 0, t1)
    sig_before = chain.sign(before, op)
    chain.tx(chain.fn().complete(key, b"p", SHA), op)
    close_at = chain.job(key).close_at
    assert close_at == chain.now()
    late = chain.receipt(key, 0, 1, t1, issued_at=close_at + 1)
    at(chain, close_at + 1 + SETTLE)
    assert revert_reason(lambda: chain.claim(late, chain.sign(late, op))) == (
        f"ReceiptAfterClose(issuedAt={close_at + 1}, closeAt={close_at})")
    chain.claim(before, sig_before)  # issued before completion: still paid
    assert chain.pending(t1) == PRICE


def test_claim_deadline_and_release(chain, actors):
    payer, op, t1, t2, stranger = actors
    key = funded(chain, actors)
    r1, r2 = chain.receipt(key, 0, 0, t1), chain.receipt(key, 0, 1, t2)
    s1, s2 = chain.sign(r1, op), chain.sign(r2, op)
    release_at = chain.job(key).release_at
    at(chain, release_at)
    assert revert_reason(lambda: chain.tx(chain.fn().release(key), stranger)) == f"ReleaseTooEarly(releaseAt={release_at})"
    chain.claim(r1, s1)  # mined at release_at: the last second of the claim window
    # The next block is one second later.
    assert revert_reason(lambda: chain.claim(r2, s2)) == f"ClaimWindowOver(releaseAt={release_at})"
    receipt = chain.tx(chain.fn().release(key), stranger)
    assert revert_reason(lambda: chain.claim(r2, s2)) == f"JobReleasedAlready(jobKey=0x{key.hex()})"
    assert chain.pending(payer) == ETH - PRICE and chain.pending(t1) == PRICE
    assert chain.events(receipt, "JobReleased")[0]["refund"] == ETH - PRICE


def test_claim_reverts(chain, actors):
    payer, op, t1, t2, stranger = actors
    missing = keccak(text="missing")
    r = chain.receipt(missing, 0, 0, t1)
    assert revert_reason(lambda: chain.claim(r, chain.sign(r, op))).startswith("UnknownJob")
    key = funded(chain, actors, units=1)
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)
    at(chain, r.issued_at + SETTLE)
    assert revert_reason(lambda: chain.claim(r, sig, sender=stranger)) == (
        f"NotReceiptTrainer(caller={stranger}, trainer={t1})")
    other = funded(chain, actors, nonce=8)
    assert revert_reason(lambda: chain.claim(r, sig, job_key=other)) == (
        f"ReceiptJobMismatch(jobKey=0x{other.hex()}, receiptJobKey=0x{key.hex()})")
    unreg = chain.receipt(key, 0, 1, stranger, issued_at=r.issued_at)
    assert revert_reason(lambda: chain.claim(unreg, chain.sign(unreg, op))) == f"NotRegistered(trainer={stranger})"
    chain.claim(r, sig)
    assert revert_reason(lambda: chain.claim(r, sig)) == "UnitAlreadyDone(round=0, unit=0, status=3)"
    # t1's budget (1 unit) is used: another receipt of t1 cannot pay.
    r2 = chain.receipt(key, 0, 2, t1, issued_at=r.issued_at)
    assert revert_reason(lambda: chain.claim(r2, chain.sign(r2, op))) == f"BudgetUsed(trainer={t1}, units=1)"
    # A settled unit cannot be claimed.
    chain.settle(key, [verdict(0, 3, t2, ok=False)], op)
    r3 = chain.receipt(key, 0, 3, t2, issued_at=r.issued_at)
    assert revert_reason(lambda: chain.claim(r3, chain.sign(r3, op))) == "UnitAlreadyDone(round=0, unit=3, status=2)"
    assert chain.pending(t1) == PRICE and chain.pending(t2) == 0 and chain.pending(payer) == 0


def test_unassigned_work_cannot_be_claimed(chain, actors):
    _, op, t1, _, _ = actors
    key = funded(chain, actors)
    # v1 paid a commit for any unit number; in v2 a claim needs the operator's signature.
    forged = chain.receipt(key, 0, 99, t1)
    at(chain, forged.issued_at + SETTLE)
    assert revert_reason(lambda: chain.claim(forged, chain.sign(forged, t1))) == (
        f"SignerNotOperator(signer={t1}, operator={op})")
    assert chain.pending(t1) == 0


def test_claim_racing_a_settle_batch(chain, actors):
    _, op, t1, t2, _ = actors
    key = funded(chain, actors)
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)
    at(chain, r.issued_at + SETTLE)
    chain.claim(r, sig)  # the claim lands first; the operator's batch was built before it
    receipt = chain.settle(key, [verdict(0, 0, t1, ok=False), verdict(0, 1, t2)], op)
    assert [e["reason"] for e in chain.events(receipt, "UnitSkipped")] == [SkipReason.ALREADY_DONE]
    assert [(e["unit"], e["amount"]) for e in chain.events(receipt, "UnitSettled")] == [(1, 2 * PRICE)]
    assert chain.pending(t1) == PRICE and chain.pending(t2) == 2 * PRICE
    assert chain.fn().unitState(key, 0, 0).call()[1] == UnitStatusV2.CLAIMED


# ---------------------------------------------------------------------------- complete, cancel, release


def test_complete_refunds_free_escrow(chain, actors):
    payer, op, t1, _, _ = actors
    key = funded(chain, actors)
    chain.settle(key, [verdict(0, 0, t1)], op)
    receipt = chain.tx(chain.fn().complete(key, b"enc-pointer", SHA), op)
    job = chain.job(key)
    # Escrow ETH - PRICE paid; reserved 6*PRICE - PRICE stays for receipts until release.
    assert job.status == JobStatusV2.COMPLETED and job.close_at == chain.now()
    assert job.free == 0 and job.reserved == 5 * PRICE and chain.pending(payer) == ETH - 6 * PRICE
    assert tuple(chain.fn().result(key).call()) == (b"enc-pointer", SHA)
    (ev,) = chain.events(receipt, "JobCompleted")
    assert (ev["resultPointer"], ev["resultSha256"], ev["refund"]) == (b"enc-pointer", SHA, ETH - 6 * PRICE)
    assert chain.events(receipt, "Refunded")[0]["payer"] == payer
    assert job.release_at == job.close_at + SETTLE + MIN_CLAIM
    at(chain, job.release_at + 1)
    chain.tx(chain.fn().release(key), t1)
    assert chain.pending(payer) == ETH - PRICE and chain.job(key).status == JobStatusV2.RELEASED
    assert chain.balance(chain.address) == chain.pending(payer) + chain.pending(t1)


def test_complete_reverts(chain, actors):
    payer, op, _, _, _ = actors
    f = chain.fn()
    assert revert_reason(lambda: chain.tx(f.complete(keccak(text="x"), b"", SHA), op)).startswith("UnknownJob")
    key = funded(chain, actors)
    assert revert_reason(lambda: chain.tx(f.complete(key, b"", SHA), payer)).startswith("NotOperator")
    chain.tx(f.complete(key, b"", SHA), op)
    assert revert_reason(lambda: chain.tx(f.complete(key, b"", SHA), op)) == f"JobNotOpen(jobKey=0x{key.hex()}, status=2)"
    assert revert_reason(lambda: chain.tx(f.cancel(key), op)).startswith("JobNotOpen")


@pytest.mark.parametrize("by", ["payer", "operator"])
def test_cancel_closes_now_and_refunds_all_not_paid(chain, actors, by):
    payer, op, t1, t2, _ = actors
    key = funded(chain, actors)
    chain.settle(key, [verdict(0, 0, t2)], op)
    held = chain.receipt(key, 0, 1, t1)
    sig = chain.sign(held, op)
    receipt = chain.tx(chain.fn().cancel(key), payer if by == "payer" else op)
    job = chain.job(key)
    assert job.status == JobStatusV2.CANCELLED and job.close_at == chain.now()
    assert chain.pending(payer) == ETH - 6 * PRICE  # the free escrow, at once
    assert chain.events(receipt, "JobCancelled")[0]["by"] == (payer if by == "payer" else op)
    late = chain.receipt(key, 0, 2, t1, issued_at=job.close_at + 1)
    at(chain, job.close_at + 1 + SETTLE)
    assert revert_reason(lambda: chain.claim(late, chain.sign(late, op))).startswith("ReceiptAfterClose")
    chain.claim(held, sig)  # a receipt issued before the cancellation still pays
    at(chain, job.release_at + 1)
    chain.tx(chain.fn().release(key), t2)
    assert chain.pending(payer) == ETH - 2 * PRICE - PRICE
    assert chain.pending(t1) == PRICE and chain.pending(t2) == 2 * PRICE
    assert chain.balance(chain.address) == sum(chain.pending(a) for a in (payer, t1, t2))


def test_cancel_reverts(chain, actors):
    _, op, t1, _, stranger = actors
    f = chain.fn()
    assert revert_reason(lambda: chain.tx(f.cancel(keccak(text="x")), op)).startswith("UnknownJob")
    key = funded(chain, actors)
    assert revert_reason(lambda: chain.tx(f.cancel(key), stranger)).startswith("NotPayerOrOperator")
    assert revert_reason(lambda: chain.tx(f.cancel(key), t1)).startswith("NotPayerOrOperator")
    chain.tx(f.cancel(key), op)
    assert revert_reason(lambda: chain.tx(f.cancel(key), op)) == f"JobNotOpen(jobKey=0x{key.hex()}, status=3)"


def test_release_without_completion(chain, actors):
    payer, op, t1, _, stranger = actors
    key = funded(chain, actors)
    chain.settle(key, [verdict(0, 0, t1)], op)
    job = chain.job(key)
    assert job.release_at == job.deadline + SETTLE + MIN_CLAIM
    # The operator died: nothing completes, yet nobody's money is locked for good.
    at(chain, job.release_at + 1)
    receipt = chain.tx(chain.fn().release(key), stranger)
    assert chain.pending(payer) == ETH - PRICE and chain.pending(t1) == PRICE
    assert chain.job(key).escrow == 0 and chain.job(key).reserved == 0
    assert chain.events(receipt, "Refunded")[0]["amount"] == ETH - PRICE
    assert chain.balance(chain.address) == ETH


def test_release_reverts(chain, actors):
    stranger = actors[4]
    f = chain.fn()
    assert revert_reason(lambda: chain.tx(f.release(keccak(text="x")), stranger)).startswith("UnknownJob")
    key = funded(chain, actors)
    assert revert_reason(lambda: chain.tx(f.release(key), stranger)).startswith("ReleaseTooEarly")
    at(chain, chain.job(key).release_at + 1)
    chain.tx(f.release(key), stranger)
    assert revert_reason(lambda: chain.tx(f.release(key), stranger)).startswith("JobReleasedAlready")


# ---------------------------------------------------------------------------- withdraw, stray value


def test_withdraw_pays_exactly_once(chain, actors):
    _, op, t1, _, stranger = actors
    key = funded(chain, actors)
    chain.settle(key, [verdict(0, 0, t1)], op)
    before = chain.balance(t1)
    receipt = chain.tx(chain.fn().withdraw(), t1)
    assert chain.balance(t1) == before + PRICE - chain.gas_cost(receipt)
    assert chain.pending(t1) == 0 and chain.events(receipt, "Withdrawn")[0]["amount"] == PRICE
    assert revert_reason(lambda: chain.tx(chain.fn().withdraw(), t1)) == "NothingToWithdraw()"
    assert revert_reason(lambda: chain.tx(chain.fn().withdraw(), stranger)) == "NothingToWithdraw()"
    assert chain.balance(chain.address) == chain.job(key).escrow


def test_stray_value_is_rejected(chain, actors):
    sender = actors[4]
    for tx in ({"value": 1}, {"value": 1, "data": "0xdeadbeef"}):
        try:
            tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": chain.address, "gas": 100_000, **tx})
            assert chain.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0
        except Exception as exc:  # refused on submission
            assert not isinstance(exc, AssertionError), exc
    assert chain.balance(chain.address) == 0


# ---------------------------------------------------------------------------- reentrancy

ATTACKER = Path(__file__).resolve().parent / "contracts" / "ReentrancyAttackerV2.json"


def _attacker(chain: V2Chain, user: str):
    attacker = chain.deploy(load_artifact_file(ATTACKER), chain.address)
    chain.tx(attacker.functions.fundAndCancel(chain.now() + 1000, MIN_CLAIM), user, ETH)
    assert chain.pending(attacker.address) == ETH
    return attacker


def test_reentrant_withdraw_is_blocked(chain, actors):
    user = actors[0]
    attacker = _attacker(chain, user)
    chain.tx(attacker.functions.attack(), user)
    # Paid once; the nested withdraw() failed with the guard's error.
    assert attacker.functions.received().call() == ETH
    assert attacker.functions.reentered().call() is False
    assert chain.artifact.decode_revert(attacker.functions.lastError().call()) == "ReentrancyGuardReentrantCall()"
    assert chain.balance(attacker.address) == ETH
    assert chain.balance(chain.address) == 0 and chain.pending(attacker.address) == 0


def test_refused_payment_reverts_and_keeps_credit(chain, actors):
    user = actors[0]
    attacker = _attacker(chain, user)
    chain.tx(attacker.functions.setRefuse(True), user)
    assert "TransferFailed" in revert_reason(lambda: chain.tx(attacker.functions.attack(), user))
    assert chain.pending(attacker.address) == ETH and chain.balance(chain.address) == ETH


def test_artifact_records_the_pinned_openzeppelin():
    import json

    from fedswarm.ledger.contract import ARTIFACT_DIR
    from fedswarm.tools import REPO_ROOT

    pinned = json.loads((REPO_ROOT / "tools" / "package.json").read_text())["dependencies"]
    raw = json.loads((ARTIFACT_DIR / "FedSwarmEscrowV2.json").read_text())
    assert raw["libraries"] == {"@openzeppelin/contracts": pinned["@openzeppelin/contracts"]}
    assert pinned["@openzeppelin/contracts"].startswith("5.")
