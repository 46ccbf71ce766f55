"""What every phase of a client job shares: the node, its backends (object store, ledger, audit
log), the job database, the training worker, and a few small helpers (the job's folder, its
human-readable timeline, audit entries), plus the client's errors.

All blocking work (boto3/httpx, web3, the training worker, file I/O) goes through
:func:`in_thread`: the trio event loop only coordinates.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from fedswarm.config import Settings
from fedswarm.identity import Identity
from fedswarm.learning.worker import TrainingWorker
from fedswarm.ledger.audit import AuditLog
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.evm import Ledger, TxReceipt
from fedswarm.p2p.node import Node
from fedswarm.protocol.job import JobFinished
from fedswarm.protocol.topics import job_topic
from fedswarm.roles.client.records import ChainTx, ClientDB, EscrowRecord, JobRecord
from fedswarm.storage.base import ObjectStore

log = logging.getLogger("fedswarm.client")
T = TypeVar("T")


class SubmitError(ValueError):
    """A submission was refused before anything was spent; the message says why (one line)."""


class JobFailed(Exception):
    """The job cannot go on; the message is recorded as the job's error."""


class JobNotFound(LookupError):
    """No job with this id on this client."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` off the event loop (boto3, web3, torch, file I/O)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=False)


def new_job_id() -> str:
    """A fresh, unguessable job id (``job-`` + 12 hex digits)."""
    return "job-" + secrets.token_hex(6)


class ClientServices:
    """The client node's shared parts, handed to each phase (submission, bidding, rounds...)."""

    def __init__(self, node: Node, settings: Settings, home: Path, identity: Identity,
                 store: ObjectStore, ledger: Ledger, audit: AuditLog, escrow: EscrowV2) -> None:
        self.node = node
        self.settings = settings
        self.home = home
        self.identity = identity
        self.store = store
        self.ledger = ledger  # v1: only to close jobs funded before v2
        self.escrow = escrow  # v2: every new job
        self.audit = audit
        self.db = ClientDB(home / "client.sqlite")
        self._worker: TrainingWorker | None = None
        # One training worker process: evaluations and re-executions take turns.
        self._worker_lock = trio.Lock()

    def job_dir(self, job_id: str) -> Path:
        """The job's local folder (chunks, global weights per round, strategy state)."""
        return self.home / "jobs" / job_id

    def job(self, job_id: str) -> JobRecord:
        """The job's current record; raises :class:`JobNotFound`."""
        job = self.db.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def event(self, job: JobRecord, text: str) -> None:
        """Add a line to the job's timeline (the caller saves the record)."""
        job.events.append({"ts": time.time(), "msg": text})
        del job.events[:-200]
        log.info("%s: %s", job.job_id, text)

    def record_tx(self, job_id: str, kind: str, receipt: TxReceipt, note: str = "") -> EscrowRecord:
        """Add a chain transaction to the job's escrow record (saved) and return the record."""
        esc = self.db.get_escrow(job_id)
        esc.txs.append(ChainTx(kind=kind, tx_hash=receipt.tx_hash, gas_used=receipt.gas_used,
                               fee=receipt.fee, note=note))
        self.db.put_escrow(job_id, esc)
        return esc

    async def audit_entry(self, job: JobRecord, entry: dict[str, Any]) -> None:
        """Append ``entry`` to the job's audit topic; a failure is logged, never raised."""
        if not job.audit_topic:
            return
        body = {"v": 1, "peer": self.node.peer_id, "role": "client", "job": job.job_id,
                "ts": round(time.time(), 3), **entry}
        try:
            await in_thread(self.audit.submit, job.audit_topic, body)
        except Exception as exc:  # the audit trail must never stop a job
            log.warning("audit submit failed for %s: %s", job.job_id, exc)

    async def publish_finished(self, job_id: str, state: Literal["done", "failed", "cancelled"]) -> None:
        """Tell the job's trainers the job ended (``done``, ``failed``, ``cancelled``)."""
        await self.node.publish(job_topic(job_id), JobFinished(job_id=job_id, state=state))

    async def worker(self) -> TrainingWorker:
        """The training worker (started on first use) for evaluation and re-execution."""
        if self._worker is None:
            self._worker = TrainingWorker(self.home / "work", device="cpu")
            await in_thread(self._worker.start)
        return self._worker

    async def locked(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread while holding the worker (one job at a time uses it)."""
        async with self._worker_lock:
            return await in_thread(fn)
