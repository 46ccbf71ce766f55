"""Phase 6, the end of a job: finish (result sealed to the user, completion on chain), cancel
or fail. Every path ends the job on chain through the settler (:mod:`.settlement`): ``complete``
after the last verdict batch, or ``cancel`` (free escrow back at once, reservations at release,
so trainers holding receipts are still paid). A job funded on the v1 contract is closed there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fedswarm import wallet_envelope
from fedswarm.ledger.contract import JobStatus
from fedswarm.ledger.evm import job_id_from
from fedswarm.protocol.job import JobFinished
from fedswarm.protocol.topics import MARKET_TOPIC
from fedswarm.roles.client.payment import is_wallet_job
from fedswarm.roles.client.records import JobRecord
from fedswarm.roles.client.review import global_path
from fedswarm.roles.client.services import ClientServices, in_thread, log
from fedswarm.roles.client.settlement import Settler, request_close, wait_closed
from fedswarm.storage.sealed import JobObjects, StoredRef, open_stored, seal

# The result is the final weights (float32) sealed once: a generous bound for reading it back.
RESULT_SLACK_BYTES = 4 << 20
# States after which a job holds money on chain (before them nothing was funded).
FUNDED_STATES = ("escrowed", "running", "finishing")


class Finish:
    """The terminal steps of a job; the settler closes it on chain."""

    def __init__(self, svc: ClientServices, settler: Settler) -> None:
        self.svc = svc
        self.settler = settler

    async def finish(self, job: JobRecord) -> None:
        """Encrypt the final weights to the user's key, upload them, and complete the job on
        chain once every verdict is settled."""
        svc = self.svc
        esc = svc.db.get_escrow(job.job_id)
        if esc.result_pointer is None or job.result_key is None:
            final = global_path(svc.job_dir(job.job_id), job.terms.rounds)
            user_box = job.terms.user_box_public or svc.identity.box_public_hex
            obj = JobObjects(job.job_id).result()

            def upload() -> StoredRef:
                if is_wallet_job(job):
                    return self._seal_for_wallet(job, final, obj.key)
                return seal(svc.store, obj, final.read_bytes(), box_public=user_box)

            ref = await in_thread(upload)
            job.result_key, job.result_sha256 = ref.key, ref.sha256
            svc.db.put_job(job)
            pointer = ref.to_dict()
            if is_wallet_job(job):
                pointer["envelope"] = wallet_envelope.ENVELOPE
            request_close(svc, job, "complete", json.dumps(pointer, separators=(",", ":")))
        await wait_closed(svc, self.settler, job.job_id)
        if is_wallet_job(job):
            self._forget_plaintext(job)
        job = svc.job(job.job_id)
        rounds = svc.db.rounds(job.job_id)
        job.final_metrics = rounds[-1].metrics if rounds else {}
        job.state = "done"
        svc.event(job, f"done: final accuracy {job.final_metrics.get('accuracy', float('nan')):.4f}")
        svc.db.put_job(job)
        await svc.publish_finished(job.job_id, "done")
        await svc.node.publish(MARKET_TOPIC, JobFinished(job_id=job.job_id, state="done"))
        await svc.audit_entry(job, {"state": "done", "metrics": job.final_metrics})

    def _seal_for_wallet(self, job: JobRecord, final: Path, key: str) -> StoredRef:
        """Seal the final weights to the wallet's result key (fedswarm-wallet-v1), streaming
        from the file to a sealed file beside it, and upload that (blocking)."""
        assert job.terms.user_box_public
        sealed = final.with_name(final.name + ".fsw1")
        size = final.stat().st_size
        plain = hashlib.sha256()
        with final.open("rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                plain.update(block)
        with final.open("rb") as src, sealed.open("wb") as dst:
            wallet_envelope.seal_stream(src, dst, size, bytes.fromhex(job.terms.user_box_public), job.job_id)
        digest = hashlib.sha256()
        with sealed.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        self.svc.store.put(key, sealed)
        length = sealed.stat().st_size
        sealed.unlink()
        job.result_plain_sha256, job.result_size = plain.hexdigest(), length
        return StoredRef(key, digest.hexdigest(), length)

    def _forget_plaintext(self, job: JobRecord) -> None:
        """A wallet job's result is the wallet's alone: once it is sealed and on chain the
        node deletes its plaintext final weights and the last round's global model."""
        folder = self.svc.job_dir(job.job_id)
        for r in (job.terms.rounds, job.terms.rounds - 1):
            global_path(folder, r).unlink(missing_ok=True)

    async def cancel(self, job: JobRecord) -> None:
        """Stop a job at the user's request: the settler puts the verdicts already made on
        chain, then cancels (refunding everything not owed to trainers)."""
        svc = self.svc
        await self._close(job, funded_v1=job.state in FUNDED_STATES)
        job = svc.job(job.job_id)
        job.state = "cancelled"
        svc.event(job, "cancelled by the user")
        svc.db.put_job(job)
        await svc.publish_finished(job.job_id, "cancelled")

    async def fail(self, job_id: str, reason: str) -> None:
        """Record the job as failed with ``reason``, close it on chain (through the settler)
        and tell its trainers (best effort)."""
        svc = self.svc
        job = svc.job(job_id)
        funded_v1 = job.state in FUNDED_STATES  # read before the state becomes "failed"
        job.state, job.error = "failed", reason
        svc.event(job, f"failed: {reason}")
        svc.db.put_job(job)
        try:
            await self._close(job, funded_v1=funded_v1)
        except Exception as exc:  # the v1 close is retried on no later path: say so
            log.warning("could not close the failed job %s on chain: %s", job_id, exc)
        try:
            await svc.publish_finished(job_id, "failed")
            await svc.audit_entry(job, {"state": "failed", "reason": reason})
        except Exception:
            log.debug("could not announce the failure of %s", job_id, exc_info=True)

    async def _close(self, job: JobRecord, funded_v1: bool) -> None:
        """Ask for the job's close on chain: v2 through the settler (it returns at once), a
        job funded on v1 (``funded_v1``: it got past escrow without a v2 key) here and now."""
        if job.job_key is not None:
            request_close(self.svc, job, "cancel")
            self.settler.kick()
        elif funded_v1 or job.escrow_tx:
            await self.close_v1(job)

    async def close_v1(self, job: JobRecord) -> None:
        """Close a job funded on the v1 contract (before v2): cancel it if nobody committed,
        else complete it (refunding what is not owed), then withdraw the refund."""
        svc = self.svc
        jid = job_id_from(job.job_id)
        info = await in_thread(svc.ledger.job, jid)
        if info.status == JobStatus.OPEN:
            if info.commits == 0:
                await in_thread(svc.ledger.cancel_job, jid)
            else:
                await in_thread(svc.ledger.complete_job, jid, b"failed")
        if await in_thread(svc.ledger.pending, svc.identity.address) > 0:
            await in_thread(svc.ledger.withdraw)

    def fetch_result(self, job: JobRecord) -> bytes:
        """The job's result, downloaded, hash-checked and decrypted with this node's box key
        (blocking). Raises :class:`~fedswarm.storage.sealed.SealedError` if the stored object
        is not the recorded one, or was sealed to another key (``user_box_public``)."""
        if not job.result_key or not job.result_sha256:
            raise ValueError(f"job {job.job_id} has no result yet (state {job.state})")
        if is_wallet_job(job):
            raise ValueError(f"the result of {job.job_id} is encrypted to its wallet; this node cannot open it")
        return open_stored(self.svc.store, JobObjects(job.job_id).result(), sha256=job.result_sha256,
                           max_bytes=job.num_params * 4 * 2 + RESULT_SLACK_BYTES,
                           box_private=self.svc.identity.box_key)
