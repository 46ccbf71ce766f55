"""The client role: the job coordinator, as an explicit, restartable state machine.

A job moves through::

    submitted -> prepared -> bidding -> selected -> escrowed -> running -> finishing -> done
                                                                       (or failed / cancelled)

Each state has one step, in its own module: :mod:`.submission` (validate, then prepare the
dataset and initial weights), :mod:`.bidding` (announce, select trainers, escrow their pay),
:mod:`.rounds` (assign, collect, reassign; :mod:`.review` checks and aggregates),
:mod:`.settlement` (pay each round) and :mod:`.finish` (result, refund; cancel; fail).
A step reads the durable :class:`~fedswarm.roles.client.records.JobRecord`, does its work and
records the next state; :meth:`ClientRole.drive` walks the steps. A client killed at any point
restarts with the same home, finds the job in SQLite and resumes at the last recorded state;
steps with chain effects first ask the chain what is already done, so a restart never pays twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fedswarm.config import Settings
from fedswarm.identity import Identity
from fedswarm.ledger.audit import AuditLog
from fedswarm.ledger.audit_factory import make_audit_log
from fedswarm.ledger.evm import Ledger
from fedswarm.ledger.factory import make_ledger
from fedswarm.p2p.node import Node, Rejected
from fedswarm.protocol.job import Bid, UnitDone, UnitFailed
from fedswarm.protocol.messages import Role
from fedswarm.roles.client.bidding import Bidding
from fedswarm.roles.client.finish import Finish
from fedswarm.roles.client.records import TERMINAL, JobRecord, JobState, JobTerms
from fedswarm.roles.client.review import Review
from fedswarm.roles.client.rounds import Rounds
from fedswarm.roles.client.services import ClientServices, JobFailed, in_thread, log
from fedswarm.roles.client.settlement import complete_on_chain, record_settled, settle_on_chain
from fedswarm.roles.client.submission import Submission
from fedswarm.roles.client.training import JobStrategies
from fedswarm.storage.base import ObjectStore
from fedswarm.storage.factory import make_object_store


class ClientRole:
    """The job coordinator of one client node (built by :func:`open_client`).

    The settlement seam, for test doubles: :meth:`settle_round` and :meth:`complete_job` are
    the only chain calls that pay trainers or close a job; a subclass that overrides them to
    do nothing is a client that never settles.
    """

    def __init__(self, node: Node, settings: Settings, home: Path, identity: Identity,
                 store: ObjectStore, ledger: Ledger, audit: AuditLog) -> None:
        self.svc = svc = ClientServices(node, settings, home, identity, store, ledger, audit)
        # What the node's API reads (the same objects the phases share through ``svc``).
        self.node, self.settings, self.home, self.identity = node, settings, home, identity
        self.store, self.ledger, self.audit, self.db = store, ledger, audit, svc.db
        self._cancel_requested: set[str] = set()
        self._running: set[str] = set()  # jobs a drive() task is working on
        self.submission = Submission(svc)
        self.bidding = Bidding(svc)
        self.review = Review(svc, JobStrategies(svc.job_dir))
        self.rounds = Rounds(svc, self.review, self._settle, self._cancel_requested.__contains__)
        self.finishing = Finish(svc, self.complete_job)
        node.on_rpc(Bid, self.bidding.on_bid)
        node.on_rpc(UnitDone, self.rounds.on_unit_event)
        node.on_rpc(UnitFailed, self.rounds.on_unit_event)

    # ---------------------------------------------------------------- the state machine

    async def drive(self, job_id: str) -> None:
        """Run job ``job_id`` from its recorded state to a terminal one."""
        steps: dict[JobState, Callable[[JobRecord], Awaitable[None]]] = {
            "submitted": self.submission.prepare,
            "prepared": self.bidding.collect_bids,
            "bidding": self.bidding.collect_bids,
            "selected": self.bidding.escrow,
            "escrowed": self.rounds.run_rounds,
            "running": self.rounds.run_rounds,
            "finishing": self.finishing.finish,
        }
        try:
            while True:
                job = self.svc.job(job_id)
                if job.state in TERMINAL:
                    return
                if job_id in self._cancel_requested:
                    await self.finishing.cancel(job)
                    self._cancel_requested.discard(job_id)
                    return
                try:
                    await steps[job.state](job)
                except JobFailed as exc:
                    await self.finishing.fail(job_id, str(exc))
                    return
                except Exception as exc:
                    log.exception("job %s failed in state %s", job_id, job.state)
                    await self.finishing.fail(job_id, f"internal error in {job.state}: {type(exc).__name__}: {exc}"[:300])
                    return
        finally:
            self._running.discard(job_id)

    # ---------------------------------------------------------------- the settlement seam

    async def settle_round(self, job: JobRecord, r: int) -> str | None:
        """Settle round ``r`` on chain (pay accepted units, reject the rest); returns the
        transaction hash, or None when nothing was sent."""
        return await settle_on_chain(self.svc, job, r)

    async def complete_job(self, job: JobRecord, pointer: bytes) -> None:
        """Record the job's result ``pointer`` on chain if the job is still open (refunds
        the escrow not owed to trainers)."""
        await complete_on_chain(self.svc, job, pointer)

    async def _settle(self, job: JobRecord, r: int) -> None:
        await record_settled(self.svc, job, r, await self.settle_round(job, r))

    # ---------------------------------------------------------------- what the API calls

    async def submit(self, dataset_path: Path, model: dict[str, Any], terms: JobTerms,
                     name: str = "", initial_weights: Path | None = None) -> str:
        """Validate a job (dry run on a few rows, model budget) and start it. Nothing is spent
        here; errors raise :class:`SubmitError` with a one-line reason."""
        job = await self.submission.submit(dataset_path, model, terms, name, initial_weights)
        self.svc.db.put_job(job)
        self.start(job.job_id)
        return job.job_id

    def start(self, job_id: str) -> None:
        """Drive ``job_id`` in the node's nursery unless that already happens."""
        if job_id not in self._running:
            self._running.add(job_id)
            self.svc.node.nursery.start_soon(self.drive, job_id)

    def is_running(self, job_id: str) -> bool:
        """Whether a task drives ``job_id`` now."""
        return job_id in self._running

    def job(self, job_id: str) -> JobRecord:
        """The job's record; raises :class:`JobNotFound`."""
        return self.svc.job(job_id)

    def job_dir(self, job_id: str) -> Path:
        """The job's local folder."""
        return self.svc.job_dir(job_id)

    def request_cancel(self, job_id: str) -> JobRecord:
        """Ask the job's driver to cancel it at its next step; raises :class:`JobNotFound`, or
        ``Rejected`` when the job already ended."""
        job = self.svc.job(job_id)
        if job.state in TERMINAL:
            raise Rejected(f"job {job_id} is already {job.state}")
        self._cancel_requested.add(job_id)
        return job

    def fetch_result(self, job: JobRecord) -> bytes:
        """The decrypted result of a done job (blocking; see :meth:`Finish.fetch_result`)."""
        return self.finishing.fetch_result(job)

    def resume_all(self) -> None:
        """Restart every unfinished job (after a client restart)."""
        db = self.svc.db
        for job in db.jobs():
            if job.state not in TERMINAL:
                self.svc.event(job, f"client restarted; resuming from state {job.state}")
                db.put_job(job)
                if job.state == "bidding":
                    job.state = "prepared"  # bids lived in memory: ask again
                    db.put_job(job)
                self.start(job.job_id)


async def open_client(node: Node, settings: Settings, home: Path, opts: dict[str, object], *,
                      fund_wallet: Callable[[str], None] | None = None,
                      client_cls: type[ClientRole] = ClientRole) -> ClientRole:
    """Build the client role for ``node``: object store, ledger and audit log from ``settings``.

    ``fund_wallet(address)`` (the devnet faucet, say) runs first, in a thread. Raises
    :class:`~fedswarm.config.ConfigError` when a backend is not available: the caller decides
    whether the node runs without jobs. ``client_cls`` is the class to build (a test double
    from ``fedswarm.testing``, say). ``opts`` holds the node's role options (none used yet).
    """
    if node.role != Role.CLIENT:
        raise ValueError(f"open_client needs a client node, got a {node.role.value} node")
    identity = node.identity
    if fund_wallet is not None:
        await in_thread(fund_wallet, identity.address)
    store = await in_thread(make_object_store, settings)
    ledger = await in_thread(make_ledger, settings, identity)
    audit = await in_thread(make_audit_log, settings, identity)
    return client_cls(node, settings, home, identity, store, ledger, audit)
