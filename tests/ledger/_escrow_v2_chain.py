"""In-process EVM (eth-tester + py-evm) with FedSwarmEscrowV2 deployed, for the v2 contract tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _escrow_chain import EscrowChain, Reverted
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_utils import keccak
from web3 import Web3

from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.escrow import job_key_of
from fedswarm.ledger.escrow_types import (
    V2_CONTRACT_NAME,
    ZERO32,
    JobTerms,
    JobView,
    TrainerTerms,
    Verdict,
)
from fedswarm.ledger.receipts import EscrowDomain, Receipt, sign_receipt

MIN_CLAIM = 100  # the test deployment's minimum claim window (seconds)
PRICE = 10**15
ETH = 10**18

__all__ = ["ETH", "MIN_CLAIM", "PRICE", "ZERO32", "Reverted", "V2Chain", "revert_reason"]


class V2Chain(EscrowChain):
    """A fresh in-process chain with FedSwarmEscrowV2 deployed, local keys for every account
    (receipts are signed off chain) and helpers to fund jobs and sign receipts."""

    def __init__(self, min_claim_window: int = MIN_CLAIM) -> None:  # noqa: D107 (no super: v2 only)
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(Web3.EthereumTesterProvider(self.tester))
        self.accounts = list(self.w3.eth.accounts)
        self.keys: dict[str, LocalAccount] = {
            Web3.to_checksum_address(k.public_key.to_checksum_address()): Account.from_key(k.to_bytes())
            for k in self.tester.backend.account_keys
        }
        self.artifact = load_artifact(V2_CONTRACT_NAME)
        self.escrow = self.deploy(self.artifact, min_claim_window)
        self.address = self.escrow.address
        self.chain_id = int(self.w3.eth.chain_id)

    def domain(self, contract: str | None = None, chain_id: int | None = None) -> EscrowDomain:
        return EscrowDomain(chain_id or self.chain_id, contract or self.address)

    def key(self, nonce: int, payer: str) -> bytes:
        return job_key_of(payer, nonce)

    def fund(self, payer: str, nonce: int, terms: JobTerms, trainers: Sequence[TrainerTerms],
             value: int) -> bytes:
        self.tx(self.fn().fund(nonce, terms.as_tuple(), [t.as_tuple() for t in trainers]), payer, value)
        return self.key(nonce, payer)

    def terms(self, operator: str, life: int = 1000, settle: int = 50, claim: int = MIN_CLAIM,
              cap: int = 2 * PRICE, budget: int = 10) -> JobTerms:
        return JobTerms(operator, self.now() + life, settle, claim, cap, budget)

    def receipt(self, job_key: bytes, rnd: int, unit: int, trainer: str, issued_at: int | None = None,
                update: bytes | None = None) -> Receipt:
        return Receipt(job_key, rnd, unit, trainer, update or keccak(text=f"{rnd}/{unit}/{trainer}"),
                       self.now() if issued_at is None else issued_at)

    def sign(self, receipt: Receipt, signer: str, domain: EscrowDomain | None = None) -> bytes:
        return sign_receipt(receipt, domain or self.domain(), self.keys[signer])

    def claim(self, receipt: Receipt, sig: bytes, sender: str | None = None,
              job_key: bytes | None = None) -> Any:
        return self.tx(self.fn().claim(job_key or receipt.job_key, receipt.as_tuple(), sig),
                       sender or receipt.trainer)

    def settle(self, job_key: bytes, verdicts: Sequence[Verdict], sender: str) -> Any:
        return self.tx(self.fn().settle(job_key, [v.as_tuple() for v in verdicts]), sender)

    def job(self, job_key: bytes) -> JobView:  # type: ignore[override]
        return JobView.from_tuple(tuple(self.fn().job(job_key).call()))


def revert_reason(fn: Any) -> str:
    """The decoded error of a call expected to revert."""
    try:
        fn()
    except Reverted as exc:
        return exc.reason
    raise AssertionError("expected a revert")
