"""The client role: the job coordinator, as an explicit, restartable state machine.

A job moves through::

    submitted -> prepared -> bidding -> selected -> escrowed -> running -> finishing -> done
                                              +-> awaiting-payment -+     (or failed / cancelled)

(``awaiting-payment``: a wallet user's job, funded by the wallet itself, :mod:`.payment`.)

Each state has one step, in its own module: :mod:`.submission` (validate, then prepare the
dataset and initial weights), :mod:`.bidding` (announce, select trainers, escrow their pay),
:mod:`.rounds` (assign, collect, reassign; :mod:`.exchange` receipts deliveries off chain;
:mod:`.review` checks and aggregates) and :mod:`.finish` (result; cancel; fail). Beside the
steps, one background :class:`~.settlement.Settler` puts verdicts on chain in batches, closes,
releases and cleans up jobs: no chain transaction sits on a round's path.
A step reads the durable :class:`~fedswarm.roles.client.records.JobRecord`, does its work and
records the next state; :meth:`ClientRole.drive` walks the steps. A client killed at any point
restarts with the same home, finds the job in SQLite and resumes at the last recorded state;
steps with chain effects first ask the chain what is already done, so a restart never pays twice.
A job funded on the v1 contract (before v2) is not resumed: it fails and is closed on v1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fedswarm.config import Settings
from fedswarm.identity import Identity
from fedswarm.ledger.audit import AuditLog
from fedswarm.ledger.audit_factory import make_audit_log
from fedswarm.ledger.escrow import EscrowV2, SettleOutcome, TrainerTerms, Verdict
from fedswarm.ledger.evm import Ledger, TxReceipt
from fedswarm.ledger.factory import make_escrow, make_ledger
from fedswarm.p2p.node import Node, Rejected
from fedswarm.protocol.job import Bid, UnitDone, UnitFailed, UpdateKey
from fedswarm.protocol.messages import Role
from fedswarm.roles.client.bidding import Bidding, fund_trainers
from fedswarm.roles.client.exchange import Exchange
from fedswarm.roles.client.finish import FUNDED_STATES, Finish
from fedswarm.roles.client.payment import LateFunding, Payment, is_wallet_job
from fedswarm.roles.client.records import NODE_OWNER, TERMINAL, JobRecord, JobState, JobTerms
from fedswarm.roles.client.review import Review
from fedswarm.roles.client.rounds import Rounds
from fedswarm.roles.client.services import ClientServices, JobFailed, in_thread, log
from fedswarm.roles.client.settlement import Settler, request_close, round_checked
from fedswarm.roles.client.submission import Submission
from fedswarm.roles.client.training import JobStrategies
from fedswarm.storage.base import ObjectStore
from fedswarm.storage.factory import make_object_store


class ClientRole:
    """The job coordinator of one client node (built by :func:`open_client`).

    The settlement seam, for test doubles: :meth:`submit_verdicts` and :meth:`complete_job` are
    the only chain calls that pay trainers by verdict or complete a job; a subclass that
    overrides them to do nothing is a client that never settles (its trainers claim with
    their receipts).
    """

    def __init__(self, node: Node, settings: Settings, home: Path, identity: Identity,
                 store: ObjectStore, ledger: Ledger, audit: AuditLog, escrow: EscrowV2) -> None:
        self.svc = svc = ClientServices(node, settings, home, identity, store, ledger, audit, escrow)
        # What the node's API reads (the same objects the phases share through ``svc``).
        self.node, self.settings, self.home, self.identity = node, settings, home, identity
        self.store, self.ledger, self.escrow, self.audit, self.db = store, ledger, escrow, audit, svc.db
        self._cancel_requested: set[str] = set()
        self._running: set[str] = set()  # jobs a drive() task is working on
        self.submission = Submission(svc)
        self.bidding = Bidding(svc, self.fund_trainers)
        self.payment = Payment(svc, self.fund_trainers)
        self.review = Review(svc, JobStrategies(svc.job_dir))
        self.settler = Settler(svc, self.submit_verdicts, self.complete_job)
        self.late_funding = LateFunding(svc, self._cancel_late_funding)
        self.rounds = Rounds(svc, self.review, self._round_checked, self._cancel_requested.__contains__)
        self.exchange = Exchange(svc, self.rounds.wake)
        self.finishing = Finish(svc, self.settler)
        self._settler_started = False
        node.on_rpc(Bid, self.bidding.on_bid)
        node.on_rpc(UnitDone, self.exchange.on_unit_done)
        node.on_rpc(UpdateKey, self.exchange.on_update_key)
        node.on_rpc(UnitFailed, self.rounds.on_unit_failed)

    # ---------------------------------------------------------------- the state machine

    async def drive(self, job_id: str) -> None:
        """Run job ``job_id`` from its recorded state to a terminal one."""
        steps: dict[JobState, Callable[[JobRecord], Awaitable[None]]] = {
            "submitted": self.submission.prepare,
            "prepared": self.bidding.collect_bids,
            "bidding": self.bidding.collect_bids,
            "selected": self._escrow,
            "awaiting-payment": self._await_payment,
            "escrowed": self.rounds.run_rounds,
            "running": self.rounds.run_rounds,
            "finishing": self.finishing.finish,
        }
        try:
            job = self.svc.job(job_id)
            if job.job_key is None and (job.state in FUNDED_STATES or job.escrow_tx):
                # Funded on the v1 contract before v2: not resumed; closed on v1 by fail().
                await self.finishing.fail(job_id, "funded on the v1 escrow, which this client no longer "
                                                  "runs jobs on; closed there (refund withdrawn)")
                return
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

    def fund_trainers(self, job: JobRecord) -> list[TrainerTerms]:
        """The trainers the funding transaction registers: chosen then standbys, each at its
        bid price (a test double registers them wrongly here; trainers must refuse to work)."""
        return fund_trainers(job)

    async def submit_verdicts(self, job: JobRecord, batch: list[Verdict]) -> SettleOutcome | None:
        """Put one batch of verdicts on chain (the settler sizes it); None when nothing was
        sent."""
        return await in_thread(self.escrow.settle_batch, bytes.fromhex(job.job_key or ""), batch)

    async def complete_job(self, job: JobRecord, pointer: bytes, result_sha256: bytes) -> TxReceipt | None:
        """Record the job's result ``pointer`` and its sha256 on chain (refunds the free
        escrow; reservations come back at release); None when nothing was sent."""
        return await in_thread(self.escrow.complete, bytes.fromhex(job.job_key or ""), pointer, result_sha256)

    async def _escrow(self, job: JobRecord) -> None:
        # A wallet's job is funded by the wallet (the node only operates it).
        await (self.payment.request(job) if is_wallet_job(job) else self.bidding.escrow(job))

    async def _await_payment(self, job: JobRecord) -> None:
        await self.payment.wait(job, self._cancel_requested.__contains__)

    def _cancel_late_funding(self, job: JobRecord) -> None:
        # A wallet paid after its window: the job failed, so the settler cancels what it funded.
        request_close(self.svc, job, "cancel")
        self.settler.kick()

    async def _round_checked(self, job: JobRecord, r: int) -> None:
        await round_checked(self.svc, self.settler, job, r)

    # ---------------------------------------------------------------- what the API calls

    async def submit(self, dataset_path: Path, model: dict[str, Any], terms: JobTerms,
                     name: str = "", initial_weights: Path | None = None, owner: str = NODE_OWNER) -> str:
        """Validate a job (dry run on a few rows, model budget) and start it. Nothing is spent
        here; errors raise :class:`SubmitError` with a one-line reason. ``owner``: the wallet
        address of a wallet user's job (it pays and alone reads the result)."""
        job = await self.submission.submit(dataset_path, model, terms, name, initial_weights)
        job.owner = owner
        self.svc.db.put_job(job)
        self.start(job.job_id)
        return job.job_id

    def start_settler(self) -> None:
        """Start the background settler in the node's nursery (once)."""
        if not self._settler_started:
            self._settler_started = True
            self.svc.node.nursery.start_soon(self.settler.run)
            self.svc.node.nursery.start_soon(self.late_funding.watch)

    def start(self, job_id: str) -> None:
        """Drive ``job_id`` in the node's nursery unless that already happens."""
        self.start_settler()
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
        """Restart every unfinished job (after a client restart) and the settler (which finishes
        the chain work of ended jobs too)."""
        self.start_settler()
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
    escrow = await in_thread(make_escrow, settings, identity)
    audit = await in_thread(make_audit_log, settings, identity)
    return client_cls(node, settings, home, identity, store, ledger, audit, escrow)
