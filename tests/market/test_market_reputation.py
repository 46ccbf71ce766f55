"""Reputation from the contract's settlement and claim events."""

from __future__ import annotations

from fractions import Fraction

import pytest
from eth_utils import keccak

from fedswarm.ledger.evm import LedgerEvent
from fedswarm.market.reputation import NEW_TRAINER, Reputation, reputation_from_events

A = "0x00000000000000000000000000000000000000Aa"
B = "0x00000000000000000000000000000000000000bB"
JOB1, JOB2 = keccak(text="job-1"), keccak(text="job-2")


def settled(job, rnd, unit, trainer, accepted, block=1):
    args = {"jobId": job, "round": rnd, "unit": unit, "trainer": trainer, "accepted": accepted,
            "amount": 10 if accepted else 0, "reasonHash": b"\0" * 32}
    return LedgerEvent("UnitSettled", args, block, "0x" + "ab" * 32, unit)


def claimed(job, rnd, unit, trainer):
    return {"name": "UnitClaimed",
            "args": {"jobId": "0x" + job.hex(), "round": rnd, "unit": unit, "trainer": trainer,
                     "amount": 10}}


def test_counts_per_trainer_from_mixed_event_shapes():
    # Prepare: what Ledger.read_events returns, plus dicts (e.g. from JSON) and unrelated events
    events = [
        LedgerEvent("JobCreated", {"jobId": JOB1}, 1, "0x00", 0),
        settled(JOB1, 0, 0, A, True),
        settled(JOB1, 0, 1, B, False),
        settled(JOB1, 1, 0, A, True),
        settled(JOB2, 0, 0, A, False),
        claimed(JOB2, 0, 1, B),
        {"name": "Withdrawn", "args": {"account": A, "amount": 20}},
        settled(JOB1, 1, 1, B, True),
    ]

    # Execute
    rep = reputation_from_events(events)

    # Assert: keys are lowercase addresses
    assert rep == {A.lower(): Reputation(accepted=2, rejected=1, claimed=0),
                   B.lower(): Reputation(accepted=1, rejected=1, claimed=1)}


def test_re_reading_overlapping_blocks_does_not_inflate():
    ev = [settled(JOB1, 0, 0, A, True), claimed(JOB1, 0, 1, A)]
    # Same units again, with the job id in the other encoding (hex text vs bytes).
    again = [settled(JOB1, 0, 0, A, True), {"name": "UnitClaimed", "args": {
        "jobId": JOB1, "round": 0, "unit": 1, "trainer": A.upper().replace("0X", "0x"), "amount": 1}}]
    assert reputation_from_events(ev + again) == {A.lower(): Reputation(1, 0, 1)}


def test_score_is_smoothed_and_claims_do_not_move_it():
    assert NEW_TRAINER.score == 0.5
    assert Reputation(3, 1, 0).weight == Fraction(4, 6)
    assert Reputation(0, 4, 0).score == pytest.approx(1 / 6)
    assert Reputation(9, 0, 0).score == pytest.approx(10 / 11) and Reputation(9, 0, 0).score < 1
    assert Reputation(2, 2, 7).score == Reputation(2, 2, 0).score
    assert Reputation(2, 3, 1).settled == 5


def test_no_events_no_reputation():
    assert reputation_from_events([]) == {}
    assert reputation_from_events(iter([LedgerEvent("Credited", {}, 1, "0x", 0)])) == {}


def test_malformed_settlement_event_is_a_clear_error():
    with pytest.raises(ValueError, match="UnitSettled event is missing or has a bad argument"):
        reputation_from_events([{"name": "UnitSettled", "args": {"trainer": A}}])
    with pytest.raises(ValueError, match="UnitClaimed event without args"):
        reputation_from_events([{"name": "UnitClaimed"}])
