"""Reputation both ways: wash trading does not buy a trainer rank, and clients that reject much
work get a visible rejection rate that trainers can refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from _market_helpers import make_bid, wallet
from eth_utils import keccak

from fedswarm.ledger.evm import LedgerEvent
from fedswarm.market.reputation import (
    NEW_TRAINER,
    ReputationPolicy,
    SettlementBook,
    SettlementRecord,
    client_records,
    client_refusal,
    reputation_from_events,
    trainer_reputation,
)
from fedswarm.market.selection import JobRequirements, make_policy

PRICE = 10**15
HONEST, WASHER, OTHER = wallet(1).address.lower(), wallet(2).address.lower(), wallet(3).address.lower()


def addr(tag: str, n: int) -> str:
    return "0x" + keccak(text=f"{tag}-{n}")[:20].hex()


def rec(job: str, unit: int, trainer: str, payer: str, operator: str, accepted: bool = True,
        amount: int = PRICE, claimed: bool = False) -> SettlementRecord:
    return SettlementRecord(job, 0, unit, trainer, payer, operator, accepted, amount if accepted else 0, claimed)


def honest_history() -> list[SettlementRecord]:
    """Three real payers, each running its own client node, each paying this and other trainers."""
    out = []
    for p in range(3):
        payer, op = addr("payer", p), addr("operator", p)
        out += [rec(f"real{p}", u, HONEST, payer, op) for u in range(8)]
        out += [rec(f"real{p}", 100 + u, addr("peer", u), payer, op) for u in range(3)]
    out.append(rec("real0", 50, HONEST, addr("payer", 0), addr("operator", 0), accepted=False))
    return out


def wash(operator_of) -> list[SettlementRecord]:
    """50 units, each funded by a fresh payer key and settled by the washer's own operator."""
    return [rec(f"wash{i}", 0, WASHER, addr("wash-payer", i), operator_of(i)) for i in range(50)]


@pytest.mark.parametrize("operator_of", [
    lambda i: WASHER,                  # settled with the trainer's own key
    lambda i: addr("wash-op", 0),      # one operator key for all 50 jobs
    lambda i: addr("wash-op", i),      # a fresh operator key per job too
], ids=["self-settled", "one-operator", "fresh-operators"])
def test_fifty_wash_units_do_not_outrank_an_honest_record_at_a_lower_price(operator_of) -> None:
    rep = trainer_reputation(honest_history() + wash(operator_of))
    honest, washer = rep[HONEST], rep[WASHER]
    assert washer.accepted == 50 and honest.accepted == 24  # raw counts are shown as they are
    assert washer.weight < honest.weight
    bids = [make_bid(1, PRICE), make_bid(2, PRICE + 1)]
    sel = make_policy().select(bids, JobRequirements(trainers=1, standby=1, price_cap_wei=10 * PRICE), rep)
    assert sel.chosen[0].address.lower() == HONEST
    # Even bidding 5 % under the honest trainer, the washer stays behind it.
    cheaper = [make_bid(1, PRICE), make_bid(2, PRICE * 95 // 100)]
    sel = make_policy().select(cheaper, JobRequirements(trainers=1, standby=1, price_cap_wei=10 * PRICE), rep)
    assert sel.chosen[0].address.lower() == HONEST


def test_self_settled_history_counts_nothing() -> None:
    rep = trainer_reputation(wash(lambda i: WASHER))[WASHER]
    assert rep.weight == NEW_TRAINER.weight and rep.accepted == 50


def test_evidence_follows_what_was_really_paid() -> None:
    base = [rec("p", 100 + u, OTHER, addr("payer", 9), addr("op", 9)) for u in range(2)]
    dust = trainer_reputation(base + [rec("p", u, HONEST, addr("payer", 9), addr("op", 9), amount=1)
                                      for u in range(5)])[HONEST]
    full = trainer_reputation(base + [rec("p", u, HONEST, addr("payer", 9), addr("op", 9))
                                      for u in range(5)])[HONEST]
    assert dust.score == pytest.approx(0.5, abs=1e-6)
    assert full.score > 0.6


def test_one_payer_cannot_vouch_alone_nor_ruin_alone() -> None:
    pol = ReputationPolicy(per_payer_cap=5)
    many = trainer_reputation([rec("j", u, HONEST, addr("payer", 0), addr("op", 0)) for u in range(500)], pol)
    few = trainer_reputation([rec("j", u, HONEST, addr("payer", 0), addr("op", 0)) for u in range(5)], pol)
    assert many[HONEST].weight == few[HONEST].weight
    hostile = trainer_reputation(honest_history() + [
        rec("h", u, HONEST, addr("hostile", 0), addr("hostile-op", 0), accepted=False) for u in range(500)])
    assert hostile[HONEST].score > 0.5  # one hostile client's mass rejections are capped too


def test_claims_are_shown_not_scored() -> None:
    plain = trainer_reputation(honest_history())[HONEST]
    claimed = trainer_reputation(honest_history() + [
        rec("c", u, HONEST, addr("payer", 0), addr("operator", 0), claimed=True) for u in range(9)])[HONEST]
    assert claimed.claimed == 9 and claimed.weight == plain.weight


def test_client_rejection_rate_and_refusal() -> None:
    bad_op, payer = addr("bad-op", 0), addr("payer", 5)
    recs = [rec("b", u, addr("peer", u), payer, bad_op, accepted=u % 4 == 0) for u in range(40)]
    recs += [rec("g", u, addr("peer", u), addr("payer", 6), addr("op", 6)) for u in range(40)]
    clients = client_records(recs)
    assert clients[bad_op].settled == 40 and clients[bad_op].rejected == 30
    assert clients[bad_op].rejection_rate == pytest.approx(0.75)
    assert clients[bad_op].as_dict()["rejection_rate"] == 0.75
    why = client_refusal(clients, [payer.upper().replace("0X", "0x"), bad_op], max_rate=0.5, min_units=20)
    assert why is not None and "30 of 40" in why
    assert client_refusal(clients, [addr("payer", 6), addr("op", 6)]) is None
    # Too few settled units to judge: no refusal yet.
    assert client_refusal(clients, [bad_op], max_rate=0.5, min_units=41) is None
    assert client_refusal(clients, [addr("nobody", 0)]) is None


def _ev(name: str, block: int, **args) -> LedgerEvent:
    return LedgerEvent(name, args, block, "0x" + "ab" * 32, 0)


def test_v2_events_page_by_page_with_a_saved_book(tmp_path: Path) -> None:
    job = keccak(text="job")
    payer, op = addr("payer", 1), addr("op", 1)
    page1 = [_ev("JobFunded", 10, jobKey=job, payer=payer, operator=op, nonce=1, amount=5 * PRICE)]
    page2 = [_ev("UnitSettled", 20, jobKey=job, round=0, unit=0, trainer=HONEST, updateHash=b"\0" * 32,
                 accepted=True, reasonHash=b"\0" * 32, amount=PRICE),
             _ev("UnitSettled", 20, jobKey=job, round=0, unit=1, trainer=OTHER, updateHash=b"\0" * 32,
                 accepted=False, reasonHash=keccak(text="why"), amount=0),
             _ev("UnitClaimed", 21, jobKey="0x" + job.hex(), round=1, unit=0, trainer=HONEST,
                 updateHash=b"\0" * 32, issuedAt=5, amount=PRICE)]
    book = SettlementBook()
    book.ingest(page1)
    book.save(tmp_path / "book.json")
    again = SettlementBook.load(tmp_path / "book.json")
    again.ingest(page2 + page2)  # an overlapping re-read adds nothing
    recs = sorted(again.all(), key=lambda r: (r.round, r.unit))
    assert [(r.trainer, r.payer, r.operator, r.accepted, r.amount, r.claimed) for r in recs] == [
        (HONEST, payer, op, True, PRICE, False), (OTHER, payer, op, False, 0, False),
        (HONEST, payer, op, True, PRICE, True)]
    assert client_records(recs)[op].rejected == 1
    assert SettlementBook.load(tmp_path / "missing.json").all() == []


def test_v1_job_owner_is_payer_and_operator() -> None:
    job = keccak(text="v1")
    owner = addr("owner", 0)
    rep = reputation_from_events([
        _ev("JobCreated", 1, jobId=job, owner=owner, amount=1),
        _ev("UnitSettled", 2, jobId=job, round=0, unit=0, trainer=owner, accepted=True, amount=PRICE,
            reasonHash=b"\0" * 32),
        _ev("UnitSettled", 2, jobId=job, round=0, unit=1, trainer=HONEST, accepted=True, amount=PRICE,
            reasonHash=b"\0" * 32)])
    assert rep[owner].weight == NEW_TRAINER.weight  # paid by itself: nothing
    assert rep[HONEST].score > 0.5
