"""Reputation both ways on a real EscrowV2 (anvil): a trainer's client book reads the escrow's
events from the deployment block with a saved cursor and refuses an operator that rejects most
work; 50 units a trainer washes through 50 fresh payer keys and settles itself do not outrank an
honest trainer's record."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from eth_utils import keccak

from fedswarm.ledger.anvil import DEVNET_MIN_CLAIM_WINDOW, fund, start_anvil
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.escrow_types import JobTerms, TrainerTerms, Verdict
from fedswarm.market.reputation import trainer_reputation
from fedswarm.roles.trainer.clients import ClientBook
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow
ETH, PRICE = 10**18, 10**15


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    try:
        tool_path("anvil")
    except ToolMissing:
        pytest.skip("anvil not installed: run `make tools`")
    proc, info = start_anvil(tmp_path_factory.mktemp("anvil"))
    yield info["chain"]
    proc.terminate()
    proc.wait(15)


def wallet(chain, eth: int = 2, account=None) -> EscrowV2:
    acct = account or Account.create()
    fund(chain, acct.address, eth * ETH)
    return EscrowV2(chain["rpc_url"], chain["escrow_v2_address"], acct, deploy_block=chain["escrow_v2_deploy_block"])


def job(payer: EscrowV2, operator: EscrowV2, nonce: int, trainers: list[str], units: int, accept) -> None:
    """``payer`` funds ``units`` units per trainer, ``operator`` settles them (accept(i) says which)."""
    terms = JobTerms(operator.address, payer.chain_time() + 3600, 60, DEVNET_MIN_CLAIM_WINDOW, PRICE,
                     units * len(trainers))
    key = payer.fund(nonce, terms, [TrainerTerms(t, PRICE, units) for t in trainers],
                     units * len(trainers) * PRICE).job_key
    verdicts = [Verdict(0, i, trainers[i % len(trainers)], os.urandom(32), accept(i),
                        b"\0" * 32 if accept(i) else keccak(text=f"evidence {i}"))
                for i in range(units * len(trainers))]
    operator.settle_batch(key, verdicts)


def test_client_book_refuses_a_rejecting_operator_and_wash_trading_buys_no_rank(chain, tmp_path):
    reader = wallet(chain)
    others = [Account.create().address for _ in range(4)]
    bad, good = wallet(chain), wallet(chain)
    job(bad, bad, 1, others, 6, lambda i: i % 4 == 0)  # 18 of 24 rejected
    job(good, good, 1, others, 6, lambda i: True)
    # A trainer's work dir does not exist before its first unit: the first read must not fail.
    assert ClientBook(tmp_path / "work", reader, max_rate=0.5, min_units=20).refresh() > 0
    book = ClientBook(tmp_path, reader, max_rate=0.5, min_units=20)
    assert book.refresh() > 0
    assert "rejected 18 of 24" in (book.refusal(bad.address) or "")
    assert book.refusal(good.address) is None and book.refusal(None) is None
    assert book.public()["clients_refused"] == {bad.address.lower(): {"settled": 24, "rejected": 18,
                                                                      "rejection_rate": 0.75}}
    # Read incrementally: the cursor and the records persist; nothing new means no events.
    assert (tmp_path / "client-cursor.json").is_file() and book.refresh() == 0
    assert ClientBook(tmp_path, reader, 0.5, 20).refusal(bad.address) is not None  # from disk

    # An honest trainer: three payers, each with its own client node, pay it and two others.
    honest = Account.create().address
    for n in range(3):
        payer = wallet(chain)
        job(payer, wallet(chain), 10 + n, [honest, *others[:2]], 4, lambda i: True)
    # A washer: 50 fresh payer keys fund one unit each, settled with the washer's own key.
    washer = wallet(chain, eth=5)
    for n in range(50):
        job(wallet(chain, eth=1), washer, 100 + n, [washer.address], 1, lambda i: True)
    book.refresh()
    rep = trainer_reputation(book.book.all())
    assert rep[washer.address.lower()].accepted == 50 and rep[honest.lower()].accepted == 12
    assert rep[washer.address.lower()].weight == 0.5  # self-settled: no evidence at all
    assert rep[honest.lower()].weight > 0.9
