"""The trainer's pay: follow the settlement of committed units, claim, withdraw.

A background loop reads each committed unit's state on chain (accepted, rejected, claimed)
and claims those the client left unsettled past the job's settle window; what was claimed is
withdrawn at once, and the pay of a finished job when its JobFinished arrives.
"""

from __future__ import annotations

import contextlib
import time

import trio

from fedswarm.ledger.contract import UnitStatus
from fedswarm.ledger.evm import job_id_from
from fedswarm.roles.trainer.core import TrainerCore, log, one_line
from fedswarm.roles.trainer.records import UNSETTLED_STATES, UnitState


class Payments(TrainerCore):
    """Settlement follow-up, claims of unsettled units and withdrawals."""

    async def _withdraw(self, job_id: str | None, audit_topic: str | None) -> None:
        """Withdraw our pending pay if there is any; audit it on ``audit_topic``."""
        try:
            pending = await trio.to_thread.run_sync(self.ledger.pending)
            self.pending_wei = pending
            if pending <= 0:
                return
            receipt = await trio.to_thread.run_sync(self.ledger.withdraw, limiter=self._chain_limiter)
            self.pending_wei = 0
            log.info("withdrew %d wei (tx %s)", pending, receipt.tx_hash)
            self.stats.bump("withdrawals")
            if audit_topic and job_id:
                self._audit(audit_topic, job_id, "withdrawn", amount_wei=str(pending), tx=receipt.tx_hash)
        except Exception as exc:
            log.warning("withdraw failed: %s", one_line(exc))

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.check_settlements()
            except Exception as exc:
                log.warning("settlement check failed: %s", one_line(exc))
            await trio.sleep(self.options.claim_interval_s)

    async def check_settlements(self) -> None:
        """Follow the settlement of our committed units; claim those left unsettled past the
        settle window; withdraw what was claimed."""
        claimed_for: tuple[str, str] | None = None
        settle_windows: dict[str, int] = {}
        unsettled = self.db.units(states=UNSETTLED_STATES)
        for rec in unsettled:
            if rec.key in self._running:
                continue  # still delivering
            chain_job = job_id_from(rec.job_id)
            info = await trio.to_thread.run_sync(self.ledger.unit, chain_job, rec.round, rec.unit)
            topic = rec.work.get("audit_topic", "")
            if info.status == UnitStatus.ACCEPTED:
                self.db.set_unit(rec.key, UnitState.PAID)
            elif info.status == UnitStatus.REJECTED:
                self.db.set_unit(rec.key, UnitState.REJECTED, reason="rejected by the client: 0x" + info.reason_hash.hex())
            elif info.status == UnitStatus.CLAIMED:
                self.db.set_unit(rec.key, UnitState.CLAIMED)
            elif info.status == UnitStatus.COMMITTED:
                if rec.job_id not in settle_windows:
                    settle_windows[rec.job_id] = (await trio.to_thread.run_sync(self.ledger.job, chain_job)).settle_window
                claimable_at = info.committed_at + settle_windows[rec.job_id]
                if time.time() < claimable_at + 1:
                    continue
                try:
                    await self._advance_chain_clock(claimable_at)
                    receipt = await trio.to_thread.run_sync(
                        self.ledger.claim_unsettled, chain_job, rec.round, rec.unit, limiter=self._chain_limiter)
                except Exception as exc:  # e.g. the chain's clock is behind ours: next time
                    log.info("claim of %s/%s of job %s failed: %s", rec.round, rec.unit, rec.job_id, one_line(exc))
                    continue
                self.db.set_unit(rec.key, UnitState.CLAIMED, commit_tx=rec.commit_tx)
                self._audit(topic, rec.job_id, "claimed", rec.round, rec.unit, tx=receipt.tx_hash)
                self.stats.bump("units_claimed")
                claimed_for = (rec.job_id, topic)
        if claimed_for is not None:
            await self._withdraw(*claimed_for)
        elif unsettled or self.pending_wei is None or time.monotonic() - self._pending_at > 60:
            # Nothing to settle: the balance only changes through us, so poll it rarely
            # (an idle trainer's web3 call every few seconds was a tenth of its CPU).
            self._pending_at = time.monotonic()
            with contextlib.suppress(Exception):
                self.pending_wei = await trio.to_thread.run_sync(self.ledger.pending)

    async def _advance_chain_clock(self, not_before: int) -> None:
        """Make sure the latest block is not older than ``not_before``.

        The ledger estimates gas against the latest block, whose timestamp on a chain that
        mines only on demand (anvil) is that of the last transaction: a claim would then look
        premature forever. A zero-value transfer to ourselves mines a fresh block. On Hedera
        blocks come every ~2 s, so this never fires there.
        """
        latest = await trio.to_thread.run_sync(lambda: int(self.ledger.w3.eth.get_block("latest")["timestamp"]))
        if latest >= not_before:
            return
        await trio.to_thread.run_sync(self.ledger.transfer, self.identity.address, 0, limiter=self._chain_limiter)
