"""Live Hedera testnet: deploy EscrowV2 -> fund a job -> the trainer claims its receipt ->
withdraws. Runs only with credentials (it spends a few testnet HBAR); skipped otherwise."""

from __future__ import annotations

import os
import time

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from fedswarm.ledger.deploy import deploy
from fedswarm.ledger.escrow import EscrowV2, JobTerms, TrainerTerms
from fedswarm.ledger.evm import Ledger
from fedswarm.ledger.hedera import (
    MIRROR_URLS,
    TINYBAR_PER_HBAR,
    ValueUnits,
    chain_id_for,
    parse_operator_key,
    relay_url_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.environ.get("OPERATOR_KEY") and os.environ.get("FEDSWARM_LIVE_HEDERA") == "1"),
        reason="live Hedera testnet test: set OPERATOR_KEY (ECDSA) and FEDSWARM_LIVE_HEDERA=1 to spend testnet HBAR",
    ),
]

# tinybar: 1 HBAR per unit, so that the pay a trainer withdraws outweighs the withdrawal's gas
# (a few cents) and the balance check below can tell tinybar from weibar.
PRICE = TINYBAR_PER_HBAR


def test_deploy_fund_claim_withdraw_on_testnet() -> None:
    relay, chain_id = relay_url_for("testnet", os.environ.get("FEDSWARM_RELAY_URL")), chain_id_for("testnet")
    payer_key = parse_operator_key(os.environ["OPERATOR_KEY"])
    dep = deploy(Web3(Web3.HTTPProvider(relay, request_kwargs={"timeout": 60})), payer_key,
                 min_claim_window=10, chain_id=chain_id, gas_cap=15_000_000, mirror_url=MIRROR_URLS["testnet"])

    def escrow(account: object) -> EscrowV2:
        return EscrowV2(rpc_url=relay, contract_address=dep.contract_address, account=account,  # type: ignore[arg-type]
                        units=ValueUnits.hedera(), chain_id=chain_id, receipt_timeout=120.0,
                        deploy_block=dep.block)

    payer, trainer_key = escrow(payer_key), Account.create()
    # Sending HBAR to a new EVM address creates its (hollow) account; its first signed
    # transaction completes it. 5 HBAR covers the claim and the withdrawal.
    Ledger(rpc_url=relay, contract_address=dep.contract_address, account=payer_key,
           units=ValueUnits.hedera(), chain_id=chain_id, receipt_timeout=120.0).transfer(
        trainer_key.address, 5 * TINYBAR_PER_HBAR)
    trainer = escrow(trainer_key)
    now = payer.chain_time()
    terms = JobTerms(payer.address, now + 3600, 10, 10, PRICE, 1)
    key = payer.fund(int(time.time()), terms, [TrainerTerms(trainer.address, PRICE, 1)], amount=2 * PRICE).job_key
    assert payer.job(key).escrow == 2 * PRICE  # the value reached the EVM as tinybar
    receipt, sig = payer.issue_receipt(key, 0, 0, trainer.address, keccak(text="update"), issued_at=payer.chain_time())
    time.sleep(20)  # past the 10 s settle window, in consensus time
    trainer.claim(receipt, sig)
    assert trainer.pending() == PRICE
    before = trainer.balance()
    withdrawal = trainer.withdraw()
    gain = trainer.balance() - before
    # The pay less the withdrawal's fee (both tinybar); a missed conversion is off by 10^10.
    assert 0 < gain <= PRICE and abs(gain - (PRICE - withdrawal.fee)) < PRICE // 20, (gain, withdrawal)
    assert int(trainer.w3.eth.get_balance(trainer.address)) == trainer.balance() * 10**10  # weibar on the RPC
