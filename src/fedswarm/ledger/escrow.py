"""`EscrowV2`: the synchronous client of FedSwarmEscrowV2 (payer, operator and trainer calls).

Built on :class:`~fedswarm.ledger.evm.Ledger`'s machinery (local signing, local nonce with
resync, retries, receipts with a timeout, revert decoding, paged event reads with a cursor), with
the v2 artifact. Every amount is in contract units (wei on anvil, tinybar on Hedera).

Who calls what: the payer funds (``fund``) and may ``cancel``; the operator (client node) adds
trainers, signs receipts (:meth:`EscrowV2.issue_receipt`), settles verdicts in batches
(:meth:`EscrowV2.settle_batches`), completes and may cancel; a trainer ``claim``s with a receipt;
anyone may ``release`` after the claim window; everyone ``withdraw``s. Nodes run trio: call
these methods through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.escrow_types import (
    V2_CONTRACT_NAME,
    ZERO32,
    JobStatusV2,
    JobTerms,
    JobView,
    Registration,
    SettleOutcome,
    SkipReason,
    TrainerTerms,
    UnitState,
    UnitStatusV2,
    Verdict,
)
from fedswarm.ledger.evm import EventCursor, Ledger, LedgerEvent, TxReceipt
from fedswarm.ledger.hedera import ValueUnits
from fedswarm.ledger.receipts import EscrowDomain, Receipt, sign_receipt

# ---------------------------------------------------------------------------- batch sizing
# Gas of `settle` measured on anvil (cancun, solc 0.8.30, optimizer 200) by
# tests/ledger/test_escrow_v2_anvil.py for batches of fresh units, each paying a trainer whose
# pending balance was zero (the most expensive verdict): 57.5k gas per verdict over a ~34k base.
# A verdict paying a trainer already paid in this job costs about 40k, a rejection 35k, a skipped
# verdict 10k. That test fails if a batch drifts more than 3 % from these figures or exceeds the
# linear bound below.
SETTLE_GAS_MEASURED = {1: 91_231, 10: 608_695, 50: 2_908_403}
SETTLE_BASE_GAS = 45_000  # transaction + batch overhead (intrinsic 21000 included)
SETTLE_GAS_PER_VERDICT = 58_000  # upper bound per verdict (fresh unit slot, fresh pending slot)
# ABI size of settle(bytes32, Verdict[]): selector, job key, array offset and length, then six
# 32-byte words per verdict.
SETTLE_CALLDATA_BASE = 4 + 3 * 32
VERDICT_CALLDATA_BYTES = 6 * 32
# A signed legacy transaction adds at most this much around its calldata (RLP of nonce, gas
# price, gas, to, value, v, r, s and the list headers).
TX_ENVELOPE_BYTES = 160
HEDERA_GAS_CAP = 15_000_000  # per-transaction gas cap of a Hedera contract call
HEDERA_TX_BYTES = 6 * 1024  # Hedera transaction size limit (without the large-callData path)


def settle_gas(verdicts: int) -> int:
    """Upper bound on the gas of one ``settle`` batch of ``verdicts`` verdicts."""
    return SETTLE_BASE_GAS + SETTLE_GAS_PER_VERDICT * verdicts


def settle_tx_bytes(verdicts: int) -> int:
    """Upper bound on the size of the signed ``settle`` transaction of ``verdicts`` verdicts."""
    return TX_ENVELOPE_BYTES + SETTLE_CALLDATA_BASE + VERDICT_CALLDATA_BYTES * verdicts


def max_verdicts_per_batch(
    gas_cap: int = HEDERA_GAS_CAP, tx_bytes: int = HEDERA_TX_BYTES, gas_margin: float = 1.25
) -> int:
    """The largest settle batch under both the gas cap (with the client's estimate margin)
    and the transaction size limit; on Hedera today the size limit is the binding one."""
    by_gas = int((gas_cap / gas_margin - SETTLE_BASE_GAS) // SETTLE_GAS_PER_VERDICT)
    by_size = (tx_bytes - TX_ENVELOPE_BYTES - SETTLE_CALLDATA_BASE) // VERDICT_CALLDATA_BYTES
    return max(1, min(by_gas, by_size))


def job_key_of(payer: str, nonce: int) -> bytes:
    """The job key the contract derives: ``keccak256(abi.encode(payer, nonce))``."""
    return keccak(abi_encode(["address", "uint256"], [to_checksum_address(payer), nonce]))


@dataclass(frozen=True)
class Funded:
    """A funded job: its key and the funding transaction."""

    job_key: bytes
    receipt: TxReceipt


@dataclass
class EscrowV2:
    """Client of one deployed FedSwarmEscrowV2 for one signing account.

    ``deploy_block`` is where event scans start when no cursor says otherwise. The other
    parameters are those of :class:`~fedswarm.ledger.evm.Ledger`.
    """

    rpc_url: str
    contract_address: str
    account: LocalAccount
    units: ValueUnits = field(default_factory=ValueUnits.native)
    chain_id: int | None = None
    deploy_block: int = 0
    receipt_timeout: float = 60.0
    gas_margin: float = 1.25
    retries: int = 4

    def __post_init__(self) -> None:
        self.ledger = Ledger(
            rpc_url=self.rpc_url,
            contract_address=self.contract_address,
            account=self.account,
            units=self.units,
            chain_id=self.chain_id,
            receipt_timeout=self.receipt_timeout,
            gas_margin=self.gas_margin,
            retries=self.retries,
            artifact=load_artifact(V2_CONTRACT_NAME),
        )
        self.contract_address = self.ledger.contract_address
        self.w3 = self.ledger.w3

    # ------------------------------------------------------------------ basics

    @property
    def address(self) -> str:
        """Checksummed address of the signing account."""
        return self.ledger.address

    def get_chain_id(self) -> int:
        """The chain id (read once, cached)."""
        return self.ledger.get_chain_id()

    def domain(self) -> EscrowDomain:
        """The EIP-712 domain receipts for this deployment are signed in."""
        return EscrowDomain(self.get_chain_id(), self.contract_address)

    def block_number(self) -> int:
        """The latest block number."""
        return self.ledger.block_number()

    def chain_time(self) -> int:
        """The latest block's timestamp (what the contract compares deadlines with)."""
        return int(self.ledger._rpc(lambda: self.w3.eth.get_block("latest"))["timestamp"])

    def balance(self, address: str | None = None) -> int:
        """Wallet balance of ``address`` (default: ours) in contract units."""
        return self.ledger.balance(address)

    def job_key(self, nonce: int, payer: str | None = None) -> bytes:
        """The key of the job ``payer`` (default: us) funds with ``nonce``."""
        return job_key_of(payer or self.address, nonce)

    # ------------------------------------------------------------------ payer

    def fund(
        self, nonce: int, terms: JobTerms, trainers: Sequence[TrainerTerms], amount: int
    ) -> Funded:
        """Fund job (us, ``nonce``) with ``amount``, naming the operator and the first
        trainers (their price × units is reserved; the rest of ``amount`` is free escrow)."""
        receipt = self.ledger.transact(
            "fund", [nonce, terms.as_tuple(), [t.as_tuple() for t in trainers]], value=amount
        )
        return Funded(self.job_key(nonce), receipt)

    def cancel(self, job_key: bytes) -> TxReceipt:
        """Close an open job now (payer or operator): free escrow back to the payer at once,
        reservations at release."""
        return self.ledger.transact("cancel", [_b32(job_key)])

    # ------------------------------------------------------------------ operator

    def add_trainers(self, job_key: bytes, trainers: Sequence[TrainerTerms]) -> TxReceipt:
        """Register more trainers (standbys) from the job's free escrow, within the payer's
        price cap and unit budget."""
        return self.ledger.transact("addTrainers", [_b32(job_key), [t.as_tuple() for t in trainers]])

    def issue_receipt(
        self,
        job_key: bytes,
        round_: int,
        unit: int,
        trainer: str,
        update_hash: bytes,
        issued_at: int | None = None,
    ) -> tuple[Receipt, bytes]:
        """Sign a receipt as the job's operator (no transaction); ``issued_at`` defaults to
        now (wall clock, unix seconds)."""
        receipt = Receipt(
            job_key=_b32(job_key), round=round_, unit=unit, trainer=trainer,
            update_hash=_b32(update_hash),
            issued_at=int(time.time()) if issued_at is None else issued_at,
        )
        return receipt, sign_receipt(receipt, self.domain(), self.account)

    def settle_batch(self, job_key: bytes, verdicts: Sequence[Verdict]) -> SettleOutcome:
        """Settle one batch (at most :func:`max_verdicts_per_batch` verdicts for Hedera); units
        already settled or claimed come back in ``skipped``."""
        if not verdicts:
            raise ValueError("settle_batch needs at least one verdict")
        receipt = self.ledger.transact("settle", [_b32(job_key), [v.as_tuple() for v in verdicts]])
        return SettleOutcome.from_events(receipt, self.ledger.events_of(receipt.tx_hash))

    def settle_batches(
        self, job_key: bytes, verdicts: Sequence[Verdict], max_per_batch: int | None = None
    ) -> list[SettleOutcome]:
        """Settle ``verdicts`` in as few transactions as the batch limit allows."""
        size = max_per_batch or max_verdicts_per_batch(gas_margin=self.gas_margin)
        return [
            self.settle_batch(job_key, verdicts[i : i + size]) for i in range(0, len(verdicts), size)
        ]

    def complete(self, job_key: bytes, result_pointer: bytes, result_sha256: bytes) -> TxReceipt:
        """Record the (encrypted) result and its sha256; free escrow goes back to the payer."""
        return self.ledger.transact(
            "complete", [_b32(job_key), bytes(result_pointer), _b32(result_sha256)]
        )

    # ------------------------------------------------------------------ trainer, anyone

    def claim(self, receipt: Receipt, signature: bytes) -> TxReceipt:
        """Claim our unit with the operator's receipt (after its settle window)."""
        return self.ledger.transact(
            "claim", [receipt.job_key, receipt.as_tuple(), bytes(signature)]
        )

    def release(self, job_key: bytes) -> TxReceipt:
        """Return what the job still holds to its payer (anyone, after the release time)."""
        return self.ledger.transact("release", [_b32(job_key)])

    def withdraw(self) -> TxReceipt:
        """Move our whole pending balance to our wallet."""
        return self.ledger.transact("withdraw", [])

    # ------------------------------------------------------------------ views

    def job(self, job_key: bytes) -> JobView:
        """A job's parties, status, timing and money (status NONE if unknown)."""
        return JobView.from_tuple(self.ledger.call("job", _b32(job_key)))

    def trainer(self, job_key: bytes, address: str) -> Registration:
        """A trainer's registration for a job."""
        return Registration.from_tuple(
            self.ledger.call("trainer", _b32(job_key), to_checksum_address(address))
        )

    def unit(self, job_key: bytes, round_: int, unit: int) -> UnitState:
        """Who did a unit and how it ended."""
        return UnitState.from_tuple(self.ledger.call("unitState", _b32(job_key), round_, unit))

    def result(self, job_key: bytes) -> tuple[bytes, bytes]:
        """``(result pointer, result sha256)`` recorded at completion (empty before)."""
        pointer, digest = self.ledger.call("result", _b32(job_key))
        return bytes(pointer), bytes(digest)

    def pending(self, address: str | None = None) -> int:
        """Withdrawable balance of ``address`` (default: ours)."""
        return int(self.ledger.call("pending", to_checksum_address(address or self.address)))

    def min_claim_window(self) -> int:
        """The deployment's minimum claim window (seconds)."""
        return int(self.ledger.call("minClaimWindow"))

    def receipt_digest(self, receipt: Receipt) -> bytes:
        """The contract's own EIP-712 digest of ``receipt`` (for checking a signer's side)."""
        return bytes(self.ledger.call("receiptDigest", receipt.as_tuple()))

    # ------------------------------------------------------------------ events

    def read_events(
        self,
        cursor: EventCursor | Path | str | None = None,
        from_block: int | None = None,
        to_block: int | None = None,
    ) -> list[LedgerEvent]:
        """Contract events from the cursor's position (else ``from_block``, else the deployment
        block) to ``to_block`` (default latest), in ≤ 500-block pages; the cursor is saved
        after each page."""
        start = self.deploy_block if from_block is None else from_block
        if isinstance(cursor, str | Path):
            cursor = EventCursor(cursor, start)
        return self.ledger.read_events(cursor, from_block=start, to_block=to_block)


def claim_times(job: JobView, receipt: Receipt) -> tuple[int, int] | None:
    """``(claimable_from, claimable_until)`` for ``receipt`` on ``job`` as the contract sees
    it now, or None if it can never pay (issued after the job closed, or job released)."""
    if receipt.issued_at > job.close_at or job.status in (JobStatusV2.NONE, JobStatusV2.RELEASED):
        return None
    return receipt.issued_at + job.settle_window, job.release_at


def _b32(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


__all__ = [
    "ZERO32",
    "EscrowV2",
    "Funded",
    "JobStatusV2",
    "JobTerms",
    "JobView",
    "Registration",
    "SettleOutcome",
    "SkipReason",
    "TrainerTerms",
    "UnitState",
    "UnitStatusV2",
    "Verdict",
    "claim_times",
    "job_key_of",
    "max_verdicts_per_batch",
    "settle_gas",
    "settle_tx_bytes",
]
