"""What every part of the trainer shares: its options, its state, the audit queue, the worker.

:class:`TrainerCore` holds the node, wallet, escrow (v2; the v1 ledger only for old jobs), audit
log, training worker and database
that :mod:`.bidding`, :mod:`.unit` and :mod:`.pay` work with; :class:`~.role.Trainer` puts the
three parts together. Nothing here talks to the market or touches a unit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from nacl.public import PrivateKey

from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity
from fedswarm.learning.worker import TrainingWorker
from fedswarm.ledger.audit import AuditLog
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.evm import Ledger
from fedswarm.p2p.node import Node
from fedswarm.roles.trainer.clients import ClientBook
from fedswarm.roles.trainer.records import TrainerDB
from fedswarm.roles.trainer.uplink import Uplink
from fedswarm.storage.chunk_cache import ChunkCache

log = logging.getLogger("fedswarm.trainer")

DEFAULT_PRICE_WEI = 10**15
DEFAULT_MAX_SETTLE_WINDOW_S = 86_400  # a job may keep our pay unsettled at most a day
RECEIPT_SKEW_S = 60  # a receipt's issued_at must be within this of our clock
MIN_UNIT_SECONDS = 3.0  # a unit whose deadline is closer than this is refused at once
# RPC error codes that mean "the client heard us and said no": retrying cannot help.
PERMANENT_RPC_CODES = ("rejected", "forbidden", "bad_request", "not_found", "unknown_type", "too_large")
Key = tuple[str, int, int]  # (job id, round, unit)


class UnitError(Exception):
    """A unit cannot be completed; the message is the one-line reason sent to the client."""


@dataclass
class TrainerOptions:
    """The trainer's knobs (from the node command line)."""

    price_wei: int = DEFAULT_PRICE_WEI
    claim_interval_s: float = 5.0
    progress_interval_s: float = 1.0
    # Seconds without a bid or a unit after which the training worker (and torch) is stopped;
    # 0 keeps it warm from start-up on. It is started again as soon as the trainer bids.
    worker_idle_s: float = 120.0
    allow_private_urls: bool = True  # devnet storage lives on 127.0.0.1
    # The longest settle window we work under: past it an unsettled unit becomes claimable
    # with its receipt, so this bounds how long a client may hold our pay.
    max_settle_window_s: int = DEFAULT_MAX_SETTLE_WINDOW_S
    receipt_skew_s: int = RECEIPT_SKEW_S
    # Refuse to bid for an operator that rejected more than this share of at least
    # min_client_units settled units (from the escrow's events).
    max_client_rejection_rate: float = 0.5
    min_client_units: int = 20

    @classmethod
    def from_opts(cls, opts: dict[str, object], node: Node, settings: Settings) -> TrainerOptions:
        """Options from the node's ``opts`` dict; a one-line ConfigError on bad values."""
        price = int(_number(opts.get("price_wei")) or node.price_wei or DEFAULT_PRICE_WEI)
        if price <= 0:
            raise ConfigError(f"--price-wei must be positive, got {price}")
        idle = _number(opts.get("worker_idle_s"))
        idle_s = 120.0 if idle is None else float(idle)
        if idle_s < 0:
            raise ConfigError(f"--worker-idle must be 0 or more seconds, got {idle_s:g}")
        window = _number(opts.get("max_settle_window_s"))
        window_s = DEFAULT_MAX_SETTLE_WINDOW_S if window is None else int(window)
        if window_s <= 0:
            raise ConfigError(f"--max-settle-window must be positive seconds, got {window_s}")
        skew = _number(opts.get("receipt_skew_s"))
        skew_s = RECEIPT_SKEW_S if skew is None else int(skew)
        if skew_s < 0:
            raise ConfigError(f"--receipt-skew must be 0 or more seconds, got {skew_s}")
        rate = _number(opts.get("max_client_rejection_rate"))
        rate = 0.5 if rate is None else float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--max-client-rejection-rate must be between 0 and 1, got {rate:g}")
        return cls(price_wei=price, worker_idle_s=idle_s,
                   claim_interval_s=float(_number(opts.get("claim_interval")) or 5.0),
                   allow_private_urls=settings.is_devnet, max_settle_window_s=window_s,
                   receipt_skew_s=skew_s, max_client_rejection_rate=rate)


def _number(value: object) -> int | float | None:
    """A numeric option as given (None when unset); a ConfigError for anything else."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value) if "." in value else int(value)
        except ValueError:
            pass
    raise ConfigError(f"expected a number, got {value!r}")


@dataclass
class Stats:
    """Counters shown in ``/status`` (bids sent, units committed, audit messages dropped...)."""

    counters: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self.counters[name] = self.counters.get(name, 0) + n


def one_line(exc: BaseException) -> str:
    """The one-line reason for ``exc`` that goes to the log, the audit topic and the client."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if not isinstance(exc, UnitError) else text[:500]


class TrainerCore:
    """The trainer's state and the plumbing its parts share (audit queue, warm worker)."""

    def __init__(
        self,
        node: Node,
        identity: Identity,
        ledger: Ledger,
        audit: AuditLog,
        worker: TrainingWorker,
        db: TrainerDB,
        workdir: Path,
        options: TrainerOptions,
        chain_id: int,
        escrow: EscrowV2,
    ) -> None:
        self.node = node
        self.identity = identity
        self.ledger = ledger  # v1: only old jobs' claims and withdrawals
        self.escrow = escrow
        self.audit = audit
        self.worker = worker
        self.db = db
        self.workdir = workdir
        self.options = options
        self.chunks = ChunkCache(workdir / "chunks", allow_private=options.allow_private_urls)
        # Clients' rejection rates from the escrow's events (refreshed by the role's run()).
        self.client_book = ClientBook(workdir, escrow, options.max_client_rejection_rate,
                                      options.min_client_units)
        self.chain_id = chain_id
        self.contract = escrow.contract_address.lower()  # new jobs must name this escrow
        self._escrows: dict[str, EscrowV2] = {self.contract: escrow}
        # Jobs whose chain terms passed the checks before their first unit: job id -> units
        # we are registered for (re-read when the receipts reach it).
        self._job_checked: dict[str, int] = {}
        self.peer_id = node.peer_id
        self.box_key: PrivateKey = identity.box_key
        self.pending_wei: int | None = None
        self._pending_at = 0.0
        self.stats = Stats()
        self.uplink = Uplink()  # measured from our own uploads: units we cannot upload in time are refused
        self._running: set[Key] = set()
        self._bidding: set[str] = set()
        self._bids_unanswered: set[str] = set()  # timed out: the client may not have them
        self._worker_used_at = time.monotonic()  # last bid or unit: the worker stays warm after it
        # Ledger writes one at a time: one account, one nonce sequence.
        self._chain_limiter = trio.CapacityLimiter(1)
        self._audit_send, self._audit_recv = trio.open_memory_channel[tuple[str, dict[str, Any]]](2048)
        self._register_rpc()

    def _register_rpc(self) -> None:
        """Subscribe the role's RPC handlers on the node (the full role overrides this)."""

    def escrow_at(self, contract: str) -> EscrowV2:
        """The v2 client for the escrow at ``contract`` (a job stays on the one it was funded
        on, even after the node moves to a new deployment)."""
        key = contract.lower()
        if key not in self._escrows:
            self._escrows[key] = EscrowV2(rpc_url=self.escrow.rpc_url, contract_address=contract,
                                          account=self.escrow.account, units=self.escrow.units,
                                          chain_id=self.escrow.chain_id,
                                          receipt_timeout=self.escrow.receipt_timeout)
        return self._escrows[key]

    async def _withdraw(self, job_id: str | None, audit_topic: str | None) -> None:
        """Withdraw our pending pay (see :class:`~.pay.Payments`, which provides it)."""
        raise NotImplementedError

    # -- the training worker -------------------------------------------------------------------

    async def _warm_worker(self) -> None:
        # The first unit should not pay the worker's cold start (torch import, ~1.5 s).
        try:
            await trio.to_thread.run_sync(self.worker.start)
        except Exception as exc:
            log.warning("training worker did not start: %s", exc)

    async def _warm_at(self, unix_time: float) -> None:
        await trio.sleep(max(0.0, unix_time - time.time()))
        self._want_worker()

    def _want_worker(self) -> None:
        """Work is in sight (a bid, a unit): start the worker now so the unit finds it warm."""
        self._worker_used_at = time.monotonic()
        if self.worker.pid is None:
            self.node.nursery.start_soon(self._warm_worker)

    async def _worker_keeper(self) -> None:
        """Keep the worker warm only while there is work in sight.

        An idle trainer on someone's laptop should not hold torch (~130 MB) for nothing; the
        cold start it then pays (1.5-3 s) overlaps the bid window and the escrow of its next job.
        """
        idle_s = self.options.worker_idle_s
        if idle_s <= 0:
            await self._warm_worker()
            return
        while True:
            await trio.sleep(min(10.0, idle_s / 4))
            quiet = time.monotonic() - self._worker_used_at
            if self.worker.pid is not None and not self._running and not self._bidding and quiet >= idle_s:
                await trio.to_thread.run_sync(self.worker.stop_if_idle)

    # -- audit ---------------------------------------------------------------------------------

    def _audit(self, topic: str, job_id: str | None, state: str, round_: int | None = None,
               unit: int | None = None, **details: Any) -> None:
        """Queue one audit message (never blocks; the sender keeps their order); ``job_id``
        None: a node-level message (on ``TOPIC_ID``)."""
        msg: dict[str, Any] = {"v": 1, "peer": self.peer_id, "role": "trainer", "job": job_id,
                               "round": round_, "unit": unit, "state": state, "ts": round(time.time(), 3)}
        msg.update(details)
        try:
            self._audit_send.send_nowait((topic, msg))
        except trio.WouldBlock:
            self.stats.bump("audit_dropped")
            log.warning("audit queue full; dropped %s message for job %s", state, job_id)

    async def _audit_sender(self) -> None:
        async for topic, msg in self._audit_recv:
            for attempt in range(3):
                try:
                    await trio.to_thread.run_sync(self.audit.submit, topic, msg)
                    self.stats.bump("audit_sent")
                    break
                except Exception as exc:
                    log.warning("audit submit to %s failed (%s): %s", topic, msg.get("state"), exc)
                    await trio.sleep(0.5 * 2**attempt)
            else:
                self.stats.bump("audit_failed")
