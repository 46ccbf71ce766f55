"""One unit of work, from the client's WorkUnit RPC to an update ready to hand over.

State machine (states in :class:`~.records.UnitState`, each persisted before the step that
depends on it, so a SIGKILLed trainer resumes cleanly)::

    WorkUnit RPC (checked: the operator's assignment; before a job's first unit, its terms on
    chain) ─► ACCEPTED ─► WORKING (download, decrypt, train) ─► UPLOADING (update encrypted
    under a fresh key; hash, size and key stored) ─► the fair exchange of :mod:`.delivery`
                  └─► FAILED (UnitFailed sent)       restart past the deadline ─► ABANDONED

A unit that fails the checks is declined (a one-line ``Rejected`` answer and a ``declined``
audit entry) before any work. :meth:`UnitFlow.make_update` is the one step that decides what
the trainer hands in (the trained weights); fault-injecting test doubles override it (see
``fedswarm.testing``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from nacl.public import PrivateKey

from fedswarm.crypto import sha256_bytes
from fedswarm.learning.worker import TrainTask
from fedswarm.p2p.node import Rejected, RpcError
from fedswarm.protocol.job import Ack, UnitAccepted, UnitFailed, WorkUnit
from fedswarm.protocol.messages import WireModel
from fedswarm.roles.trainer.checks import assignment_refusal, chain_refusal
from fedswarm.roles.trainer.core import (
    MIN_UNIT_SECONDS,
    PERMANENT_RPC_CODES,
    Key,
    UnitError,
    log,
    one_line,
)
from fedswarm.roles.trainer.delivery import KEY_GRACE_S, Delivery
from fedswarm.roles.trainer.records import (
    ACTIVE_STATES,
    DELIVERING_STATES,
    JobRecord,
    UnitRecord,
    UnitState,
)
from fedswarm.storage import sealed
from fedswarm.storage.sealed import JobObjects, SealedError


@dataclass
class UnitInputs:
    """What a unit downloaded and decrypted (plaintext files under the unit's directory)."""

    global_path: Path
    chunk_paths: list[Path]
    rows: int
    chunks_cached: int = 0  # chunks found in the cache, not downloaded


@dataclass
class TrainedUpdate:
    """The plaintext update a unit hands in (safetensors bytes) and what training reported."""

    data: bytes
    num_samples: int
    train_loss: float | None
    batches: int


class UnitFlow(Delivery):
    """Accept, resume and drive units of work: checks, download, train, encrypt, hand over."""

    async def _on_work_unit(self, peer: str, wu: WorkUnit, blob: bytes | None) -> tuple[WireModel, bytes | None]:
        job = self.db.job(wu.job_id)
        if job is None:
            raise Rejected(f"unknown job {wu.job_id}: this trainer did not bid on it", code="not_found")
        if peer != job.client_peer_id:
            self.stats.bump("units_forbidden")
            raise Rejected(f"only the client of job {wu.job_id} may assign its units", code="forbidden")
        if job.state == "finished":
            raise Rejected(f"job {wu.job_id} is finished")
        if job.stopped:
            self.stats.bump("units_declined")
            raise Rejected(f"this trainer stopped working for job {wu.job_id}: {job.stopped}"[:500])
        if wu.deadline <= time.time() + MIN_UNIT_SECONDS:
            raise Rejected(f"deadline of unit {wu.round}/{wu.unit} is too close or passed")
        # The update is about the size of the global weights it starts from.
        too_slow = self.uplink.refusal(wu.global_size, wu.deadline - time.time())
        if too_slow:
            self.stats.bump("units_refused_uplink")
            log.info("refused unit %s/%s of job %s: %s", wu.round, wu.unit, wu.job_id, too_slow)
            raise Rejected(too_slow[:500])
        reason = assignment_refusal(job, wu, self.identity.address, self.chain_id)
        if reason:
            self._decline(job, wu, reason)
        key = (wu.job_id, wu.round, wu.unit)
        if key in self._running:
            # The same order again from the same client: an RPC retry after a slow answer.
            # Answer the same way (idempotent) and keep the one unit we are working on.
            return UnitAccepted(job_id=wu.job_id, round=wu.round, unit=wu.unit), None
        reason = await self._chain_refusal(job, wu)
        if reason:
            self._decline(job, wu, reason)
        if not self.db.add_unit(*key, wu.model_dump(mode="json"), wu.deadline):
            raise Rejected(f"unit {wu.round}/{wu.unit} of job {wu.job_id} is already held", code="busy")
        self.stats.bump("units_accepted")
        self._running.add(key)
        self._want_worker()
        self.node.nursery.start_soon(self._run_unit, wu)
        return UnitAccepted(job_id=wu.job_id, round=wu.round, unit=wu.unit), None

    def _decline(self, job: JobRecord, wu: WorkUnit, reason: str) -> None:
        """Refuse ``wu`` before any work: recorded on the job, audited, answered in one line."""
        self.db.set_job(job.job_id, declined=reason[:500])
        self._audit(job.audit_topic, job.job_id, "declined", wu.round, wu.unit, reason=reason[:300])
        self.stats.bump("units_declined")
        log.info("declined unit %s/%s of job %s: %s", wu.round, wu.unit, job.job_id, reason)
        raise Rejected(reason[:500])

    async def _chain_refusal(self, job: JobRecord, wu: WorkUnit) -> str | None:
        """None if the chain lets us work on ``wu``: the job's terms are checked before its first
        unit (then cached), and every unit must fit in the units we are registered for (the
        receipts we hold plus the units in hand; the registration is re-read when they reach it)."""
        assert job.contract is not None and wu.job_key is not None
        held = len(self.db.receipts(job.job_id)) + len(
            self.db.units(states=(*ACTIVE_STATES, *DELIVERING_STATES), job_id=job.job_id))
        units = self._job_checked.get(job.job_id)
        if units is None or held >= units:
            escrow = self.escrow_at(job.contract)
            job_key = bytes.fromhex(wu.job_key)
            me = self.identity.address
            try:
                view, reg = await trio.to_thread.run_sync(
                    lambda: (escrow.job(job_key), escrow.trainer(job_key, me)))
            except Exception as exc:  # the chain is unreachable now: not the client's fault
                raise Rejected(f"cannot read job {job.job_id} on chain now: {one_line(exc)}",
                               code="unavailable") from None
            if units is None:
                reason = chain_refusal(job, view, reg, now=time.time(),
                                       max_settle_window_s=self.options.max_settle_window_s)
                if reason:
                    return reason
                self.db.set_job(job.job_id, job_key=wu.job_key)
            units = self._job_checked[job.job_id] = reg.units
        if held >= units:
            return f"budget used: {held} units held of the {units} we are registered for"
        return None

    def _resume(self) -> None:
        """After a restart: finish units whose deadline is ahead, abandon the others (a unit
        with a receipt still hands its key over)."""
        now = time.time()
        for rec in self.db.units(states=(*ACTIVE_STATES, *DELIVERING_STATES)):
            wu = WorkUnit.model_validate(rec.work)
            self._audit(wu.audit_topic, wu.job_id, "restarted", wu.round, wu.unit, was=rec.state.value)
            late = now >= rec.deadline + (KEY_GRACE_S if rec.state == UnitState.RECEIPTED else 0)
            if late:
                if rec.state != UnitState.RECEIPTED:  # a receipt still pays: the claim loop has it
                    self.db.set_unit(rec.key, UnitState.ABANDONED, reason="deadline passed while the trainer was down",
                                     update_key=None)
                    self._audit(wu.audit_topic, wu.job_id, "abandoned", wu.round, wu.unit)
                self._cleanup(rec.key)
                continue
            log.info("resuming unit %s/%s of job %s from %s", wu.round, wu.unit, wu.job_id, rec.state.value)
            self._running.add(rec.key)
            self._want_worker()
            self.node.nursery.start_soon(self._run_unit, wu)

    async def _run_unit(self, wu: WorkUnit) -> None:
        """Drive one unit from its persisted state to DELIVERED (or REFUSED, UNRECEIPTED,
        FAILED). Never raises."""
        key: Key = (wu.job_id, wu.round, wu.unit)
        t0 = time.monotonic()
        try:
            rec = self._rec(key)
            if rec.state in (UnitState.ACCEPTED, UnitState.WORKING):
                await self._produce_update(wu)
                rec = self._rec(key)
            if rec.state == UnitState.UPLOADING:
                await self._upload(wu, rec)
                rec = self._rec(key)
            if rec.state == UnitState.UPLOADED:
                await self._deliver(wu, rec, time.monotonic() - t0)
                rec = self._rec(key)
            if rec.state == UnitState.RECEIPTED:
                await self._send_key(wu, rec)
        except Exception as exc:
            reason = one_line(exc)
            log.warning("unit %s/%s of job %s failed: %s", wu.round, wu.unit, wu.job_id, reason)
            self.db.set_unit(key, UnitState.FAILED, reason=reason, update_key=None)
            self._audit(wu.audit_topic, wu.job_id, "error", wu.round, wu.unit, reason=reason)
            self.stats.bump("units_failed")
            self._cleanup(key)
            await self._send_failed(wu, reason)
        finally:
            self._running.discard(key)
            self._worker_used_at = time.monotonic()

    def _rec(self, key: Key) -> UnitRecord:
        rec = self.db.unit(*key)
        if rec is None:
            raise UnitError("unit vanished from the trainer database")
        return rec

    async def _produce_update(self, wu: WorkUnit) -> None:
        key: Key = (wu.job_id, wu.round, wu.unit)
        self.db.set_unit(key, UnitState.WORKING)
        udir = self._unit_dir(key)
        shutil.rmtree(udir, ignore_errors=True)
        udir.mkdir(parents=True)
        total = wu.deadline - time.time()
        if total < MIN_UNIT_SECONDS:
            raise UnitError("deadline too close to start the unit")
        # Reserve time for encrypt + upload + the exchange with the client after training.
        reserve = max(2.0, min(30.0, 0.15 * total), self.uplink.upload_seconds(wu.global_size))

        self._audit(wu.audit_topic, wu.job_id, "downloading", wu.round, wu.unit,
                    chunks=len(wu.chunks), bytes=wu.global_size + sum(c.size for c in wu.chunks))
        t_dl = time.monotonic()
        inputs = await trio.to_thread.run_sync(self._download_inputs, wu, udir, 0.5 * total)
        dl_s = time.monotonic() - t_dl
        self.stats.bump("chunks_cached", inputs.chunks_cached)
        self.stats.bump("chunks_downloaded", len(wu.chunks) - inputs.chunks_cached)

        self._audit(wu.audit_topic, wu.job_id, "training", wu.round, wu.unit, rows=inputs.rows,
                    epochs=wu.epochs, mode=wu.mode, download_s=round(dl_s, 3))
        t_train = time.monotonic()
        trained = await self.make_update(wu, inputs, wu.deadline - time.time() - reserve)
        train_s = time.monotonic() - t_train

        # Under a fresh random key, bound to the update's object name: the client can check the
        # object but not read it until it gave us a receipt and we sent it this key.
        fresh = os.urandom(32)
        obj = JobObjects(wu.job_id).update(wu.round, wu.unit)
        encrypted = await trio.to_thread.run_sync(lambda: sealed.seal_bytes(obj, trained.data, key=fresh))
        if len(encrypted) > wu.put_max_bytes:
            raise UnitError(f"encrypted update is {len(encrypted)} bytes, over the {wu.put_max_bytes}-byte upload cap")
        digest = sha256_bytes(encrypted)
        # Drop the plaintext training data as soon as it is no longer needed.
        for p in [inputs.global_path, *inputs.chunk_paths]:
            p.unlink(missing_ok=True)
        (udir / "update.enc").write_bytes(encrypted)
        self.db.set_unit(key, UnitState.UPLOADING, update_sha256=digest, update_size=len(encrypted),
                         update_key=fresh.hex(), num_samples=trained.num_samples, train_loss=trained.train_loss,
                         seconds=round(train_s, 3))
        log.info("unit %s/%s of job %s trained: %d samples, %d batches, loss %s in %.2f s",
                 wu.round, wu.unit, wu.job_id, trained.num_samples, trained.batches, trained.train_loss, train_s)

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The update this trainer hands in for ``wu``: the global weights trained on the
        unit's chunks, within ``deadline_s`` seconds. The seam that test doubles override."""
        return await self._train(wu, inputs, deadline_s)

    def _download_inputs(self, wu: WorkUnit, udir: Path, budget_s: float) -> UnitInputs:
        """Download and decrypt the global weights and every chunk within one total deadline
        (runs in a thread). Both open through :mod:`fedswarm.storage.sealed`: the global
        weights stream from their URL, the chunks from the job's chunk cache."""
        deadline = time.monotonic() + budget_s

        def left() -> float:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise UnitError(f"downloads did not finish within {budget_s:.0f} s")
            return rest

        objects = JobObjects(wu.job_id)
        gkey = _open_key(wu.global_sealed_key, "global weights", self.box_key)
        gpath = udir / "global.safetensors"
        sealed.open_url(wu.global_url, objects.global_weights(wu.round), sha256=wu.global_sha256,
                        size=wu.global_size, dest=gpath, key=gkey, deadline_s=left(),
                        allow_private=self.options.allow_private_urls)
        paths: list[Path] = []
        hits = 0
        for i, ref in enumerate(wu.chunks):
            ckey = _open_key(ref.sealed_key, f"chunk {ref.chunk_id}", self.box_key)
            # Our own file names: chunk ids may contain "..", which must not reach a path.
            dest = udir / f"chunk-{i:05d}.safetensors"
            # The same slot brings the same chunk every round: it is downloaded once per job.
            cached, hit = self.chunks.fetch(wu.job_id, str(ref.url), ref.sha256, ref.size, left())
            hits += hit
            try:
                sealed.open_file(cached, dest, objects.chunk(ref.chunk_id), key=ckey)
            except SealedError as exc:
                self.chunks.discard(wu.job_id, ref.sha256)  # a bad copy must not stay for later rounds
                raise UnitError(f"chunk {exc}") from None
            paths.append(dest)
        return UnitInputs(gpath, paths, sum(c.rows for c in wu.chunks), hits)

    async def _train(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        if deadline_s <= 1.0:
            raise UnitError("no time left to train before the unit deadline")
        task = TrainTask(model=wu.model, weights_path=str(inputs.global_path),
                         chunk_paths=[str(p) for p in inputs.chunk_paths], preprocessing=wu.preprocessing,
                         epochs=wu.epochs, batch_size=wu.batch_size, lr=wu.lr, seed=wu.seed,
                         fedprox_mu=wu.fedprox_mu, mode=wu.mode)
        last = [0.0]
        interval = self.options.progress_interval_s

        def on_progress(batches: int, loss: float) -> None:  # called in the worker's thread
            now = time.monotonic()
            if now - last[0] < interval:
                return
            last[0] = now
            trio.from_thread.run_sync(
                lambda: self._audit(wu.audit_topic, wu.job_id, "progress", wu.round, wu.unit,
                                    batches=batches, loss=None if loss != loss else round(loss, 6)))

        result = await trio.to_thread.run_sync(self.worker.train, task, deadline_s, on_progress)
        path = Path(result.update_path)
        try:
            update = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        return TrainedUpdate(update, result.num_samples, result.train_loss, result.batches)

    async def _send_failed(self, wu: WorkUnit, reason: str) -> None:
        job = self.db.job(wu.job_id)
        if job is None:
            return
        msg = UnitFailed(job_id=wu.job_id, round=wu.round, unit=wu.unit, reason=reason[:512])
        for attempt in range(3):
            try:
                await self.node.request(job.client_peer_id, msg, timeout=10.0, expect=(Ack,))
                return
            except RpcError as exc:
                if exc.code in PERMANENT_RPC_CODES or time.time() >= wu.deadline:
                    return
                log.debug("UnitFailed to client failed (%s), retrying", exc)
                await trio.sleep(1.0 * 2**attempt)


def _open_key(text: str, what: str, box_key: PrivateKey) -> bytes:
    """A chunk key the client sealed to our box key; a UnitError naming ``what`` if it does not open."""
    try:
        return sealed.open_key_b64(text, box_key)
    except SealedError as exc:
        raise UnitError(f"{exc} ({what})") from None
