"""The trainer role: bid on jobs, train work units, deliver encrypted updates, collect pay.

State machine of one unit of work (states in :class:`~fedswarm.roles.trainer_db.UnitState`,
each persisted before the step that depends on it, so a SIGKILLed trainer resumes cleanly)::

    WorkUnit RPC ─► ACCEPTED ─► WORKING (download, decrypt, train) ─► UPLOADING (update encrypted,
    hash stored) ─► COMMITTED (upload + commitUnit) ─► DELIVERED (client acked UnitDone)
                  └─► FAILED (UnitFailed sent)       restart past the deadline ─► ABANDONED
    settlement seen by the claim loop: DELIVERED/COMMITTED ─► PAID | REJECTED | CLAIMED

Jobs: a :class:`JobAnnounce` on the market topic that fits (sender is the job's client, our
price within the cap, RAM/GPU, the same chain and contract as our ledger) gets a signed
:class:`Bid` over RPC; the job is remembered and its topic followed (RoundResult, JobFinished).
After JobFinished the trainer withdraws its pending pay; a background loop claims committed
units that the client left unsettled past the settle window.

Every step is logged to the job's audit topic as a small JSON dict. All blocking work (ledger,
storage, worker, audit) runs in threads, never on the trio loop.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from fastapi import APIRouter
from nacl.public import PrivateKey

from fedswarm.api.runtime import RoleParts
from fedswarm.config import ConfigError, Settings
from fedswarm.crypto import (
    DecryptionError,
    decrypt_stream,
    encrypt_to_box,
    open_sealed,
    sha256_bytes,
)
from fedswarm.identity import Identity
from fedswarm.learning.weights import load_weights_bytes, load_weights_file, save_weights_bytes
from fedswarm.learning.worker import TrainingWorker, TrainTask
from fedswarm.ledger.audit import AuditLog
from fedswarm.ledger.contract import UnitStatus
from fedswarm.ledger.evm import Ledger, job_id_from
from fedswarm.p2p.node import Node, Rejected, RpcError
from fedswarm.protocol.job import (
    Ack,
    Bid,
    BidAck,
    JobAnnounce,
    JobFinished,
    RoundResult,
    UnitAccepted,
    UnitDone,
    UnitFailed,
    WorkUnit,
)
from fedswarm.protocol.messages import Capabilities, WireModel
from fedswarm.protocol.topics import MARKET_TOPIC, PRESENCE_TOPIC, job_topic
from fedswarm.roles.trainer_db import (
    ACTIVE_STATES,
    UNSETTLED_STATES,
    TrainerDB,
    UnitRecord,
    UnitState,
)
from fedswarm.storage.chunk_cache import ChunkCache

log = logging.getLogger("fedswarm.trainer")

# "kill" is accepted and does nothing here: the demo kills such a trainer with SIGKILL.
FAULTS = ("none", "poison", "lazy", "kill")
DEFAULT_PRICE_WEI = 10**15
MIN_UNIT_SECONDS = 3.0  # a unit whose deadline is closer than this is refused at once
POISON_SCALE = 50.0
# RPC error codes that mean "the client heard us and said no": retrying cannot help.
PERMANENT_RPC_CODES = ("rejected", "forbidden", "bad_request", "not_found", "unknown_type", "too_large")
Key = tuple[str, int, int]


class UnitError(Exception):
    """A unit cannot be completed; the message is the one-line reason sent to the client."""


@dataclass
class TrainerOptions:
    """The trainer's knobs (from the node command line, see ``roles.runtime``)."""

    price_wei: int = DEFAULT_PRICE_WEI
    fault: str = "none"
    claim_interval_s: float = 5.0
    progress_interval_s: float = 1.0
    # Seconds without a bid or a unit after which the training worker (and torch) is stopped;
    # 0 keeps it warm from start-up on. It is started again as soon as the trainer bids.
    worker_idle_s: float = 120.0
    allow_private_urls: bool = True  # devnet storage lives on 127.0.0.1

    @classmethod
    def from_opts(cls, opts: dict[str, Any], node: Node, settings: Settings) -> TrainerOptions:
        """Options from the runtime's ``opts`` dict; a one-line ConfigError on bad values."""
        fault = str(opts.get("fault") or "none").lower()
        if fault not in FAULTS:
            raise ConfigError(f"unknown trainer fault {fault!r}; use one of {', '.join(FAULTS)}")
        price = int(opts.get("price_wei") or node.price_wei or DEFAULT_PRICE_WEI)
        if price <= 0:
            raise ConfigError(f"--price-wei must be positive, got {price}")
        idle = opts.get("worker_idle_s")
        idle_s = 120.0 if idle is None else float(idle)
        if idle_s < 0:
            raise ConfigError(f"--worker-idle must be 0 or more seconds, got {idle_s:g}")
        return cls(price_wei=price, fault=fault, worker_idle_s=idle_s,
                   claim_interval_s=float(opts.get("claim_interval") or 5.0),
                   allow_private_urls=settings.is_devnet)


@dataclass
class _Inputs:
    """What a unit downloaded and decrypted (plaintext files under the unit's directory)."""

    global_path: Path
    chunk_paths: list[Path]
    rows: int
    chunks_cached: int = 0  # chunks found in the cache, not downloaded


@dataclass
class _Stats:
    counters: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class Trainer:
    """One trainer node's protocol logic. Build with :func:`build_trainer`."""

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
    ) -> None:
        self.node = node
        self.identity = identity
        self.ledger = ledger
        self.audit = audit
        self.worker = worker
        self.db = db
        self.workdir = workdir
        self.options = options
        self.chunks = ChunkCache(workdir / "chunks", allow_private=options.allow_private_urls)
        self.chain_id = chain_id
        self.contract = ledger.contract_address.lower()
        self.peer_id = node.peer_id
        self.box_key: PrivateKey = identity.box_key
        self.pending_wei: int | None = None
        self._pending_at = 0.0
        self.stats = _Stats()
        self._running: set[Key] = set()
        self._bidding: set[str] = set()
        self._bids_unanswered: set[str] = set()  # timed out: the client may not have them
        self._worker_used_at = time.monotonic()  # last bid or unit: the worker stays warm after it
        # Ledger writes one at a time: one account, one nonce sequence.
        self._chain_limiter = trio.CapacityLimiter(1)
        self._audit_send, self._audit_recv = trio.open_memory_channel[tuple[str, dict[str, Any]]](2048)
        node.on_rpc(WorkUnit, self._on_work_unit)

    # -- wiring --------------------------------------------------------------------------------

    def role_parts(self) -> RoleParts:
        """Routes, /command verbs, the status extra and the background tasks of the role."""
        router = APIRouter(prefix="/api/v1/trainer")

        @router.get("/units")
        async def units() -> dict[str, Any]:
            return {"units": [u.public() for u in self.db.units()]}

        async def cmd_advertize(args: list[Any]) -> dict[str, Any]:
            await self.node.publish(PRESENCE_TOPIC, self.node.heartbeat())
            return {"status": "ok", "advertized": self.peer_id, "price_wei": self.options.price_wei}

        async def cmd_units(args: list[Any]) -> dict[str, Any]:
            return {"status": "ok", "units": [u.public() for u in self.db.units()]}

        return RoleParts(routers=[router], commands={"advertize": cmd_advertize, "units": cmd_units},
                         status=self.status, tasks=[self.run])

    def status(self) -> dict[str, Any]:
        """The trainer's part of ``GET /status``."""
        counts = self.db.counts()
        return {"trainer": {
            "units_in_progress": sum(counts.get(s.value, 0) for s in ACTIVE_STATES),
            "units_done": sum(counts.get(s.value, 0) for s in (UnitState.COMMITTED, UnitState.DELIVERED,
                                                               UnitState.PAID, UnitState.CLAIMED,
                                                               UnitState.REJECTED)),
            "units_failed": counts.get(UnitState.FAILED.value, 0),
            "units_by_state": counts,
            "pending_wei": self.pending_wei,
            "price_wei": self.options.price_wei,
            "fault": self.options.fault,
            "address": self.identity.address,
            "stats": dict(self.stats.counters),
        }}

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

    def _audit(self, topic: str, job_id: str, state: str, round_: int | None = None,
               unit: int | None = None, **details: Any) -> None:
        """Queue one audit message (never blocks; the sender keeps their order)."""
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

    # -- market --------------------------------------------------------------------------------

    async def _on_market(self, sender: str, msg: Any) -> None:
        if isinstance(msg, JobAnnounce):
            reason = self._why_not_bid(sender, msg)
            if reason:
                if reason != "already bid":
                    log.info("not bidding on job %s: %s", msg.job_id, reason)
                self.stats.bump("announces_ignored")
                return
            self._bidding.add(msg.job_id)
            self.node.nursery.start_soon(self._bid, msg)
        elif isinstance(msg, JobFinished):
            await self._on_job_finished(sender, msg)

    def _capabilities(self) -> Capabilities:
        if self.node.capabilities is not None:
            return self.node.capabilities
        from fedswarm.roles.capabilities import detect_capabilities

        self.node.capabilities = detect_capabilities()
        return self.node.capabilities

    def _why_not_bid(self, sender: str, ann: JobAnnounce) -> str | None:
        """None if we should bid on ``ann``, else the reason (for the debug log)."""
        if sender != ann.client_peer_id:
            return f"announced by {sender}, not its client {ann.client_peer_id}"
        if ann.job_id in self._bidding or (self.db.job(ann.job_id) is not None
                                           and ann.job_id not in self._bids_unanswered):
            return "already bid"
        if time.time() >= ann.bid_deadline:
            return "bid deadline passed"
        if self.options.price_wei > ann.price_cap_wei:
            return f"our price {self.options.price_wei} is over the cap {ann.price_cap_wei}"
        caps = self._capabilities()
        if ann.min_ram_mb > caps.ram_mb:
            return f"needs {ann.min_ram_mb} MB RAM, we have {caps.ram_mb}"
        if ann.needs_gpu and caps.device != "cuda":
            return "needs a GPU"
        if ann.chain_id != self.chain_id:
            return f"chain {ann.chain_id} is not ours ({self.chain_id})"
        if ann.contract.lower() != self.contract:
            return f"contract {ann.contract} is not ours ({self.contract})"
        return None

    async def _bid(self, ann: JobAnnounce) -> None:
        from fedswarm.market.bids import sign_bid

        try:
            signature = sign_bid(self.identity.wallet, self.peer_id, self.identity.box_public_hex,
                                 ann.job_id, self.options.price_wei)
            bid = Bid(job_id=ann.job_id, peer_id=self.peer_id, address=self.identity.address,
                      box_public=self.identity.box_public_hex, price_wei=self.options.price_wei,
                      capabilities=self._capabilities(), signature=signature)
            # Remember the job before the client can answer with a work unit.
            self.db.add_job(ann.job_id, ann.client_peer_id, ann.audit_topic, self.options.price_wei)
            await self._follow_job(ann.job_id, ann.client_peer_id)
            self.node.remember_addrs(ann.client_peer_id, ann.client_addrs)
            timeout = min(15.0, max(1.0, ann.bid_deadline - time.time()))
            reply, _ = await self.node.request(ann.client_peer_id, bid, timeout=timeout, expect=(BidAck,))
            self.stats.bump("bids_sent")
            log.info("bid %d wei on job %s (received: %s)", self.options.price_wei, ann.job_id,
                     getattr(reply, "received", None))
            self._audit(ann.audit_topic, ann.job_id, "joined", price_wei=str(self.options.price_wei),
                        address=self.identity.address)
            self._bids_unanswered.discard(ann.job_id)
            # Work is in sight: warm the worker once the bid window closes, so that the first
            # unit finds it ready. Not sooner: on a crowded machine a torch import in every
            # trainer at once starves the bids still on their way. (A unit that comes
            # earlier starts it itself.)
            self._worker_used_at = time.monotonic()
            self.node.nursery.start_soon(self._warm_at, ann.bid_deadline)
        except RpcError as exc:
            self.stats.bump("bids_failed")
            log.info("bid on job %s failed: %s", ann.job_id, exc)
            # The client's next announcement of the job gets a fresh bid instead of "already
            # bid". After a timeout the client may have the bid and send units: keep the job;
            # otherwise it never arrived: forget the job (it has no units).
            if exc.code == "timeout":
                self._bids_unanswered.add(ann.job_id)
            elif self.db.forget_job(ann.job_id):
                with contextlib.suppress(Exception):
                    await self.node.unsubscribe(job_topic(ann.job_id))
        finally:
            self._bidding.discard(ann.job_id)

    async def _follow_job(self, job_id: str, client_peer_id: str) -> None:
        """Subscribe to the job topic; only the job's client may speak there."""
        if job_topic(job_id) in self.node.topics:
            return  # a bid again after an unanswered one
        def validator(sender: str, msg: WireModel) -> bool:
            return sender == client_peer_id and getattr(msg, "job_id", job_id) == job_id

        await self.node.subscribe(job_topic(job_id), self._on_job_topic, validator)

    async def _on_job_topic(self, sender: str, msg: Any) -> None:
        if isinstance(msg, RoundResult):
            log.info("job %s round %d settled: %d accepted, %d rejected, val acc %s", msg.job_id,
                     msg.round, msg.accepted, msg.rejected, msg.val_accuracy)
            self.stats.bump("round_results")
        elif isinstance(msg, JobFinished):
            await self._on_job_finished(sender, msg)

    async def _on_job_finished(self, sender: str, msg: JobFinished) -> None:
        job = self.db.job(msg.job_id)
        if job is None or sender != job.client_peer_id:
            return
        if not self.db.finish_job(msg.job_id, msg.state):
            return
        log.info("job %s finished (%s)", msg.job_id, msg.state)
        await trio.to_thread.run_sync(self.chunks.drop_job, msg.job_id)
        with contextlib.suppress(Exception):
            await self.node.unsubscribe(job_topic(msg.job_id))
        self.node.nursery.start_soon(self._withdraw, msg.job_id, job.audit_topic)

    # -- work units ----------------------------------------------------------------------------

    async def _on_work_unit(self, peer: str, wu: WorkUnit, blob: bytes | None) -> tuple[WireModel, bytes | None]:
        job = self.db.job(wu.job_id)
        if job is None:
            raise Rejected(f"unknown job {wu.job_id}: this trainer did not bid on it", code="not_found")
        if peer != job.client_peer_id:
            self.stats.bump("units_forbidden")
            raise Rejected(f"only the client of job {wu.job_id} may assign its units", code="forbidden")
        if job.state == "finished":
            raise Rejected(f"job {wu.job_id} is finished")
        if wu.deadline <= time.time() + MIN_UNIT_SECONDS:
            raise Rejected(f"deadline of unit {wu.round}/{wu.unit} is too close or passed")
        key = (wu.job_id, wu.round, wu.unit)
        if key in self._running:
            # The same order again from the same client: an RPC retry after a slow answer.
            # Answer the same way (idempotent) and keep the one unit we are working on.
            return UnitAccepted(job_id=wu.job_id, round=wu.round, unit=wu.unit), None
        if not self.db.add_unit(*key, wu.model_dump(mode="json"), wu.deadline):
            raise Rejected(f"unit {wu.round}/{wu.unit} of job {wu.job_id} is already held", code="busy")
        self.stats.bump("units_accepted")
        self._running.add(key)
        self._want_worker()
        self.node.nursery.start_soon(self._run_unit, wu)
        return UnitAccepted(job_id=wu.job_id, round=wu.round, unit=wu.unit), None

    def _resume(self) -> None:
        """After a restart: finish units whose deadline is ahead, abandon the others."""
        now = time.time()
        for rec in self.db.units(states=(*ACTIVE_STATES, UnitState.COMMITTED)):
            wu = WorkUnit.model_validate(rec.work)
            self._audit(wu.audit_topic, wu.job_id, "restarted", wu.round, wu.unit, was=rec.state.value)
            if rec.deadline <= now:
                if rec.state != UnitState.COMMITTED:  # committed ones stay: the claim loop sees them
                    self.db.set_unit(rec.key, UnitState.ABANDONED, reason="deadline passed while the trainer was down")
                    self._audit(wu.audit_topic, wu.job_id, "abandoned", wu.round, wu.unit)
                    self._cleanup(rec.key)
                continue
            log.info("resuming unit %s/%s of job %s from %s", wu.round, wu.unit, wu.job_id, rec.state.value)
            self._running.add(rec.key)
            self._want_worker()
            self.node.nursery.start_soon(self._run_unit, wu)

    def _unit_dir(self, key: Key) -> Path:
        return self.workdir / "units" / f"{key[0]}-r{key[1]}-u{key[2]}"

    def _cleanup(self, key: Key) -> None:
        shutil.rmtree(self._unit_dir(key), ignore_errors=True)

    async def _run_unit(self, wu: WorkUnit) -> None:
        """Drive one unit from its persisted state to DELIVERED or FAILED. Never raises."""
        key: Key = (wu.job_id, wu.round, wu.unit)
        t0 = time.monotonic()
        try:
            rec = self._rec(key)
            if rec.state in (UnitState.ACCEPTED, UnitState.WORKING):
                await self._produce_update(wu)
                rec = self._rec(key)
            if rec.state == UnitState.UPLOADING:
                await self._upload_and_commit(wu, rec)
                rec = self._rec(key)
            if rec.state == UnitState.COMMITTED:
                await self._deliver(wu, rec, time.monotonic() - t0)
        except Exception as exc:
            reason = _one_line(exc)
            log.warning("unit %s/%s of job %s failed: %s", wu.round, wu.unit, wu.job_id, reason)
            self.db.set_unit(key, UnitState.FAILED, reason=reason)
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
        # Reserve time for encrypt + upload + commit + notify after training.
        reserve = max(2.0, min(30.0, 0.15 * total))

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
        if self.options.fault == "lazy":
            # Fault injection: skip training, hand back the global weights, and claim the
            # samples a real run would have seen (the worker counts rows x epochs).
            update = inputs.global_path.read_bytes()
            num_samples, loss, batches = inputs.rows * wu.epochs, None, 0
        else:
            update, num_samples, loss, batches = await self._train(wu, inputs, wu.deadline - time.time() - reserve)
        if self.options.fault == "poison":
            update = await trio.to_thread.run_sync(poison_update, update, inputs.global_path, wu.seed)
        train_s = time.monotonic() - t_train

        chunk_id = f"update-{wu.round}-{wu.unit}"
        encrypted = await trio.to_thread.run_sync(encrypt_to_box, update, wu.client_box_public, wu.job_id, chunk_id)
        if len(encrypted) > wu.put_max_bytes:
            raise UnitError(f"encrypted update is {len(encrypted)} bytes, over the {wu.put_max_bytes}-byte upload cap")
        digest = sha256_bytes(encrypted)
        # Drop the plaintext training data as soon as it is no longer needed.
        for p in [inputs.global_path, *inputs.chunk_paths]:
            p.unlink(missing_ok=True)
        (udir / "update.enc").write_bytes(encrypted)
        self.db.set_unit(key, UnitState.UPLOADING, update_sha256=digest, update_size=len(encrypted),
                         num_samples=num_samples, train_loss=loss, seconds=round(train_s, 3))
        log.info("unit %s/%s of job %s trained: %d samples, %d batches, loss %s in %.2f s",
                 wu.round, wu.unit, wu.job_id, num_samples, batches, loss, train_s)

    def _download_inputs(self, wu: WorkUnit, udir: Path, budget_s: float) -> _Inputs:
        """Download and decrypt the global weights and every chunk within one total deadline
        (runs in a thread)."""
        from fedswarm.storage.download import Decryption, download

        deadline = time.monotonic() + budget_s

        def left() -> float:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise UnitError(f"downloads did not finish within {budget_s:.0f} s")
            return rest

        gkey = open_sealed(_b64(wu.global_sealed_key, "global weights"), self.box_key)
        gpath = udir / "global.safetensors"
        download(wu.global_url, gpath, max_bytes=wu.global_size, sha256=wu.global_sha256,
                 expected_size=wu.global_size, deadline_s=left(),
                 decrypt=Decryption(wu.job_id, f"global-{wu.round}", key=gkey),
                 allow_private=self.options.allow_private_urls)
        paths: list[Path] = []
        hits = 0
        for i, ref in enumerate(wu.chunks):
            ckey = open_sealed(_b64(ref.sealed_key, f"chunk {ref.chunk_id}"), self.box_key)
            # Our own file names: chunk ids may contain "..", which must not reach a path.
            dest = udir / f"chunk-{i:05d}.safetensors"
            # The same slot brings the same chunk every round: it is downloaded once per job.
            cached, hit = self.chunks.fetch(wu.job_id, str(ref.url), ref.sha256, ref.size, left())
            hits += hit
            try:
                with cached.open("rb") as src, dest.open("wb") as dst:
                    decrypt_stream(src, dst, wu.job_id, ref.chunk_id, key=ckey)
            except DecryptionError as exc:
                self.chunks.discard(wu.job_id, ref.sha256)
                raise UnitError(f"chunk {ref.chunk_id} does not decrypt with its key: {exc}") from None
            paths.append(dest)
        return _Inputs(gpath, paths, sum(c.rows for c in wu.chunks), hits)

    async def _train(self, wu: WorkUnit, inputs: _Inputs, deadline_s: float) -> tuple[bytes, int, float, int]:
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
        return update, result.num_samples, result.train_loss, result.batches

    async def _upload_and_commit(self, wu: WorkUnit, rec: UnitRecord) -> None:
        from fedswarm.storage.download import upload_file

        key = rec.key
        enc_path = self._unit_dir(key) / "update.enc"
        if rec.update_sha256 is None:
            raise UnitError("no update hash stored for this unit")
        chain_job = job_id_from(wu.job_id)
        onchain = await trio.to_thread.run_sync(self.ledger.unit, chain_job, wu.round, wu.unit)
        if onchain.status != UnitStatus.NONE:
            # A commit that landed just before a crash: it is ours if the hash is ours.
            if onchain.trainer.lower() == self.identity.address.lower() and onchain.update_hash.hex() == rec.update_sha256:
                self.db.set_unit(key, UnitState.COMMITTED)
                return
            raise UnitError(f"unit {wu.round}/{wu.unit} is already committed on chain by {onchain.trainer}")
        if not enc_path.exists():
            raise UnitError("the encrypted update was lost before upload")
        remaining = wu.deadline - time.time()
        if remaining <= 0:
            raise UnitError("unit deadline passed before the upload")
        await trio.to_thread.run_sync(
            lambda: upload_file(wu.put_url, enc_path, content_type="application/octet-stream",
                                deadline_s=max(1.0, remaining * 0.7),
                                allow_private=self.options.allow_private_urls))
        self._audit(wu.audit_topic, wu.job_id, "uploaded", wu.round, wu.unit, bytes=rec.update_size)
        receipt = await trio.to_thread.run_sync(
            self.ledger.commit_unit, chain_job, wu.round, wu.unit, bytes.fromhex(rec.update_sha256),
            limiter=self._chain_limiter)
        self.db.set_unit(key, UnitState.COMMITTED, commit_tx=receipt.tx_hash)
        self._audit(wu.audit_topic, wu.job_id, "committed", wu.round, wu.unit,
                    sha256=rec.update_sha256, tx=receipt.tx_hash)
        self.stats.bump("units_committed")

    async def _deliver(self, wu: WorkUnit, rec: UnitRecord, seconds: float) -> None:
        """Tell the client (UnitDone), retrying until the deadline: it may be restarting and
        come back on another address, which the directory learns from its heartbeats."""
        job = self.db.job(wu.job_id)
        assert job is not None and rec.update_sha256 is not None and rec.update_size is not None
        done = UnitDone(job_id=wu.job_id, round=wu.round, unit=wu.unit, update_sha256=rec.update_sha256,
                        update_size=rec.update_size, num_samples=rec.num_samples or 0,
                        train_loss=rec.train_loss, seconds=max(0.0, rec.seconds or seconds),
                        commit_tx=(rec.commit_tx or "")[:80])
        delay = 0.5
        while True:
            remaining = wu.deadline - time.time()
            try:
                await self.node.request(job.client_peer_id, done, timeout=max(1.0, min(10.0, remaining)),
                                        expect=(Ack,))
            except RpcError as exc:
                if exc.code in PERMANENT_RPC_CODES:
                    # Committed on chain all the same: the claim loop follows the settlement.
                    self._audit(wu.audit_topic, wu.job_id, "error", wu.round, wu.unit,
                                reason=f"client refused UnitDone: {exc}"[:300])
                    log.warning("client refused UnitDone for %s/%s: %s", wu.round, wu.unit, exc)
                    self._cleanup(rec.key)
                    return
                if time.time() + delay >= wu.deadline:
                    log.warning("client never acknowledged unit %s/%s of job %s: %s", wu.round,
                                wu.unit, wu.job_id, exc)
                    self._cleanup(rec.key)
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.db.set_unit(rec.key, UnitState.DELIVERED)
            self._audit(wu.audit_topic, wu.job_id, "delivered", wu.round, wu.unit)
            self.stats.bump("units_delivered")
            self._cleanup(rec.key)
            return

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

    # -- pay -----------------------------------------------------------------------------------

    async def _withdraw(self, job_id: str | None, audit_topic: str | None) -> None:
        """Withdraw our pending pay if there is any; audit it on ``audit_topic``."""
        try:
            pending = await trio.to_thread.run_sync(self.ledger.pending)
            self.pending_wei = pending
            if pending <= 0:
                return
            receipt = await trio.to_thread.run_sync(self.ledger.withdraw, limiter=self._chain_limiter)
            self.pending_wei = 0
            log.info("withdrew %d wei (tx %s)", pending, receipt.tx_hash)
            self.stats.bump("withdrawals")
            if audit_topic and job_id:
                self._audit(audit_topic, job_id, "withdrawn", amount_wei=str(pending), tx=receipt.tx_hash)
        except Exception as exc:
            log.warning("withdraw failed: %s", _one_line(exc))

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self.check_settlements()
            except Exception as exc:
                log.warning("settlement check failed: %s", _one_line(exc))
            await trio.sleep(self.options.claim_interval_s)

    async def check_settlements(self) -> None:
        """Follow the settlement of our committed units; claim those left unsettled past the
        settle window; withdraw what was claimed."""
        claimed_for: tuple[str, str] | None = None
        settle_windows: dict[str, int] = {}
        unsettled = self.db.units(states=UNSETTLED_STATES)
        for rec in unsettled:
            if rec.key in self._running:
                continue  # still delivering
            chain_job = job_id_from(rec.job_id)
            info = await trio.to_thread.run_sync(self.ledger.unit, chain_job, rec.round, rec.unit)
            topic = rec.work.get("audit_topic", "")
            if info.status == UnitStatus.ACCEPTED:
                self.db.set_unit(rec.key, UnitState.PAID)
            elif info.status == UnitStatus.REJECTED:
                self.db.set_unit(rec.key, UnitState.REJECTED, reason="rejected by the client: 0x" + info.reason_hash.hex())
            elif info.status == UnitStatus.CLAIMED:
                self.db.set_unit(rec.key, UnitState.CLAIMED)
            elif info.status == UnitStatus.COMMITTED:
                if rec.job_id not in settle_windows:
                    settle_windows[rec.job_id] = (await trio.to_thread.run_sync(self.ledger.job, chain_job)).settle_window
                claimable_at = info.committed_at + settle_windows[rec.job_id]
                if time.time() < claimable_at + 1:
                    continue
                try:
                    await self._advance_chain_clock(claimable_at)
                    receipt = await trio.to_thread.run_sync(
                        self.ledger.claim_unsettled, chain_job, rec.round, rec.unit, limiter=self._chain_limiter)
                except Exception as exc:  # e.g. the chain's clock is behind ours: next time
                    log.info("claim of %s/%s of job %s failed: %s", rec.round, rec.unit, rec.job_id, _one_line(exc))
                    continue
                self.db.set_unit(rec.key, UnitState.CLAIMED, commit_tx=rec.commit_tx)
                self._audit(topic, rec.job_id, "claimed", rec.round, rec.unit, tx=receipt.tx_hash)
                self.stats.bump("units_claimed")
                claimed_for = (rec.job_id, topic)
        if claimed_for is not None:
            await self._withdraw(*claimed_for)
        elif unsettled or self.pending_wei is None or time.monotonic() - self._pending_at > 60:
            # Nothing to settle: the balance only changes through us, so poll it rarely
            # (an idle trainer's web3 call every few seconds was a tenth of its CPU).
            self._pending_at = time.monotonic()
            with contextlib.suppress(Exception):
                self.pending_wei = await trio.to_thread.run_sync(self.ledger.pending)

    async def _advance_chain_clock(self, not_before: int) -> None:
        """Make sure the latest block is not older than ``not_before``.

        The ledger estimates gas against the latest block, whose timestamp on a chain that
        mines only on demand (anvil) is that of the last transaction: a claim would then look
        premature forever. A zero-value transfer to ourselves mines a fresh block. On Hedera
        blocks come every ~2 s, so this never fires there.
        """
        latest = await trio.to_thread.run_sync(lambda: int(self.ledger.w3.eth.get_block("latest")["timestamp"]))
        if latest >= not_before:
            return
        await trio.to_thread.run_sync(self.ledger.transfer, self.identity.address, 0, limiter=self._chain_limiter)


# -- pure helpers ------------------------------------------------------------------------------


def poison_update(update: bytes, global_path: Path, seed: int) -> bytes:
    """Fault injection: scale the update's delta from the global weights by 50 and add noise."""
    glob = load_weights_file(global_path)
    upd = load_weights_bytes(update)
    rng = np.random.default_rng(seed ^ 0x5EED)
    out: dict[str, np.ndarray] = {}
    for name, arr in upd.items():
        if arr.dtype != np.float32:
            out[name] = arr
            continue
        delta = arr - glob[name]
        noise = rng.normal(scale=float(np.std(delta)) * 5 + 1e-2, size=arr.shape)
        out[name] = (glob[name] + POISON_SCALE * delta + noise).astype(np.float32)
    return save_weights_bytes(out)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnitError(f"sealed key of the {what} is not base64") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if not isinstance(exc, UnitError) else text[:500]


# -- factory -----------------------------------------------------------------------------------


async def build_trainer(node: Node, settings: Settings, home: Path, opts: dict[str, Any]) -> RoleParts:
    """Build the trainer role for ``node``: wallet funded (devnet), ledger, audit log, worker,
    database; returns what the runtime plugs in (routes, commands, status, tasks)."""
    from fedswarm.ledger.audit_factory import make_audit_log
    from fedswarm.ledger.factory import make_ledger

    identity = node.identity
    options = TrainerOptions.from_opts(opts, node, settings)
    try:
        if settings.is_devnet:
            from fedswarm.devnet import ensure_funded

            await trio.to_thread.run_sync(ensure_funded, settings, identity.address)
        ledger = await trio.to_thread.run_sync(make_ledger, settings, identity)
        chain_id = await trio.to_thread.run_sync(ledger.get_chain_id)
        audit = make_audit_log(settings, identity)
    except ConfigError as exc:
        # Still on the mesh (presence, capabilities, price), but it cannot bid without a
        # ledger to be paid on: say so in the log and in /status.
        reason = str(exc)
        log.warning("trainer cannot take jobs: %s", reason)
        return RoleParts(status=lambda: {"trainer": {"jobs_unavailable": reason}})
    workdir = Path(home) / "work"
    device = "auto" if opts.get("allow_gpu", True) else "cpu"
    worker = TrainingWorker(workdir, device=device)
    db = TrainerDB(Path(home) / "trainer.db")
    trainer = Trainer(node, identity, ledger, audit, worker, db, workdir, options, chain_id)
    log.info("trainer %s (wallet %s) asks %d wei per unit%s", node.peer_id, identity.address,
             options.price_wei, "" if options.fault == "none" else f", fault {options.fault}")
    return trainer.role_parts()
