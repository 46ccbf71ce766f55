"""The :class:`Trainer` (bidding + units + pay) and :func:`open_trainer`, which builds one.

What the node runtime and the HTTP layer use: :meth:`Trainer.run` (the background task),
:meth:`Trainer.status`, :meth:`Trainer.units_public` and :meth:`Trainer.advertize`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from fedswarm.config import Settings
from fedswarm.learning.worker import TrainingWorker
from fedswarm.p2p.node import Node
from fedswarm.protocol.job import WorkUnit
from fedswarm.protocol.topics import MARKET_TOPIC, PRESENCE_TOPIC
from fedswarm.roles.trainer.bidding import Bidding
from fedswarm.roles.trainer.core import TrainerOptions
from fedswarm.roles.trainer.pay import Payments
from fedswarm.roles.trainer.records import ACTIVE_STATES, ReceiptStatus, TrainerDB, UnitState
from fedswarm.roles.trainer.unit import UnitFlow

log = logging.getLogger("fedswarm.trainer")

# Units whose work is done, whatever became of their pay.
DONE_STATES = (UnitState.RECEIPTED, UnitState.DELIVERED, UnitState.PAID, UnitState.CLAIMED,
               UnitState.REJECTED, UnitState.COMMITTED)


class Trainer(Bidding, UnitFlow, Payments):
    """One trainer node's protocol logic. Build with :func:`open_trainer`.

    Every step is logged to the job's audit topic as a small JSON dict. All blocking work
    (ledger, storage, worker, audit) runs in threads, never on the trio loop.
    """

    def _register_rpc(self) -> None:
        self.node.on_rpc(WorkUnit, self._on_work_unit)

    # -- what the node runtime and the HTTP layer use ------------------------------------------

    def status(self) -> dict[str, Any]:
        """The trainer's part of ``GET /status``."""
        counts = self.db.counts()
        return {"trainer": {
            "units_in_progress": sum(counts.get(s.value, 0) for s in ACTIVE_STATES),
            "units_done": sum(counts.get(s.value, 0) for s in DONE_STATES),
            "units_failed": counts.get(UnitState.FAILED.value, 0),
            "units_by_state": counts,
            "receipts_held": len(self.db.receipts(status=ReceiptStatus.HELD)),
            "jobs_stopped": sorted(j.job_id for j in self.db.jobs() if j.stopped),
            "escrow": self.escrow.contract_address,
            "max_settle_window_s": self.options.max_settle_window_s,
            "clients": self.client_book.public(),
            "pending_wei": self.pending_wei,
            "price_wei": self.options.price_wei,
            "address": self.identity.address,
            "stats": dict(self.stats.counters),
            **self.uplink.public(),
        }}

    def units_public(self) -> list[dict[str, Any]]:
        """Every unit this trainer holds or held, without its work order (URLs, sealed keys)."""
        return [u.public() for u in self.db.units()]

    async def advertize(self) -> dict[str, Any]:
        """Publish a presence heartbeat now (so clients see our price without waiting)."""
        await self.node.publish(PRESENCE_TOPIC, self.node.heartbeat())
        return {"status": "ok", "advertized": self.peer_id, "price_wei": self.options.price_wei}

    async def run(self) -> None:
        """Background life of the role; started in the node nursery once the node listens."""
        await self.node.ready.wait()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._audit_sender)
                nursery.start_soon(self._worker_keeper)
                await self.node.subscribe(MARKET_TOPIC, self._on_market)  # the node's validator stays
                for job in self.db.jobs(state="bid"):
                    await self._follow_job(job.job_id, job.client_peer_id)
                await trio.to_thread.run_sync(self._drop_stale_chunks)
                self._resume()
                nursery.start_soon(self._claim_loop)
                nursery.start_soon(self.client_book.run)
        finally:
            # The worker is a child process: stop it with the node. (The database stays open:
            # unit tasks being cancelled may still write their last state.)
            with contextlib.suppress(Exception):
                self.worker.close()

    def _drop_stale_chunks(self) -> None:
        """Remove cached chunks of jobs that finished (or were forgotten) while we were down."""
        for job_id in self.chunks.jobs():
            rec = self.db.job(job_id)
            if rec is None or rec.state == "finished":
                self.chunks.drop_job(job_id)


async def open_trainer(
    node: Node,
    settings: Settings,
    home: Path,
    opts: dict[str, object],
    *,
    fund_wallet: Callable[[str], None] | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> Trainer:
    """Build the trainer role for ``node``: escrow (v2; the v1 ledger for old jobs), audit log,
    worker, database.

    ``fund_wallet(address)`` (the devnet faucet, say) runs first, in a thread. Raises
    :class:`~fedswarm.config.ConfigError` when the ledger or the audit log is not available: the
    node can stay on the mesh, but cannot bid without a ledger to be paid on.
    ``trainer_cls`` is the class to build (a test double from ``fedswarm.testing``, say).
    """
    from fedswarm.ledger.audit_factory import make_audit_log
    from fedswarm.ledger.factory import make_escrow, make_ledger

    identity = node.identity
    options = TrainerOptions.from_opts(opts, node, settings)
    if fund_wallet is not None:
        await trio.to_thread.run_sync(fund_wallet, identity.address)
    ledger = await trio.to_thread.run_sync(make_ledger, settings, identity)
    escrow = await trio.to_thread.run_sync(make_escrow, settings, identity)
    chain_id = await trio.to_thread.run_sync(escrow.get_chain_id)
    audit = make_audit_log(settings, identity)
    workdir = Path(home) / "work"
    device = "auto" if opts.get("allow_gpu", True) else "cpu"
    worker = TrainingWorker(workdir, device=device)
    db = TrainerDB(Path(home) / "trainer.db")
    trainer = trainer_cls(node, identity, ledger, audit, worker, db, workdir, options, chain_id, escrow)
    log.info("%s %s (wallet %s) asks %d wei per unit", "trainer" if trainer_cls is Trainer else trainer_cls.__name__,
             node.peer_id, identity.address, options.price_wei)
    return trainer
