"""Contract v2 splits payer and operator: a trainer works for a job a wallet paid (payer !=
operator) as long as the operator on chain is the client that announced the job, and still
refuses one whose operator on chain is anyone else (the wallet included)."""

from __future__ import annotations

import time

from eth_account import Account

from fedswarm.ledger.escrow_types import JobStatusV2, JobView, Registration
from fedswarm.roles.trainer.checks import chain_refusal
from fedswarm.roles.trainer.records import JobRecord

PRICE = 10**15
OPERATOR = Account.create()
WALLET = Account.create()
CLIENT_PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
REG = Registration(price=PRICE, units=2, used=0, registered=True)


def _view(payer: str, operator: str) -> JobView:
    return JobView(payer=payer, operator=operator, status=JobStatusV2.OPEN, deadline=int(time.time()) + 3600,
                   close_at=0, settle_window=600, claim_window=86_400, release_at=0, price_cap=2 * PRICE,
                   unit_budget=10, units_registered=4, units_done=0, escrow=10 * PRICE, free=0,
                   reserved=4 * PRICE)


def test_wallet_paid_job_is_accepted_and_operator_still_checked() -> None:
    job = JobRecord("job-1", CLIENT_PEER, "0.0.5", PRICE, "bid", None, operator=OPERATOR.address,
                    contract="0x" + "ab" * 20, chain_id=31337)
    now = time.time()
    assert chain_refusal(job, _view(WALLET.address, OPERATOR.address), REG, now=now, max_settle_window_s=86_400) is None
    # the wallet as operator (or anyone but the announcing client) is refused
    refusal = chain_refusal(job, _view(WALLET.address, WALLET.address), REG, now=now, max_settle_window_s=86_400)
    assert refusal is not None and "chain names operator" in refusal
