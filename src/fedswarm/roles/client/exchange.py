"""The fair exchange of a delivered update: the trainer's object for the operator's receipt, then
the update's key.

A trainer uploads its update encrypted under a fresh random key (the client cannot open it) and
says so with ``UnitDone``. The client checks the object (it exists, its sha256 is the reported
one, it is no larger than the unit allowed), keeps a copy of the ciphertext, signs an EIP-712
receipt as the job's operator, records it in the unit's record and only then answers with
``UnitReceipt``; a repeated delivery gets the same stored receipt. A unit that was reassigned,
is unknown, belongs to a closed round or whose object does not match gets a signed
``UnitRefused`` instead. The trainer then sends ``UpdateKey`` (the key sealed to the client's
box key); the client decrypts its copy (one path: :func:`fedswarm.storage.sealed.open_file`)
and the unit is delivered. No chain transaction happens here: with the receipt a trainer is
paid even by a client that never settles.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

import trio

from fedswarm.ledger.receipts import Receipt
from fedswarm.market.operator import sign_refusal
from fedswarm.p2p.node import Rejected
from fedswarm.protocol.job import Ack, UnitDone, UnitReceipt, UnitRefused, UpdateKey
from fedswarm.roles.client.records import TERMINAL, JobRecord, UnitRecord
from fedswarm.roles.client.services import ClientServices, in_thread, log
from fedswarm.roles.client.training import max_update_bytes, update_files
from fedswarm.storage.base import IntegrityError, ObjectNotFound, ObjectTooLarge
from fedswarm.storage.sealed import JobObjects, SealedError, open_file, open_key_b64

# States in which a delivery can still be receipted (the unit is out and its round is open).
OUTSTANDING = ("assigned", "accepted")


class StoreNotReadable(Exception):
    """The delivered object could not be read because of the store or our side of the link."""


class RefuseDelivery(Exception):
    """A delivery the operator refuses; ``code`` is the slug the signed refusal carries."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Exchange:
    """The ``UnitDone`` and ``UpdateKey`` RPCs of a client; ``wake(job_id)`` tells the round's
    collector that a unit changed."""

    def __init__(self, svc: ClientServices, wake: Callable[[str], Awaitable[None]]) -> None:
        self.svc = svc
        self.wake = wake
        self._locks: dict[tuple[str, int, int], trio.Lock] = {}

    def _lock(self, job_id: str, r: int, unit: int) -> trio.Lock:
        return self._locks.setdefault((job_id, r, unit), trio.Lock())

    def _job(self, job_id: str) -> JobRecord:
        job = self.svc.db.get_job(job_id)
        if job is None or job.state in TERMINAL or job.job_key is None:
            raise Rejected(f"unknown or finished job {job_id}", code="not_found")
        return job

    def _trainer_address(self, job: JobRecord, peer: str) -> str:
        for bid in [*job.chosen, *job.standby]:
            if bid["peer_id"] == peer:
                return str(bid["address"])
        raise Rejected("you are not a trainer of this job", code="forbidden")

    async def on_unit_done(self, sender: str, msg: UnitDone, blob: bytes | None
                           ) -> tuple[UnitReceipt | UnitRefused, bytes | None]:
        """``UnitDone``: check the object, sign and record a receipt, answer with it."""
        job = self._job(msg.job_id)
        address = self._trainer_address(job, sender)
        async with self._lock(msg.job_id, msg.round, msg.unit):
            rec = self.svc.db.get_unit(msg.job_id, msg.round, msg.unit)
            try:
                if rec is None or rec.trainer_peer != sender:
                    raise RefuseDelivery("unknown-unit")
                if rec.receipt is not None:
                    if rec.receipt["update_hash"].removeprefix("0x") != msg.update_sha256:
                        raise RefuseDelivery("already-receipted")
                    return receipt_message(job, rec), None  # a repeated delivery: the same receipt
                if rec.state not in OUTSTANDING:
                    raise RefuseDelivery("reassigned" if rec.state in ("failed", "lost") else "unknown-unit")
                rnd = self.svc.db.get_round(job.job_id, msg.round)
                if rnd is None or rnd.state != "open" or time.time() > rnd.deadline:
                    raise RefuseDelivery("round-closed")
                await in_thread(self._fetch_ciphertext, job, rec, msg)
            except RefuseDelivery as exc:
                return await self._refuse(job, msg, address, exc.code, rec), None
            except StoreNotReadable as exc:
                # Not the trainer's fault (our link or the store is down): no signed refusal,
                # which would leave its work unpaid; a retryable answer, so it delivers again.
                self.svc.event(job, f"round {msg.round}: the update of unit {msg.unit} could not be read "
                                    f"from the store ({exc}); the trainer delivers again")
                raise Rejected(f"the client could not read the update from the store ({exc}); retry",
                               code="busy") from None
            # The receipt is recorded before it leaves: a restarted client sends the same one.
            receipt, signature = await in_thread(
                self.svc.escrow.issue_receipt, bytes.fromhex(job.job_key or ""), msg.round, msg.unit,
                rec.trainer_address, bytes.fromhex(msg.update_sha256))
            rec.receipt = {**receipt.to_json(), "signature": "0x" + signature.hex()}
            rec.state, rec.update_sha256 = "receipted", msg.update_sha256
            rec.num_samples, rec.train_loss, rec.seconds = msg.num_samples, msg.train_loss, msg.seconds
            self.svc.db.put_unit(rec)
        await self.svc.audit_entry(job, {"state": "receipted", "round": msg.round, "unit": msg.unit,
                                         "trainer": sender, "update_sha256": msg.update_sha256})
        return receipt_message(job, rec), None

    def _fetch_ciphertext(self, job: JobRecord, rec: UnitRecord, msg: UnitDone) -> None:
        """Copy the delivered object from the store (bounded) and check its hash and size."""
        cap = max_update_bytes(job.num_params)
        if msg.update_size > cap:
            raise RefuseDelivery("bad-object")
        enc_path, _ = update_files(self.svc.job_dir(job.job_id), rec.round, rec.unit)
        enc_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = enc_path.with_suffix(".part")
        try:
            with tmp.open("wb") as fh:
                self.svc.store.get(rec.update_key, fh, max_bytes=cap)
            with tmp.open("rb") as fh:  # hashed from disk in blocks: no second copy in memory
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            size = tmp.stat().st_size
        except (ObjectTooLarge, ObjectNotFound, IntegrityError) as exc:  # what the trainer delivered
            tmp.unlink(missing_ok=True)
            log.info("%s: unit %s/%s object refused: %s", job.job_id, rec.round, rec.unit, exc)
            raise RefuseDelivery("bad-object") from None
        except Exception as exc:  # the store unreachable or failing, our credentials: our side
            tmp.unlink(missing_ok=True)
            raise StoreNotReadable(str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__) from None
        if digest != msg.update_sha256 or size != msg.update_size:
            tmp.unlink(missing_ok=True)
            raise RefuseDelivery("bad-object")
        tmp.replace(enc_path)

    async def _refuse(self, job: JobRecord, msg: UnitDone, address: str, code: str,
                      rec: UnitRecord | None) -> UnitRefused:
        signature = sign_refusal(self.svc.identity.wallet, job.job_key or "", msg.round, msg.unit, address,
                                 msg.update_sha256, code)
        if code == "bad-object" and rec is not None and rec.state in OUTSTANDING:
            # The slot goes to someone else (the trainer may not deliver a matching object).
            rec.state, rec.reason = "failed", "delivered object does not match its report"
            self.svc.db.put_unit(rec)
            await self.wake(job.job_id)
        self.svc.event(job, f"round {msg.round}: delivery of unit {msg.unit} refused ({code})")
        return UnitRefused(job_id=job.job_id, round=msg.round, unit=msg.unit, trainer=address,
                           update_sha256=msg.update_sha256, reason=code, signature=signature)

    async def on_update_key(self, sender: str, msg: UpdateKey, blob: bytes | None) -> tuple[Ack, bytes | None]:
        """``UpdateKey``: open the receipted update with the trainer's key; the unit is delivered."""
        job = self._job(msg.job_id)
        async with self._lock(msg.job_id, msg.round, msg.unit):
            rec = self.svc.db.get_unit(msg.job_id, msg.round, msg.unit)
            if rec is None or rec.trainer_peer != sender or rec.receipt is None:
                raise Rejected("no receipt was issued for this unit", code="forbidden")
            if rec.update_sha256 != msg.update_sha256:
                raise Rejected("this key is for another update than the receipted one", code="forbidden")
            if rec.state != "receipted":
                return Ack(), None  # already opened (a repeated key)
            enc_path, plain_path = update_files(self.svc.job_dir(job.job_id), rec.round, rec.unit)
            obj = JobObjects(job.job_id).update(rec.round, rec.unit)
            try:
                key = open_key_b64(msg.sealed_key, self.svc.identity.box_key)
                await in_thread(lambda: open_file(enc_path, plain_path, obj, key=key))
            except SealedError as exc:
                raise Rejected(f"the key does not open the update: {exc}"[:200]) from None
            rec.state = "delivered"
            self.svc.db.put_unit(rec)
        await self.wake(job.job_id)
        return Ack(), None


def receipt_message(job: JobRecord, rec: UnitRecord) -> UnitReceipt:
    """The ``UnitReceipt`` for a unit's stored receipt."""
    assert rec.receipt is not None
    receipt = Receipt.from_json(rec.receipt)
    return UnitReceipt(job_id=job.job_id, round=receipt.round, unit=receipt.unit, job_key=receipt.job_key.hex(),
                       trainer=receipt.trainer, update_sha256=receipt.update_hash.hex(),
                       issued_at=receipt.issued_at, signature=rec.receipt["signature"])
