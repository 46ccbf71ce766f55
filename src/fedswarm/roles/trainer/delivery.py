"""Handing a trained update over: the fair exchange with the job's operator.

The update was encrypted under a fresh random key (:mod:`.unit`), so the client cannot use it
until the trainer says so::

    UPLOADING ─ PUT to the presigned URL ─► UPLOADED ─ UnitDone ─► UnitReceipt (checked, stored)
      ─► RECEIPTED ─ UpdateKey (sealed to the client) ─► DELIVERED
                                    └─► UnitRefused (signed): REFUSED, keep working for the job
                                    └─► no valid receipt before the deadline: UNRECEIPTED, and
                                        no more work for the job (said on the audit topic)

No chain transaction: the receipt is what pays the unit, through the operator's settlement or
our own claim after the settle window (:mod:`.pay`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import trio

from fedswarm.ledger.receipts import EscrowDomain, ReceiptError
from fedswarm.market.operator import SignatureError
from fedswarm.p2p.node import RpcError
from fedswarm.protocol.job import Ack, UnitDone, UnitReceipt, UnitRefused, UpdateKey, WorkUnit
from fedswarm.roles.trainer.checks import check_receipt, check_refusal
from fedswarm.roles.trainer.core import PERMANENT_RPC_CODES, Key, TrainerCore, UnitError, log
from fedswarm.roles.trainer.records import JobRecord, ReceiptStatus, UnitRecord, UnitState
from fedswarm.storage import sealed

KEY_GRACE_S = 60.0  # the update's key is still offered this long after the unit's deadline
# A receipt settled on chain -> the state its unit shows.
RECEIPT_UNIT_STATES = {ReceiptStatus.PAID: UnitState.PAID, ReceiptStatus.REJECTED: UnitState.REJECTED,
                       ReceiptStatus.CLAIMED: UnitState.CLAIMED}


class Delivery(TrainerCore):
    """Upload, UnitDone, the operator's receipt or refusal, and the update's key."""

    def _unit_dir(self, key: Key) -> Path:
        return self.workdir / "units" / f"{key[0]}-r{key[1]}-u{key[2]}"

    def _cleanup(self, key: Key) -> None:
        shutil.rmtree(self._unit_dir(key), ignore_errors=True)

    async def _upload(self, wu: WorkUnit, rec: UnitRecord) -> None:
        """PUT the encrypted update to the client's presigned URL (idempotent: a resumed unit
        uploads the same bytes again)."""
        from fedswarm.storage.download import upload_file

        enc_path = self._unit_dir(rec.key) / "update.enc"
        if rec.update_sha256 is None or rec.update_key is None:
            raise UnitError("no update hash or key stored for this unit")
        if not enc_path.exists():
            raise UnitError("the encrypted update was lost before upload")
        remaining = wu.deadline - time.time()
        if remaining <= 0:
            raise UnitError("unit deadline passed before the upload")
        t_up = time.monotonic()
        await trio.to_thread.run_sync(
            lambda: upload_file(wu.put_url, enc_path, content_type="application/octet-stream",
                                deadline_s=max(1.0, remaining * 0.7),
                                allow_private=self.options.allow_private_urls))
        self.uplink.record(enc_path.stat().st_size, time.monotonic() - t_up)
        self.db.set_unit(rec.key, UnitState.UPLOADED)
        self._audit(wu.audit_topic, wu.job_id, "uploaded", wu.round, wu.unit, bytes=rec.update_size,
                    sha256=rec.update_sha256)
        self.stats.bump("units_uploaded")

    async def _deliver(self, wu: WorkUnit, rec: UnitRecord, seconds: float) -> None:
        """Send UnitDone until the operator answers with a receipt or a refusal, retrying until
        the deadline (the client may be restarting, on another address)."""
        job = self.db.job(wu.job_id)
        assert job is not None and rec.update_sha256 is not None and rec.update_size is not None
        done = UnitDone(job_id=wu.job_id, round=wu.round, unit=wu.unit, update_sha256=rec.update_sha256,
                        update_size=rec.update_size, num_samples=rec.num_samples or 0,
                        train_loss=rec.train_loss, seconds=max(0.0, rec.seconds or seconds))
        where = f"unit {wu.round}/{wu.unit}"
        delay = 0.5
        while True:
            remaining = wu.deadline - time.time()
            if remaining <= 0:
                await self._no_receipt(job, wu, rec, f"no receipt for {where} before its deadline")
                return
            try:
                reply, _ = await self.node.request(job.client_peer_id, done,
                                                   timeout=max(1.0, min(10.0, remaining)),
                                                   expect=(UnitReceipt, UnitRefused))
            except RpcError as exc:
                if exc.code in PERMANENT_RPC_CODES or exc.code == "bad_reply":
                    await self._no_receipt(job, wu, rec, f"the client answered {where} without a receipt: {exc}")
                    return
                if time.time() + delay >= wu.deadline:
                    await self._no_receipt(job, wu, rec, f"no receipt for {where} before its deadline: {exc}")
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if isinstance(reply, UnitRefused):
                await self._refused(job, wu, rec, reply)
            else:
                await self._receipted(job, wu, rec, reply)
            return

    async def _refused(self, job: JobRecord, wu: WorkUnit, rec: UnitRecord, msg: UnitRefused) -> None:
        """A signed refusal: the unit is over (the client keeps nothing usable: it never gets
        the key); we keep working for the job. An unsigned one counts as no receipt."""
        assert job.operator is not None and rec.update_sha256 is not None
        try:
            check_refusal(msg, wu, self.identity.address, rec.update_sha256, job.operator)
        except SignatureError as exc:
            await self._no_receipt(job, wu, rec, f"invalid refusal of unit {wu.round}/{wu.unit}: {exc}")
            return
        reason = f"refused by the operator: {msg.reason}"
        self.db.set_unit(rec.key, UnitState.REFUSED, reason=reason, update_key=None)
        self._audit(wu.audit_topic, wu.job_id, "refused", wu.round, wu.unit, reason=msg.reason)
        self.stats.bump("units_refused")
        log.info("unit %s/%s of job %s %s", wu.round, wu.unit, wu.job_id, reason)
        self._cleanup(rec.key)

    async def _receipted(self, job: JobRecord, wu: WorkUnit, rec: UnitRecord, msg: UnitReceipt) -> None:
        """Check the receipt against what we delivered and the operator the chain names, and
        store it before anything else (it is what pays the unit)."""
        assert job.operator is not None and job.contract is not None and rec.update_sha256 is not None
        try:
            receipt = check_receipt(msg, wu, self.identity.address, rec.update_sha256,
                                    domain=EscrowDomain(self.chain_id, job.contract), operator=job.operator,
                                    now=time.time(), skew_s=self.options.receipt_skew_s)
        except ReceiptError as exc:
            await self._no_receipt(job, wu, rec, f"invalid receipt for unit {wu.round}/{wu.unit}: {exc}")
            return
        self.db.add_receipt(wu.job_id, wu.round, wu.unit, contract=job.contract, chain_id=self.chain_id,
                            operator=job.operator, receipt=receipt.to_json(), signature=msg.signature)
        self.db.set_unit(rec.key, UnitState.RECEIPTED)
        self._audit(wu.audit_topic, wu.job_id, "receipted", wu.round, wu.unit, issued_at=msg.issued_at)
        self.stats.bump("units_receipted")

    async def _no_receipt(self, job: JobRecord, wu: WorkUnit, rec: UnitRecord, reason: str) -> None:
        """No valid receipt: this unit is lost and we do no more work for the job."""
        self.db.set_unit(rec.key, UnitState.UNRECEIPTED, reason=reason[:500], update_key=None)
        self._cleanup(rec.key)
        self.stats.bump("units_unreceipted")
        self._stop_job(job, reason)

    def _stop_job(self, job: JobRecord, reason: str) -> None:
        """Refuse every further unit of ``job`` (once), and say why on its audit topic."""
        if self.db.stop_job(job.job_id, reason[:500]):
            log.warning("stopped working for job %s: %s", job.job_id, reason)
            self._audit(job.audit_topic, job.job_id, "stopped", reason=reason[:300])
            self.stats.bump("jobs_stopped")

    async def _send_key(self, wu: WorkUnit, rec: UnitRecord) -> None:
        """Hand the update's key (sealed to the client's box key) over, now that we hold a
        receipt. Retried until a little after the deadline; the receipt pays either way."""
        job = self.db.job(wu.job_id)
        assert job is not None and rec.update_key is not None and rec.update_sha256 is not None
        sealed_key = sealed.seal_key_b64(bytes.fromhex(rec.update_key), wu.client_box_public)
        msg = UpdateKey(job_id=wu.job_id, round=wu.round, unit=wu.unit, update_sha256=rec.update_sha256,
                        sealed_key=sealed_key)
        give_up = max(wu.deadline, time.time()) + KEY_GRACE_S
        delay = 0.5
        while True:
            try:
                await self.node.request(job.client_peer_id, msg, timeout=10.0, expect=(Ack,))
            except RpcError as exc:
                if exc.code in PERMANENT_RPC_CODES or time.time() + delay >= give_up:
                    log.warning("client did not take the key of unit %s/%s of job %s: %s", wu.round,
                                wu.unit, wu.job_id, exc)
                    self._audit(wu.audit_topic, wu.job_id, "error", wu.round, wu.unit,
                                reason=f"client did not take the update's key: {exc}"[:300])
                    self.db.set_unit(rec.key, UnitState.RECEIPTED, reason=f"key not taken: {exc}"[:500])
                    self._settled_meanwhile(rec.key)
                    self._cleanup(rec.key)
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.db.set_unit(rec.key, UnitState.DELIVERED, update_key=None)
            self._settled_meanwhile(rec.key)
            self._audit(wu.audit_topic, wu.job_id, "delivered", wu.round, wu.unit)
            self.stats.bump("units_delivered")
            self._cleanup(rec.key)
            return

    def _settled_meanwhile(self, key: Key) -> None:
        """The claim loop follows a receipt while its key is handed over but leaves the unit's
        state to the handover: show a settlement it saw meanwhile now."""
        receipt = self.db.receipt(*key)
        state = RECEIPT_UNIT_STATES.get(receipt.status) if receipt is not None else None
        if state is not None:
            self.db.set_unit(key, state)
