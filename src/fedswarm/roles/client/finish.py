"""Phase 6, the end of a job: finish (result sealed to the user, recorded on chain, refund),
cancel (undo what the escrow allows), or fail (record why and tell the trainers)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from fedswarm.ledger.contract import JobStatus
from fedswarm.ledger.evm import job_id_from
from fedswarm.protocol.job import JobFinished
from fedswarm.protocol.topics import MARKET_TOPIC
from fedswarm.roles.client.records import JobRecord
from fedswarm.roles.client.review import global_path
from fedswarm.roles.client.services import ClientServices, in_thread, log
from fedswarm.storage.sealed import JobObjects, StoredRef, open_stored, seal

# The result is the final weights (float32) sealed once: a generous bound for reading it back.
RESULT_SLACK_BYTES = 4 << 20


class Finish:
    """The terminal steps of a job; ``complete_job(job, pointer)`` records the result on chain."""

    def __init__(self, svc: ClientServices, complete_job: Callable[[JobRecord, bytes], Awaitable[None]]) -> None:
        self.svc = svc
        self.complete_job = complete_job

    async def finish(self, job: JobRecord) -> None:
        """Encrypt the final weights to the user's key, upload, record on chain, refund."""
        svc = self.svc
        final = global_path(svc.job_dir(job.job_id), job.terms.rounds)
        user_box = job.terms.user_box_public or svc.identity.box_public_hex
        obj = JobObjects(job.job_id).result()

        def upload() -> StoredRef:
            return seal(svc.store, obj, final.read_bytes(), box_public=user_box)

        ref = await in_thread(upload)
        pointer = json.dumps(ref.to_dict(), separators=(",", ":")).encode()
        await self.complete_job(job, pointer)
        await self._withdraw()
        job.result_key, job.result_sha256 = ref.key, ref.sha256
        rounds = svc.db.rounds(job.job_id)
        job.final_metrics = rounds[-1].metrics if rounds else {}
        job.state = "done"
        svc.event(job, f"done: final accuracy {job.final_metrics.get('accuracy', float('nan')):.4f}")
        svc.db.put_job(job)
        await svc.publish_finished(job.job_id, "done")
        await svc.node.publish(MARKET_TOPIC, JobFinished(job_id=job.job_id, state="done"))
        await svc.audit_entry(job, {"state": "done", "metrics": job.final_metrics})

    async def cancel(self, job: JobRecord) -> None:
        """Stop a job: before escrow nothing to undo; after, cancel (no commits) or complete
        early, which refunds everything not owed to trainers."""
        svc = self.svc
        jid = job_id_from(job.job_id)
        info = await in_thread(svc.ledger.job, jid)
        if info.status == JobStatus.OPEN:
            if info.commits == 0:
                await in_thread(svc.ledger.cancel_job, jid)
            else:
                await in_thread(svc.ledger.complete_job, jid, b"cancelled")
            await self._withdraw()
        job = svc.job(job.job_id)
        job.state = "cancelled"
        svc.event(job, "cancelled by the user")
        svc.db.put_job(job)
        await svc.publish_finished(job.job_id, "cancelled")

    async def fail(self, job_id: str, reason: str) -> None:
        """Record the job as failed with ``reason`` and tell its trainers (best effort)."""
        svc = self.svc
        job = svc.job(job_id)
        job.state, job.error = "failed", reason
        svc.event(job, f"failed: {reason}")
        svc.db.put_job(job)
        try:
            await svc.publish_finished(job_id, "failed")
            await svc.audit_entry(job, {"state": "failed", "reason": reason})
        except Exception:
            log.debug("could not announce the failure of %s", job_id, exc_info=True)

    async def _withdraw(self) -> None:
        """Pull refunds the contract holds for us."""
        svc = self.svc
        if await in_thread(svc.ledger.pending, svc.identity.address) > 0:
            await in_thread(svc.ledger.withdraw)

    def fetch_result(self, job: JobRecord) -> bytes:
        """The job's result, downloaded, hash-checked and decrypted with this node's box key
        (blocking). Raises :class:`~fedswarm.storage.sealed.SealedError` if the stored object
        is not the recorded one, or was sealed to another key (``user_box_public``)."""
        if not job.result_key or not job.result_sha256:
            raise ValueError(f"job {job.job_id} has no result yet (state {job.state})")
        return open_stored(self.svc.store, JobObjects(job.job_id).result(), sha256=job.result_sha256,
                           max_bytes=job.num_params * 4 * 2 + RESULT_SLACK_BYTES,
                           box_private=self.svc.identity.box_key)
