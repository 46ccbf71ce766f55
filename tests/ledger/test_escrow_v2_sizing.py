"""Batch sizing and small pure helpers of the v2 client (no chain)."""

from __future__ import annotations

from eth_utils import keccak

from fedswarm.ledger.escrow import (
    HEDERA_GAS_CAP,
    SETTLE_GAS_MEASURED,
    JobStatusV2,
    JobView,
    claim_times,
    job_key_of,
    max_verdicts_per_batch,
    settle_gas,
    settle_tx_bytes,
)
from fedswarm.ledger.receipts import Receipt


def test_linear_model_bounds_the_measurements():
    for n, gas in SETTLE_GAS_MEASURED.items():
        assert gas <= settle_gas(n) <= gas * 1.15


def test_max_batch_is_bound_by_size_then_gas():
    assert max_verdicts_per_batch() == 30  # Hedera: 6 KiB binds long before 15M gas
    by_gas = max_verdicts_per_batch(tx_bytes=10**9)
    assert settle_gas(by_gas) * 1.25 <= HEDERA_GAS_CAP < settle_gas(by_gas + 1) * 1.25
    assert max_verdicts_per_batch(gas_cap=1_000_000, tx_bytes=10**9) == 13
    assert max_verdicts_per_batch(gas_cap=1) == 1  # never zero: one verdict always goes
    assert settle_tx_bytes(30) <= 6 * 1024 < settle_tx_bytes(31)


def test_job_key_and_claim_times():
    payer = "0x" + "12" * 20
    assert job_key_of(payer, 1) != job_key_of(payer, 2) != job_key_of("0x" + "13" * 20, 1)
    job = JobView(payer, payer, JobStatusV2.COMPLETED, 1000, 800, 30, 60, 890, 1, 1, 1, 0, 0, 0, 0)
    r = Receipt(keccak(text="j"), 0, 0, payer, keccak(text="u"), 700)
    assert claim_times(job, r) == (730, 890)
    late = Receipt(r.job_key, 0, 0, payer, r.update_hash, 801)
    assert claim_times(job, late) is None
    released = JobView(*(list(job.__dict__.values())[:2] + [JobStatusV2.RELEASED] + list(job.__dict__.values())[3:]))
    assert claim_times(released, r) is None
