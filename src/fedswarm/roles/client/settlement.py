"""Phase 5, settlement: pay a checked round on chain, and record the job's result on chain.

The chain calls are the two methods :class:`~fedswarm.roles.client.role.ClientRole` exposes as
its settlement seam (``settle_round`` and ``complete_job``, which call :func:`settle_on_chain`
and :func:`complete_on_chain` here); everything around them (recording the round as settled,
telling trainers the round's result, the audit trail) is :func:`record_settled`. A test double
that overrides the seam to do nothing is a client that never pays: trainers then claim their
pay after the settle window.
"""

from __future__ import annotations

import time

from fedswarm.learning.checks import Verdict, reason_hash
from fedswarm.ledger.contract import JobStatus, UnitStatus
from fedswarm.ledger.evm import job_id_from
from fedswarm.protocol.job import RoundResult
from fedswarm.protocol.topics import job_topic
from fedswarm.roles.client.records import JobRecord
from fedswarm.roles.client.services import ClientServices, in_thread


async def settle_on_chain(svc: ClientServices, job: JobRecord, r: int) -> str | None:
    """Pay round ``r``'s accepted units and reject the rest with the reason's hash, skipping
    units the chain does not hold as committed-and-unsettled (so a restarted client never
    settles twice). Returns the transaction hash, or None when there was nothing to settle."""
    jid = job_id_from(job.job_id)
    units, accepted, reasons = [], [], []
    for u in svc.db.units(job.job_id, r):
        info = await in_thread(svc.ledger.unit, jid, r, u.unit)
        if info.status != UnitStatus.COMMITTED:
            continue
        ok = u.verdict == "accepted"
        units.append(u.unit)
        accepted.append(ok)
        reasons.append(bytes(32) if ok else reason_hash(Verdict(False, u.reason or "rejected", "client")))
    if not units:
        return None
    receipt = await in_thread(svc.ledger.settle, jid, r, units, accepted, reasons)
    return receipt.tx_hash


async def complete_on_chain(svc: ClientServices, job: JobRecord, pointer: bytes) -> None:
    """Record the result ``pointer`` on chain if the job is still open (this also refunds the
    escrow not owed to trainers); a job already completed is left alone."""
    jid = job_id_from(job.job_id)
    info = await in_thread(svc.ledger.job, jid)
    if info.status == JobStatus.OPEN:
        await in_thread(svc.ledger.complete_job, jid, pointer)


async def record_settled(svc: ClientServices, job: JobRecord, r: int, tx_hash: str | None) -> None:
    """Mark round ``r`` settled (with its transaction, if any), tell the job's trainers the
    round's result and add it to the audit trail."""
    rnd = svc.db.get_round(job.job_id, r)
    assert rnd is not None, f"round {r} of {job.job_id} settled before it was recorded"
    if tx_hash is not None:
        rnd.settle_tx = tx_hash
    rnd.state, rnd.settled = "settled", time.time()
    svc.db.put_round(rnd)
    await svc.node.publish(job_topic(job.job_id), RoundResult(
        job_id=job.job_id, round=r, val_loss=rnd.metrics.get("loss"),
        val_accuracy=rnd.metrics.get("accuracy"), accepted=rnd.accepted, rejected=rnd.rejected))
    await svc.audit_entry(job, {"state": "round_settled", "round": r, "accepted": rnd.accepted,
                                "rejected": rnd.rejected, "metrics": rnd.metrics})
