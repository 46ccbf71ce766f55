"""The trainer's pay: follow the settlement of receipted units, claim, withdraw.

A background loop reads the on-chain state of every unit we hold a receipt for (on the escrow
its job was funded on): settled as accepted or rejected, or claimed; a receipt still unsettled
once its settle window has passed (and before the job's release) is claimed with the receipt
itself. What was claimed is withdrawn at once, and the pay of a finished job when its
JobFinished arrives. All chain calls run in threads, never on the trio loop.

Units of old v1 jobs (committed on chain by the trainer) are still followed on the v1 contract
and claimed there after its settle window.
"""

from __future__ import annotations

import contextlib
import time

import trio

from fedswarm.ledger.contract import UnitStatus
from fedswarm.ledger.escrow import EscrowV2, claim_times
from fedswarm.ledger.escrow_types import JobView, UnitStatusV2
from fedswarm.ledger.evm import Ledger, job_id_from
from fedswarm.ledger.receipts import Receipt
from fedswarm.roles.trainer.core import TrainerCore, log, one_line
from fedswarm.roles.trainer.records import UNSETTLED_STATES, ReceiptRecord, ReceiptStatus, UnitState

# How a unit's settlement on chain shows in our records: (receipt status, unit state).
SETTLED = {
    UnitStatusV2.ACCEPTED: (ReceiptStatus.PAID, UnitState.PAID),
    UnitStatusV2.REJECTED: (ReceiptStatus.REJECTED, UnitState.REJECTED),
    UnitStatusV2.CLAIMED: (ReceiptStatus.CLAIMED, UnitState.CLAIMED),
}


class Payments(TrainerCore):
    """Settlement follow-up, claims with receipts and withdrawals."""

    async def _withdraw(self, job_id: str | None, audit_topic: str | None) -> None:
        """Withdraw our pending pay from the job's escrow (and from our default escrow and the
        v1 contract, if they hold any); audit it on ``audit_topic``, or, for a withdrawal with
        no job topic (node-level), on the node's ``TOPIC_ID`` when one is set."""
        topic = audit_topic or self.audit.default_topic
        job = self.db.job(job_id) if job_id else None
        sources: list[EscrowV2 | Ledger] = [self.escrow, self.ledger]
        if job is not None and job.contract and job.contract != self.contract:
            sources.insert(0, self.escrow_at(job.contract))
        for source in sources:
            try:
                pending = await trio.to_thread.run_sync(source.pending)
                if pending <= 0:
                    continue
                receipt = await trio.to_thread.run_sync(source.withdraw, limiter=self._chain_limiter)
                log.info("withdrew %d wei (tx %s)", pending, receipt.tx_hash)
                self.stats.bump("withdrawals")
                if topic:
                    self._audit(topic, job_id, "withdrawn", amount_wei=str(pending), tx=receipt.tx_hash)
            except Exception as exc:
                log.warning("withdraw failed: %s", one_line(exc))
        with contextlib.suppress(Exception):
            self.pending_wei = await trio.to_thread.run_sync(self.escrow.pending)

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.check_settlements()
            except Exception as exc:
                log.warning("settlement check failed: %s", one_line(exc))
            await trio.sleep(self.options.claim_interval_s)

    async def check_settlements(self) -> None:
        """Follow the settlement of our receipted units; claim those left unsettled past the
        settle window; withdraw what was claimed."""
        claimed_for = await self._check_receipts()
        claimed_for = await self._check_v1_units() or claimed_for
        if claimed_for is not None:
            await self._withdraw(*claimed_for)
        elif self.pending_wei is None or time.monotonic() - self._pending_at > 60:
            # Nothing claimed: the balance only changes through settlements, so poll it rarely
            # (an idle trainer's web3 call every few seconds was a tenth of its CPU).
            self._pending_at = time.monotonic()
            with contextlib.suppress(Exception):
                self.pending_wei = await trio.to_thread.run_sync(self.escrow.pending)

    async def _check_receipts(self) -> tuple[str, str] | None:
        """One pass over the receipts still held; the (job, audit topic) of a claim, if any."""
        claimed_for: tuple[str, str] | None = None
        views: dict[str, JobView] = {}
        for rec in self.db.receipts(status=ReceiptStatus.HELD):
            # A unit whose key is still being handed over (to a client that may be gone for
            # good) is followed and claimed all the same: the receipt pays either way, and the
            # handover may outlast the job's release. Its unit state is the handover's to set.
            escrow = self.escrow_at(rec.contract)
            receipt = Receipt.from_json(rec.receipt)
            state = await trio.to_thread.run_sync(escrow.unit, receipt.job_key, rec.round, rec.unit)
            topic = self._topic(rec.job_id)
            if state.status in SETTLED and (state.status != UnitStatusV2.CLAIMED
                                            or state.trainer.lower() == self.identity.address.lower()):
                status, unit_state = SETTLED[state.status]
                self.db.set_receipt(rec.key, status)
                if rec.key not in self._running:
                    self.db.set_unit(rec.key, unit_state)
                self._audit(topic, rec.job_id, status.value, rec.round, rec.unit)
                continue
            if state.status != UnitStatusV2.NONE:
                continue  # settled for another trainer: cannot happen with a valid receipt
            if rec.job_id not in views:
                views[rec.job_id] = await trio.to_thread.run_sync(escrow.job, receipt.job_key)
            times = claim_times(views[rec.job_id], receipt)
            if times is None:
                self.db.set_receipt(rec.key, ReceiptStatus.LAPSED)
                log.warning("receipt for %s/%s of job %s can no longer pay", rec.round, rec.unit, rec.job_id)
                continue
            claimable_from, claimable_until = times
            if time.time() < claimable_from + 1:
                continue
            if claimed_for is None and await self._claim(escrow, rec, receipt, claimable_from, claimable_until):
                claimed_for = (rec.job_id, topic)
            elif claimed_for is not None:
                await self._claim(escrow, rec, receipt, claimable_from, claimable_until)
        return claimed_for

    async def _claim(self, escrow: EscrowV2, rec: ReceiptRecord, receipt: Receipt, claimable_from: int,
                     claimable_until: int) -> bool:
        """Claim one unit with its receipt; False when the chain refuses it (next pass)."""
        try:
            await self._advance_chain_clock(claimable_from)
            signature = bytes.fromhex(rec.signature.removeprefix("0x"))
            tx = await trio.to_thread.run_sync(escrow.claim, receipt, signature, limiter=self._chain_limiter)
        except Exception as exc:  # e.g. the chain's clock is behind ours: next time
            log.info("claim of %s/%s of job %s failed: %s", rec.round, rec.unit, rec.job_id, one_line(exc))
            if time.time() > claimable_until:
                self.db.set_receipt(rec.key, ReceiptStatus.LAPSED)
            return False
        self.db.set_receipt(rec.key, ReceiptStatus.CLAIMED, tx=tx.tx_hash)
        if rec.key not in self._running:
            self.db.set_unit(rec.key, UnitState.CLAIMED)
        self._audit(self._topic(rec.job_id), rec.job_id, "claimed", rec.round, rec.unit, tx=tx.tx_hash)
        self.stats.bump("units_claimed")
        return True

    def _topic(self, job_id: str) -> str:
        job = self.db.job(job_id)
        return job.audit_topic if job is not None else ""

    async def _check_v1_units(self) -> tuple[str, str] | None:
        """Old v1 units committed on chain: follow them there, claim after the settle window."""
        claimed_for: tuple[str, str] | None = None
        settle_windows: dict[str, int] = {}
        for rec in self.db.units(states=UNSETTLED_STATES):
            job = self.db.job(rec.job_id)
            if rec.key in self._running or job is None or job.is_v2:
                continue
            chain_job = job_id_from(rec.job_id)
            info = await trio.to_thread.run_sync(self.ledger.unit, chain_job, rec.round, rec.unit)
            if info.status == UnitStatus.ACCEPTED:
                self.db.set_unit(rec.key, UnitState.PAID)
            elif info.status == UnitStatus.REJECTED:
                self.db.set_unit(rec.key, UnitState.REJECTED, reason="rejected by the client: 0x" + info.reason_hash.hex())
            elif info.status == UnitStatus.CLAIMED:
                self.db.set_unit(rec.key, UnitState.CLAIMED)
            elif info.status == UnitStatus.COMMITTED:
                if rec.job_id not in settle_windows:
                    settle_windows[rec.job_id] = (await trio.to_thread.run_sync(self.ledger.job, chain_job)).settle_window
                if time.time() < info.committed_at + settle_windows[rec.job_id] + 1:
                    continue
                try:
                    receipt = await trio.to_thread.run_sync(
                        self.ledger.claim_unsettled, chain_job, rec.round, rec.unit, limiter=self._chain_limiter)
                except Exception as exc:
                    log.info("v1 claim of %s/%s of job %s failed: %s", rec.round, rec.unit, rec.job_id, one_line(exc))
                    continue
                self.db.set_unit(rec.key, UnitState.CLAIMED)
                self._audit(job.audit_topic, rec.job_id, "claimed", rec.round, rec.unit, tx=receipt.tx_hash)
                claimed_for = (rec.job_id, job.audit_topic)
        return claimed_for

    async def _advance_chain_clock(self, not_before: int) -> None:
        """Make sure the latest block is not older than ``not_before``.

        Gas is estimated against the latest block, whose timestamp on a chain that mines only
        on demand (anvil) is that of the last transaction: a claim would then look premature
        forever. A zero-value transfer to ourselves mines a fresh block. On Hedera blocks come
        every ~2 s, so this never fires there.
        """
        latest = await trio.to_thread.run_sync(self.escrow.chain_time)
        if latest >= not_before:
            return
        await trio.to_thread.run_sync(self.escrow.ledger.transfer, self.identity.address, 0,
                                      limiter=self._chain_limiter)
