"""Settlement off the round's path: a background settler puts the client's verdicts on chain in
batches, closes jobs, releases their reservations and cleans their objects.

Verdicts (accepted, or rejected with the hash of the evidence) are recorded in the unit records
by the review before anything is signed or sent. :class:`Settler` (one task per client node,
started with the role) then walks every v2 job that still has chain work:

1. **verdicts**: receipted units with a verdict and no settlement, at most
   :func:`~fedswarm.ledger.escrow.max_verdicts_per_batch` per transaction. Before each batch it
   reads every unit's state on chain, so after a crash (a batch sent but not recorded) nothing
   is sent twice; the contract skips settled units as well, and skipped units are recorded.
2. **close**: once the job asked for it (``EscrowRecord.closing``) and no verdict is left:
   ``complete`` with the result pointer, or ``cancel`` (a failed or cancelled job): free escrow
   goes back to the payer at once, reservations at release, so receipts stay claimable.
3. **release**: anyone may call it after ``release_at``; the settler does, then withdraws.
4. **cleanup**: ``retention_s`` after the release, the job's chunks, global weights and updates
   are deleted from the store (the result stays).

The chain calls that pay trainers or close a job go through the role's settlement seam
(:meth:`ClientRole.submit_verdicts`, :meth:`ClientRole.complete_job`), which a test double
overrides to be a client that never settles.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import trio

from fedswarm.learning.checks import Verdict as CheckVerdict
from fedswarm.learning.checks import reason_hash
from fedswarm.ledger.escrow import (
    JobStatusV2,
    SettleOutcome,
    UnitStatusV2,
    Verdict,
    max_verdicts_per_batch,
)
from fedswarm.ledger.evm import TxReceipt
from fedswarm.protocol.job import RoundResult
from fedswarm.protocol.topics import job_topic
from fedswarm.roles.client.records import EscrowRecord, JobRecord, UnitRecord
from fedswarm.roles.client.services import ClientServices, in_thread, log
from fedswarm.storage.sealed import JobObjects

SubmitVerdicts = Callable[[JobRecord, list[Verdict]], Awaitable[SettleOutcome | None]]
CompleteJob = Callable[[JobRecord, bytes, bytes], Awaitable[TxReceipt | None]]
IDLE_S = 2.0  # how often the settler looks for work when nobody wakes it
RETRY_S = 10.0  # after a failed chain call


def verdict_of(u: UnitRecord) -> Verdict:
    """The on-chain verdict of a checked, receipted unit (the reason hash of a rejection is
    keccak256 of its evidence, as published on the audit topic)."""
    assert u.update_sha256 is not None and u.verdict in ("accepted", "rejected")
    ok = u.verdict == "accepted"
    reason = bytes(32) if ok else reason_hash(CheckVerdict(False, u.reason or "rejected", "client"))
    return Verdict(round=u.round, unit=u.unit, trainer=u.trainer_address,
                   update_hash=bytes.fromhex(u.update_sha256), accepted=ok, reason_hash=reason)


def unsettled(units: list[UnitRecord]) -> list[UnitRecord]:
    """Units whose verdict is recorded but not yet on chain (only receipted units are owed one)."""
    return [u for u in units if u.receipt is not None and u.verdict in ("accepted", "rejected") and not u.settled]


class Settler:
    """The client's background settlement task (see the module doc)."""

    def __init__(self, svc: ClientServices, submit_verdicts: SubmitVerdicts, complete_job: CompleteJob,
                 batch_size: int | None = None) -> None:
        self.svc = svc
        self.submit_verdicts = submit_verdicts
        self.complete_job = complete_job
        self.batch_size = batch_size or max_verdicts_per_batch()
        self._wake = trio.Event()
        self._retry_after: dict[str, float] = {}

    def kick(self) -> None:
        """Look for work now (a round was checked, a job asked to close)."""
        self._wake.set()

    async def run(self) -> None:
        """Settle forever (the role starts this in the node's nursery)."""
        while True:
            self._wake = trio.Event()
            busy = False
            for job in self.svc.db.jobs():
                if job.job_key is None or time.time() < self._retry_after.get(job.job_id, 0.0):
                    continue
                try:
                    busy |= await self.step(job.job_id)
                except Exception as exc:
                    log.warning("settler: %s: %s", job.job_id, exc)
                    esc = self.svc.db.get_escrow(job.job_id)
                    esc.error = f"{type(exc).__name__}: {exc}"[:300]
                    self.svc.db.put_escrow(job.job_id, esc)
                    self._retry_after[job.job_id] = time.time() + RETRY_S
            if not busy:
                with trio.move_on_after(IDLE_S):
                    await self._wake.wait()

    async def step(self, job_id: str) -> bool:
        """Do the next piece of chain work of one job; True if something was done."""
        svc = self.svc
        job = svc.job(job_id)
        esc = svc.db.get_escrow(job_id)
        if esc.cleaned:
            return False
        if await self._settle_batch(job):
            return True
        if esc.closing and not esc.closed:
            return await self._close(job)
        if esc.closed and not esc.released:
            return await self._release(job)
        if esc.released and time.time() >= (esc.released_at or 0.0) + svc.settings.retention_s:
            await in_thread(self._delete_objects, job)
            esc = svc.db.get_escrow(job_id)
            esc.cleaned = True
            svc.db.put_escrow(job_id, esc)
            return True
        return False

    # ---------------------------------------------------------------- 1. verdicts

    async def _settle_batch(self, job: JobRecord) -> bool:
        svc, key = self.svc, bytes.fromhex(job.job_key or "")
        batch = unsettled(svc.db.units(job.job_id))[: self.batch_size]
        if not batch:
            return False
        fresh: list[UnitRecord] = []
        for u in batch:  # what a crash may have sent already: never twice
            state = await in_thread(svc.escrow.unit, key, u.round, u.unit)
            if state.status == UnitStatusV2.NONE:
                fresh.append(u)
            else:
                self._mark(job, u, None, f"already {state.status.name.lower()} on chain")
        if not fresh:
            return True
        outcome = await self.submit_verdicts(job, [verdict_of(u) for u in fresh])
        if outcome is None:  # the seam sent nothing (a client that never settles)
            for u in fresh:
                self._mark(job, u, None, "not sent")
            return True
        tx = outcome.receipt.tx_hash
        by_unit = {(u.round, u.unit): u for u in fresh}
        paid = sum(amount for (_, _, _, _, amount) in outcome.settled)
        for r, unit, _, _, _ in outcome.settled:
            self._mark(job, by_unit[(r, unit)], tx, None)
        for r, unit, _, reason in outcome.skipped:
            self._mark(job, by_unit[(r, unit)], tx, reason.name.lower())
        esc = svc.record_tx(job.job_id, "settle", outcome.receipt,
                            f"{len(outcome.settled)} settled, {len(outcome.skipped)} skipped")
        esc.paid_wei += paid
        esc.error = None
        svc.db.put_escrow(job.job_id, esc)
        await self._rounds_settled(job, tx)
        return True

    def _mark(self, job: JobRecord, u: UnitRecord, tx: str | None, skipped: str | None) -> None:
        u.settled, u.settle_tx = True, tx
        self.svc.db.put_unit(u)
        if skipped is not None:
            esc = self.svc.db.get_escrow(job.job_id)
            esc.skipped.append({"round": u.round, "unit": u.unit, "trainer": u.trainer_address, "reason": skipped})
            self.svc.db.put_escrow(job.job_id, esc)

    async def _rounds_settled(self, job: JobRecord, tx: str) -> None:
        """Mark checked rounds whose every verdict is on chain as settled."""
        svc = self.svc
        units = svc.db.units(job.job_id)
        for rnd in svc.db.rounds(job.job_id):
            if rnd.state != "checked" or unsettled([u for u in units if u.round == rnd.round]):
                continue
            rnd.state, rnd.settled, rnd.settle_tx = "settled", time.time(), tx
            svc.db.put_round(rnd)
            await svc.audit_entry(job, {"state": "round_settled", "round": rnd.round, "accepted": rnd.accepted,
                                        "rejected": rnd.rejected, "tx": tx})

    # ---------------------------------------------------------------- 2. close

    async def _close(self, job: JobRecord) -> bool:
        svc, key = self.svc, bytes.fromhex(job.job_key or "")
        esc = svc.db.get_escrow(job.job_id)
        view = await in_thread(svc.escrow.job, key)
        receipt: TxReceipt | None = None
        if view.status == JobStatusV2.NONE:  # never funded: nothing to close, release or pay
            esc.closed = esc.released = True
            esc.released_at = time.time()
            svc.db.put_escrow(job.job_id, esc)
            return True
        if view.status == JobStatusV2.OPEN:
            if esc.closing == "complete":
                pointer = (esc.result_pointer or "").encode()
                receipt = await self.complete_job(job, pointer, bytes.fromhex(job.result_sha256 or "00" * 32))
            else:
                receipt = await in_thread(svc.escrow.cancel, key)
        refund = await self._refund_of(receipt)
        esc = svc.db.get_escrow(job.job_id)
        if receipt is not None:
            esc = svc.record_tx(job.job_id, esc.closing or "close", receipt, f"refund {refund}")
        esc.refunded_wei += refund
        esc.closed = True
        esc.release_at = (await in_thread(svc.escrow.job, key)).release_at or None
        svc.db.put_escrow(job.job_id, esc)
        await self._withdraw(job)
        return True

    async def _refund_of(self, receipt: TxReceipt | None) -> int:
        """What a close or release transaction refunded to the payer (its ``Refunded`` event)."""
        if receipt is None:
            return 0
        events = await in_thread(self.svc.escrow.ledger.events_of, receipt.tx_hash)
        return sum(int(e.args.get("amount", 0)) for e in events if e.name == "Refunded")

    # ---------------------------------------------------------------- 3. release

    async def _release(self, job: JobRecord) -> bool:
        svc, key = self.svc, bytes.fromhex(job.job_key or "")
        esc = svc.db.get_escrow(job.job_id)
        if esc.release_at is not None and time.time() <= esc.release_at:
            return False
        view = await in_thread(svc.escrow.job, key)
        if view.status == JobStatusV2.OPEN and time.time() <= view.release_at:
            # never closed on chain (a client that never completes): release after the deadline
            esc.release_at = view.release_at
            svc.db.put_escrow(job.job_id, esc)
            return False
        receipt = None
        if view.status != JobStatusV2.RELEASED:
            if time.time() <= view.release_at + 1:
                return False
            receipt = await in_thread(self._release_tx, key, view.release_at)
        refund = await self._refund_of(receipt)
        esc = svc.db.get_escrow(job.job_id)
        if receipt is not None:
            esc = svc.record_tx(job.job_id, "release", receipt, f"refund {refund}")
        esc.refunded_wei += refund
        if receipt is not None:
            # Everything the job held that did not come back to the payer went to trainers
            # (settled verdicts and receipts they claimed). Released by someone else, the
            # release's refund is not known here: paid stays what the settler paid.
            esc.paid_wei = job.deposited_wei - esc.refunded_wei
        esc.released, esc.released_at = True, time.time()
        svc.db.put_escrow(job.job_id, esc)
        job = svc.job(job.job_id)  # fresh: the job's driver may have written it meanwhile
        svc.event(job, f"escrow released: {esc.refunded_wei} refunded in all, {esc.paid_wei} paid to trainers")
        svc.db.put_job(job)
        await self._withdraw(job)
        return True

    def _release_tx(self, key: bytes, release_at: int) -> TxReceipt:
        """Send ``release`` (blocking; called once the wall clock is past ``release_at``).

        The transaction is estimated against the latest block. A chain that mines only when a
        transaction comes (a devnet at block time 0) keeps the time of its last transaction
        there, possibly long before the release time, and the estimate would revert as too
        early however often it is retried: mine a fresh block first with a zero-value transfer
        to ourselves. A chain with steady blocks (Hedera, a 2 s devnet) never needs it."""
        escrow = self.svc.escrow
        if escrow.chain_time() <= release_at:
            escrow.ledger.transfer(self.svc.identity.address, 0)
        return escrow.release(key)

    async def _withdraw(self, job: JobRecord) -> None:
        """Pull what the contract holds for this node (refunds: the node is the payer)."""
        svc = self.svc
        if await in_thread(svc.escrow.pending, svc.identity.address) > 0:
            receipt = await in_thread(svc.escrow.withdraw)
            svc.record_tx(job.job_id, "withdraw", receipt)

    # ---------------------------------------------------------------- 4. cleanup

    def _delete_objects(self, job: JobRecord) -> None:
        svc, objects = self.svc, JobObjects(job.job_id)
        keys = [c["key"] for c in job.chunks]
        keys += [objects.global_weights(r).key for r in range(job.terms.rounds + 1)]
        keys += [u.update_key for u in svc.db.units(job.job_id)]
        for key in keys:
            try:
                svc.store.delete(key)
            except Exception as exc:  # an object already gone is fine
                log.debug("cleanup of %s: %s", key, exc)


async def round_checked(svc: ClientServices, settler: Settler, job: JobRecord, r: int) -> None:
    """A round was aggregated: its verdicts are recorded; hand them to the settler, tell the
    job's trainers the round's result and add it to the audit trail (no transaction here)."""
    settler.kick()
    rnd = svc.db.get_round(job.job_id, r)
    assert rnd is not None, f"round {r} of {job.job_id} checked before it was recorded"
    await svc.node.publish(job_topic(job.job_id), RoundResult(
        job_id=job.job_id, round=r, val_loss=rnd.metrics.get("loss"),
        val_accuracy=rnd.metrics.get("accuracy"), accepted=rnd.accepted, rejected=rnd.rejected))
    await svc.audit_entry(job, {"state": "round_checked", "round": r, "accepted": rnd.accepted,
                                "rejected": rnd.rejected, "metrics": rnd.metrics})


def request_close(svc: ClientServices, job: JobRecord, closing: str, pointer: str | None = None) -> EscrowRecord:
    """Ask the settler to close ``job`` on chain (``complete`` with ``pointer``, or ``cancel``)
    once its verdicts are settled; the first request wins."""
    esc = svc.db.get_escrow(job.job_id)
    if esc.closing is None:
        esc.closing = "complete" if closing == "complete" else "cancel"
        esc.result_pointer = pointer
        svc.db.put_escrow(job.job_id, esc)
    return esc


async def wait_closed(svc: ClientServices, settler: Settler, job_id: str, timeout: float = math.inf) -> bool:
    """Wait until the settler closed ``job_id`` on chain (True), or ``timeout`` passed."""
    with trio.move_on_after(timeout):
        while not svc.db.get_escrow(job_id).closed:
            settler.kick()
            await trio.sleep(0.25)
        return True
    return False


__all__ = ["Settler", "request_close", "round_checked", "unsettled", "verdict_of", "wait_closed"]
