"""The client role: the job coordinator, as an explicit, restartable state machine.

A job moves through ``submitted → prepared → bidding → selected → escrowed → running →
finishing → done`` (or ``failed`` / ``cancelled``). Each step is in its own method below, reads
the durable :class:`~fedswarm.roles.client_db.JobRecord`, does its work and records the next
state; :meth:`ClientRole.drive` loops over the steps. A client killed at any point restarts
with the same home, finds the job in SQLite and resumes at the last recorded state; steps with
chain effects (escrow, settlement, completion) first ask the chain what is already done, so a
restart never pays twice.

All blocking work (dataset ingestion, encryption, boto3/httpx, web3, the training worker) runs
in threads via :func:`trio.to_thread.run_sync`; the event loop only coordinates.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from fedswarm import crypto
from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity
from fedswarm.learning.chunks import Preprocessing
from fedswarm.p2p.node import Node, Rejected, RpcError
from fedswarm.protocol.job import (
    Ack,
    Bid,
    BidAck,
    ChunkRef,
    JobAnnounce,
    JobFinished,
    RoundResult,
    UnitAccepted,
    UnitDone,
    UnitFailed,
    WorkUnit,
)
from fedswarm.protocol.messages import Role
from fedswarm.protocol.topics import MARKET_TOPIC, job_topic
from fedswarm.roles.client_db import (
    TERMINAL,
    ClientDB,
    JobRecord,
    JobTerms,
    RoundRecord,
    UnitRecord,
)

log = logging.getLogger("fedswarm.client")
T = TypeVar("T")
URL_TTL_SLACK_S = 600  # presigned URLs outlive the round deadline by this much


class SubmitError(ValueError):
    """A submission was refused before anything was spent; the message says why (one line)."""


class JobFailed(Exception):
    """The job cannot go on; the message is recorded as the job's error."""


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` off the event loop (boto3, web3, torch, file I/O)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=False)


def new_job_id() -> str:
    return "job-" + secrets.token_hex(6)


class ClientRole:
    """The job coordinator of one client node (built by :func:`build_client`)."""

    def __init__(self, node: Node, settings: Settings, home: Path, identity: Identity,
                 store: Any, ledger: Any, audit: Any) -> None:
        self.node = node
        self.settings = settings
        self.home = home
        self.identity = identity
        self.store = store
        self.ledger = ledger
        self.audit = audit
        self.db = ClientDB(home / "client.sqlite")
        self._worker: Any = None
        self._worker_lock = trio.Lock()
        self._bids: dict[str, dict[str, Bid]] = {}
        self._announces: dict[str, JobAnnounce] = {}
        self._inbox: dict[str, tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]] = {}
        self._cancel_requested: set[str] = set()
        self._running: set[str] = set()
        self._strategies: dict[str, Any] = {}
        # Update vectors loaded (downloaded, hash-checked, decrypted) for a round's checks,
        # reused by aggregation; keyed by (job, round, unit), dropped once the round is checked.
        self._vectors: dict[tuple[str, int, int], np.ndarray] = {}
        node.on_rpc(Bid, self._on_bid)
        node.on_rpc(UnitDone, self._on_unit_event)
        node.on_rpc(UnitFailed, self._on_unit_event)

    # ---------------------------------------------------------------- submission (validation)

    async def submit(self, dataset_path: Path, model: dict[str, Any], terms: JobTerms,
                     name: str = "", initial_weights: Path | None = None) -> str:
        """Validate a job (dry run on a few rows, model budget) and queue it. Nothing is spent
        here; errors raise :class:`SubmitError` with a one-line reason."""
        job_id = new_job_id()
        workdir = self.job_dir(job_id)
        num_features = await in_thread(_validate_submission, dataset_path, terms)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            num_params = await _check_model(model, num_features, terms.batch_size, initial_weights, workdir)
        except SubmitError:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)  # a refused submission leaves nothing behind
            raise
        if initial_weights is not None:
            (workdir / "global-0.safetensors").write_bytes(Path(initial_weights).read_bytes())
        job = JobRecord(job_id=job_id, terms=terms, model=model, dataset_path=str(dataset_path),
                        dataset_name=name or Path(dataset_path).name, num_params=num_params)
        self._event(job, f"submitted: {terms.trainers} trainers, {terms.rounds} rounds, strategy {terms.strategy}")
        self.db.put_job(job)
        self.start(job_id)
        return job_id

    def start(self, job_id: str) -> None:
        if job_id not in self._running:
            self._running.add(job_id)
            self.node.nursery.start_soon(self.drive, job_id)

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def request_cancel(self, job_id: str) -> JobRecord:
        job = self._job(job_id)
        if job.state in TERMINAL:
            raise Rejected(f"job {job_id} is already {job.state}")
        self._cancel_requested.add(job_id)
        return job

    # ---------------------------------------------------------------- the state machine

    async def drive(self, job_id: str) -> None:
        """Run job ``job_id`` from its recorded state to a terminal one."""
        steps = {
            "submitted": self.prepare,
            "prepared": self.collect_bids,
            "bidding": self.collect_bids,
            "selected": self.escrow,
            "escrowed": self.run_rounds,
            "running": self.run_rounds,
            "finishing": self.finish,
        }
        try:
            while True:
                job = self._job(job_id)
                if job.state in TERMINAL:
                    return
                if job_id in self._cancel_requested:
                    await self.cancel(job)
                    return
                try:
                    await steps[job.state](job)
                except JobFailed as exc:
                    await self._fail(job_id, str(exc))
                    return
                except Exception as exc:
                    log.exception("job %s failed in state %s", job_id, job.state)
                    await self._fail(job_id, f"internal error in {job.state}: {type(exc).__name__}: {exc}"[:300])
                    return
        finally:
            self._running.discard(job_id)

    async def prepare(self, job: JobRecord) -> None:
        """Split, encrypt and upload the dataset; make the initial weights; open the audit topic."""
        workdir = self.job_dir(job.job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        secret = crypto.new_job_secret()
        self.db.put_secret(job.job_id, secret)
        prepared = await in_thread(_prepare_dataset, job, workdir)
        job.preprocessing = prepared.preprocessing.model_dump(mode="json")
        job.validation_path = str(prepared.validation_path)
        job.train_rows = prepared.train_rows
        job.chunks = await in_thread(self._upload_chunks, job, secret, prepared.chunks)
        if not (workdir / "global-0.safetensors").exists():
            await _write_initial_weights(job.model, job.terms.seed, workdir)
        job.audit_topic = await in_thread(self.audit.create_topic, f"fedswarm job {job.job_id}")
        await in_thread(self._upload_manifest, job, prepared)
        job.state = "prepared"
        self._event(job, f"prepared: {prepared.train_rows} training rows in {len(job.chunks)} encrypted chunks, "
                         f"{prepared.validation_rows} validation rows kept")
        self.db.put_job(job)
        await self._audit(job, {"state": "prepared", "chunks": len(job.chunks)})

    async def collect_bids(self, job: JobRecord) -> None:
        """Announce the job on the market topic and pick trainers from the signed bids."""
        from fedswarm.market.selection import JobRequirements, SelectionError, make_policy

        terms = job.terms
        job.state = "bidding"
        self.db.put_job(job)
        self._bids[job.job_id] = {}
        self._check_asking_prices(job)
        await self.node.subscribe(job_topic(job.job_id), self._on_job_topic)
        wanted = terms.trainers + terms.standby
        chain_id = await in_thread(self.ledger.get_chain_id)
        # Up to three windows: trainers that were busy, slow or just joining get another chance
        # before the job fails for want of trainers (nothing has been spent yet).
        for window in range(3):
            deadline = time.time() + terms.bid_window_s
            announce = JobAnnounce(
                job_id=job.job_id, client_peer_id=self.node.peer_id, trainers=terms.trainers,
                standby=terms.standby, rounds=terms.rounds, price_cap_wei=terms.price_cap_wei,
                min_ram_mb=min_ram_mb(job.num_params), model_params=job.num_params,
                train_rows=job.train_rows, bid_deadline=deadline, chain_id=chain_id,
                contract=self.ledger.contract_address, audit_topic=job.audit_topic or "0.0.0",
                client_addrs=self.node.addrs[:16],
            )
            self._announces[job.job_id] = announce
            started = time.time()
            # Re-announce while the window is open: a trainer that connects late still hears it.
            while time.time() < deadline:
                await self.node.publish(MARKET_TOPIC, announce)
                if len(self._bids[job.job_id]) >= wanted and time.time() - started > 1.0:
                    break
                await trio.sleep(min(1.0, max(0.05, deadline - time.time())))
            got = len(self._bids[job.job_id])
            if got >= wanted or (got >= terms.trainers and window >= 1):
                break
            self._event(job, f"bidding: {got} of {wanted} bids after window {window + 1}; announcing again")
            self.db.put_job(job)
        bids = list(self._bids[job.job_id].values())
        reputation = await in_thread(self._reputation)
        req = JobRequirements(trainers=terms.trainers, standby=terms.standby,
                              price_cap_wei=terms.price_cap_wei, min_ram_mb=announce.min_ram_mb)
        try:
            selection = make_policy("cheapest").select(bids, req, reputation)
        except SelectionError as exc:
            raise JobFailed(f"no trainers: {exc}") from None
        job.chosen = [b.model_dump(mode="json") for b in selection.chosen]
        job.standby = [b.model_dump(mode="json") for b in selection.standby]
        job.state = "selected"
        self._event(job, f"selected {len(job.chosen)} trainers (+{len(job.standby)} standby) from {len(bids)} bids")
        self.db.put_job(job)

    def _check_asking_prices(self, job: JobRecord) -> None:
        """Fail fast, before any announcement, when the cap is below what trainers ask: they
        would not bid, and the user should hear the price rather than "no bids"."""
        asks = sorted(r.price_wei for r in self.node.directory.records(role=Role.TRAINER)
                      if r.price_wei is not None)
        cap = job.terms.price_cap_wei
        if len(asks) >= job.terms.trainers and sum(a <= cap for a in asks) < job.terms.trainers:
            raise JobFailed(f"price cap {cap} wei is below what the online trainers ask "
                            f"(cheapest {asks[0]} wei; {sum(a <= cap for a in asks)} of {len(asks)} within the cap); "
                            f"raise the cap to at least {asks[job.terms.trainers - 1]} wei")

    async def escrow(self, job: JobRecord) -> None:
        """Fund the job on the contract and register the selected trainers (idempotent)."""
        from fedswarm.ledger.contract import JobStatus
        from fedswarm.ledger.evm import job_id_from

        quote = self._quote(job)
        jid = job_id_from(job.job_id)
        info = await in_thread(self.ledger.job, jid)
        if info.status == JobStatus.NONE:
            deadline = int(time.time() + job.terms.rounds * job.terms.round_deadline_s * 3 + 3600)
            spec_hash = bytes.fromhex(crypto.sha256_bytes(json.dumps(job.model, sort_keys=True).encode()))
            receipt = await in_thread(self.ledger.create_job, jid, spec_hash, deadline,
                                      job.terms.settle_window_s, quote.total_wei)
            job.escrow_tx = receipt.tx_hash
        addrs, prices, max_units = quote.add_trainers_args()
        missing = []
        for addr, price, units in zip(addrs, prices, max_units, strict=True):
            if not (await in_thread(self.ledger.trainer, jid, addr)).registered:
                missing.append((addr, price, units))
        if missing:  # a restart between createJob and addTrainers registers the rest only
            await in_thread(self.ledger.add_trainers, jid, [m[0] for m in missing],
                            [m[1] for m in missing], [m[2] for m in missing])
        job.deposited_wei = quote.total_wei
        job.state = "escrowed"
        self._event(job, f"escrowed {quote.total_wei} wei for {len(quote.trainers)} trainers")
        self.db.put_job(job)
        await self._audit(job, {"state": "escrowed", "wei": quote.total_wei})

    async def run_rounds(self, job: JobRecord) -> None:
        job.state = "running"
        self.db.put_job(job)
        while job.current_round < job.terms.rounds:
            if job.job_id in self._cancel_requested:
                return
            await self.run_round(job, job.current_round)
            job = self._job(job.job_id)
            job.current_round += 1
            self.db.put_job(job)
        job.state = "finishing"
        self.db.put_job(job)

    async def finish(self, job: JobRecord) -> None:
        """Encrypt the final weights to the user's key, upload, record on chain, refund."""
        from fedswarm.ledger.contract import JobStatus
        from fedswarm.ledger.evm import job_id_from

        workdir = self.job_dir(job.job_id)
        final = workdir / f"global-{job.terms.rounds}.safetensors"
        user_box = job.terms.user_box_public or self.identity.box_public_hex
        key = f"jobs/{job.job_id}/result.safetensors.enc"

        def upload() -> tuple[str, int]:
            enc = crypto.encrypt_to_box(final.read_bytes(), user_box, job.job_id, "result")
            self.store.put(key, enc)
            return crypto.sha256_bytes(enc), len(enc)

        sha, size = await in_thread(upload)
        jid = job_id_from(job.job_id)
        info = await in_thread(self.ledger.job, jid)
        if info.status == JobStatus.OPEN and job.terms.fault != "never-settle":
            pointer = json.dumps({"key": key, "sha256": sha, "size": size}, separators=(",", ":")).encode()
            await in_thread(self.ledger.complete_job, jid, pointer)
        if await in_thread(self.ledger.pending, self.identity.address) > 0:
            await in_thread(self.ledger.withdraw)
        job.result_key, job.result_sha256 = key, sha
        rounds = self.db.rounds(job.job_id)
        job.final_metrics = rounds[-1].metrics if rounds else {}
        job.state = "done"
        self._event(job, f"done: final accuracy {job.final_metrics.get('accuracy', float('nan')):.4f}")
        self.db.put_job(job)
        await self.node.publish(job_topic(job.job_id), JobFinished(job_id=job.job_id, state="done"))
        await self.node.publish(MARKET_TOPIC, JobFinished(job_id=job.job_id, state="done"))
        await self._audit(job, {"state": "done", "metrics": job.final_metrics})

    async def cancel(self, job: JobRecord) -> None:
        """Stop a job: before escrow nothing to undo; after, cancel (no commits) or complete
        early, which refunds everything not owed to trainers."""
        from fedswarm.ledger.contract import JobStatus
        from fedswarm.ledger.evm import job_id_from

        jid = job_id_from(job.job_id)
        info = await in_thread(self.ledger.job, jid)
        if info.status == JobStatus.OPEN:
            if info.commits == 0:
                await in_thread(self.ledger.cancel_job, jid)
            else:
                await in_thread(self.ledger.complete_job, jid, b"cancelled")
            if await in_thread(self.ledger.pending, self.identity.address) > 0:
                await in_thread(self.ledger.withdraw)
        job = self._job(job.job_id)
        job.state = "cancelled"
        self._event(job, "cancelled by the user")
        self.db.put_job(job)
        self._cancel_requested.discard(job.job_id)
        await self.node.publish(job_topic(job.job_id), JobFinished(job_id=job.job_id, state="cancelled"))

    # ---------------------------------------------------------------- one round

    async def run_round(self, job: JobRecord, r: int) -> None:
        """Assign, collect (reassigning missing or failed units), check, aggregate, settle."""
        rnd = self.db.get_round(job.job_id, r)
        if rnd is None:
            rnd = RoundRecord(job_id=job.job_id, round=r, deadline=time.time() + job.terms.round_deadline_s)
            self.db.put_round(rnd)
        if rnd.state == "settled":
            return
        global_path = self.job_dir(job.job_id) / f"global-{r}.safetensors"
        global_ref = await in_thread(self._upload_global, job, r, global_path)
        inbox = self._inbox_for(job.job_id)
        if not self.db.units(job.job_id, r):
            async with trio.open_nursery() as n:
                for slot, bid in enumerate(job.chosen):
                    n.start_soon(self._assign, job, r, slot, bid, slot, global_ref, rnd.deadline)
        else:
            self._event(job, f"round {r}: resumed after a restart")

        if rnd.state == "open":
            await self._collect(job, r, rnd, global_ref, inbox)
            await self._check_and_aggregate(job, r, rnd, global_path, global_ref, inbox)
        await self._settle(job, r)

    async def _assign(self, job: JobRecord, r: int, slot: int, bid: dict[str, Any], unit: int,
                      global_ref: dict[str, Any], deadline: float) -> UnitRecord:
        """Send one work unit to a trainer; the record says whether it took it."""
        update_key = f"jobs/{job.job_id}/updates/{r}/{unit}.enc"
        rec = UnitRecord(job_id=job.job_id, round=r, unit=unit, slot=slot, trainer_peer=bid["peer_id"],
                         trainer_address=bid["address"], price_wei=bid["price_wei"], update_key=update_key)
        self.db.put_unit(rec)
        try:
            wu = await in_thread(self._work_unit, job, r, slot, unit, bid, global_ref, deadline, update_key)
            await self.node.request(bid["peer_id"], wu, expect=(UnitAccepted,), timeout=15)
            rec.state = "accepted"
        except (RpcError, Rejected) as exc:
            rec.state, rec.reason = "failed", f"assignment failed: {exc}"[:300]
        self.db.put_unit(rec)
        await self._audit(job, {"state": "assigned", "round": r, "unit": unit, "trainer": bid["peer_id"],
                                "ok": rec.state == "accepted"})
        return rec

    def _work_unit(self, job: JobRecord, r: int, slot: int, unit: int, bid: dict[str, Any],
                   global_ref: dict[str, Any], deadline: float, update_key: str) -> WorkUnit:
        secret = self.db.get_secret(job.job_id)
        ttl = int(deadline - time.time() + URL_TTL_SLACK_S)
        chunk = job.chunks[slot % len(job.chunks)]
        chunk_key = crypto.derive_chunk_key(secret, job.job_id, chunk["chunk_id"])
        global_key = crypto.derive_chunk_key(secret, job.job_id, f"global-{r}")
        import base64

        def seal(key: bytes) -> str:
            return base64.b64encode(crypto.seal_key(key, bid["box_public"])).decode()

        max_update = int(job.num_params * 4 * 1.1) + (2 << 20)
        return WorkUnit(
            job_id=job.job_id, round=r, unit=unit, model=job.model,
            preprocessing=Preprocessing.model_validate(job.preprocessing),
            global_url=self.store.presign_get(global_ref["key"], ttl), global_sha256=global_ref["sha256"],
            global_size=global_ref["size"], global_sealed_key=seal(global_key),
            chunks=[ChunkRef(chunk_id=chunk["chunk_id"], url=self.store.presign_get(chunk["key"], ttl),
                             sha256=chunk["sha256"], size=chunk["size"], rows=chunk["rows"],
                             sealed_key=seal(chunk_key))],
            epochs=job.terms.local_epochs, batch_size=job.terms.batch_size, lr=job.terms.lr,
            seed=unit_seed(job.terms.seed, r, slot), fedprox_mu=self._fedprox_mu(job), mode=job.terms.mode,
            deadline=deadline, put_url=self.store.presign_put(update_key, ttl, max_update),
            put_max_bytes=max_update, client_box_public=self.identity.box_public_hex,
            audit_topic=job.audit_topic or "0.0.0",
        )

    async def _collect(self, job: JobRecord, r: int, rnd: RoundRecord, global_ref: dict[str, Any],
                       inbox: trio.MemoryReceiveChannel[Any]) -> None:
        """Wait for every slot's update; reassign a slot whose trainer failed or vanished."""
        from fedswarm.ledger.evm import job_id_from

        jid = job_id_from(job.job_id)
        last_chain_poll = 0.0
        while True:
            units = self.db.units(job.job_id, r)
            if self._round_complete(job, units) or time.time() >= rnd.deadline:
                return
            with trio.move_on_after(0.25):
                event = await inbox.receive()
                await self._apply_unit_event(job, r, event)
            # A client that restarted (or missed a notification) learns commits from the chain.
            if time.time() - last_chain_poll > 2.0:
                last_chain_poll = time.time()
                await self._poll_commits(job, r, jid)
            await self._reassign_lost(job, r, rnd, global_ref)

    def _round_complete(self, job: JobRecord, units: list[UnitRecord]) -> bool:
        done_slots = {u.slot for u in units if u.state in ("delivered", "checked") and u.verdict != "rejected"}
        return len(done_slots) >= len(job.chosen)

    async def _apply_unit_event(self, job: JobRecord, r: int, event: tuple[str, Any]) -> None:
        sender, msg = event
        if msg.round != r:
            return
        rec = next((u for u in self.db.units(job.job_id, r) if u.unit == msg.unit), None)
        if rec is None or rec.trainer_peer != sender or rec.state in ("delivered", "checked"):
            return
        if isinstance(msg, UnitDone):
            rec.state, rec.update_sha256 = "delivered", msg.update_sha256
            rec.num_samples, rec.train_loss, rec.seconds = msg.num_samples, msg.train_loss, msg.seconds
        else:
            rec.state, rec.reason = "failed", f"trainer gave up: {msg.reason}"[:300]
        self.db.put_unit(rec)

    async def _poll_commits(self, job: JobRecord, r: int, jid: bytes) -> None:
        from fedswarm.ledger.contract import UnitStatus

        for rec in self.db.units(job.job_id, r):
            if rec.state in ("delivered", "checked"):
                continue
            info = await in_thread(self.ledger.unit, jid, r, rec.unit)
            if info.status != UnitStatus.NONE and info.trainer.lower() == rec.trainer_address.lower():
                rec.state, rec.update_sha256 = "delivered", info.update_hash.hex()
                rec.num_samples = rec.num_samples or job.chunks[rec.slot % len(job.chunks)]["rows"]
                self.db.put_unit(rec)

    async def _reassign_lost(self, job: JobRecord, r: int, rnd: RoundRecord, global_ref: dict[str, Any]) -> None:
        """A unit whose trainer failed, refused or went silent goes to a standby (or another
        healthy trainer) within the round, under a new unit number."""
        units = self.db.units(job.job_id, r)
        for rec in units:
            if rec.state in ("assigned", "accepted"):
                peer = self.node.directory.get(rec.trainer_peer)
                if peer is None or not self.node.directory.is_online(peer):
                    rec.state, rec.reason = "lost", "trainer went silent"
                    self.db.put_unit(rec)
        units = self.db.units(job.job_id, r)
        covered = {u.slot for u in units if u.state not in ("failed", "lost") and u.verdict != "rejected"}
        for slot in range(len(job.chosen)):
            if slot in covered or time.time() > rnd.deadline - 2:
                continue
            bid = self._pick_replacement(job, units)
            if bid is None:
                continue
            unit = max(max(u.unit for u in units) + 1, len(job.chosen))
            rnd.reassigned += 1
            self.db.put_round(rnd)
            self._event(job, f"round {r}: slot {slot} reassigned to {bid['peer_id'][:16]}… as unit {unit}")
            await self._assign(job, r, slot, bid, unit, global_ref, rnd.deadline)
            units = self.db.units(job.job_id, r)

    def _pick_replacement(self, job: JobRecord, units: list[UnitRecord]) -> dict[str, Any] | None:
        failed = {u.trainer_peer for u in units if u.state in ("failed", "lost") or u.verdict == "rejected"}
        busy = {u.trainer_peer for u in units if u.state in ("assigned", "accepted")}
        # The escrow reserves `rounds` units per trainer (chosen and standby alike): a trainer
        # takes an extra unit only if it keeps one for each of its own remaining slots, or
        # its commit would revert (MaxUnitsReached) in a later round.
        r = units[0].round if units else 0
        taken: dict[str, int] = {}
        for u in self.db.units(job.job_id):
            if u.state not in ("failed", "lost"):
                taken[u.trainer_peer] = taken.get(u.trainer_peer, 0) + 1
        chosen_ids = {b["peer_id"] for b in job.chosen}
        for bid in [*job.standby, *job.chosen]:
            peer = self.node.directory.get(bid["peer_id"])
            if bid["peer_id"] in failed or bid["peer_id"] in busy:
                continue
            own_left = job.terms.rounds - r - 1 if bid["peer_id"] in chosen_ids else 0
            if taken.get(bid["peer_id"], 0) + own_left >= job.terms.rounds:
                continue
            if peer is not None and self.node.directory.is_online(peer):
                return bid
        return None

    async def _check_and_aggregate(self, job: JobRecord, r: int, rnd: RoundRecord, global_path: Path,
                                   global_ref: dict[str, Any], inbox: trio.MemoryReceiveChannel[Any]) -> None:
        """Check every delivered update; reassign rejected slots once if time allows; aggregate
        the accepted ones, evaluate on the held-out split and save the next global weights."""
        for attempt in range(2):
            report = await self._check_units(job, r, global_path)
            rejected_slots = [u for u in self.db.units(job.job_id, r) if u.verdict == "rejected"]
            if attempt == 1 or not rejected_slots or time.time() > rnd.deadline - 5:
                break
            await self._reassign_lost(job, r, rnd, global_ref)
            await self._collect(job, r, rnd, global_ref, inbox)
        del report
        units = [u for u in self.db.units(job.job_id, r) if u.verdict == "accepted"]
        next_path = self.job_dir(job.job_id) / f"global-{r + 1}.safetensors"
        metrics = await self._aggregate(job, global_path, next_path, units)
        all_units = self.db.units(job.job_id, r)
        rnd.metrics = metrics
        rnd.accepted = sum(1 for u in all_units if u.verdict == "accepted")
        rnd.rejected = sum(1 for u in all_units if u.verdict == "rejected")
        rnd.state, rnd.finished = "checked", time.time()
        self.db.put_round(rnd)
        self._event(job, f"round {r}: {rnd.accepted} accepted, {rnd.rejected} rejected, "
                         f"val accuracy {metrics.get('accuracy', float('nan')):.4f}, loss {metrics.get('loss', float('nan')):.4f}")

    async def _check_units(self, job: JobRecord, r: int, global_path: Path) -> Any:
        from fedswarm.learning.checks import CheckConfig, check_round

        pending = [u for u in self.db.units(job.job_id, r) if u.state == "delivered"]
        if not pending:
            return None
        loaded = await in_thread(self._load_updates, job, r, pending)
        layout, gvec = await in_thread(_load_flat, global_path)
        updates = {str(u.unit): vec for u, vec in loaded if vec is not None}
        for u, vec in loaded:
            if vec is not None:
                self._vectors[(job.job_id, r, u.unit)] = vec
            if vec is None:
                u.state, u.verdict = "checked", "rejected"
                self.db.put_unit(u)
        if not updates:
            return None
        by_id = {str(u.unit): u for u, _ in loaded}
        secret = self.db.get_secret(job.job_id)
        worker = await self._get_worker()

        def evaluate(params: np.ndarray) -> float:
            return _evaluate_params(worker, job, layout, params, self.job_dir(job.job_id))["loss"]

        def reexecute(unit_id: str) -> np.ndarray:
            u = by_id[unit_id]
            return _reexecute(worker, job, global_path, u, self.job_dir(job.job_id))

        if job.terms.mode == "noop":
            # Benchmark mode: trainers hand back the global weights on purpose, so the
            # unchanged-weights check would reject everyone. Hash, decryption and layout
            # were still checked when the update was loaded.
            for uid in updates:
                u = by_id[uid]
                u.state, u.verdict, u.reason = "checked", "accepted", "noop mode: loaded and verified"
                self.db.put_unit(u)
            return None
        config = CheckConfig(reexec_fraction=job.terms.reexec_fraction if job.terms.mode == "train" else 0.0,
                             loss_rel_tolerance=job.terms.loss_tolerance, loss_abs_tolerance=0.01)
        report = await self._locked(lambda: check_round(
            gvec, updates, round_index=r, secret=secret, config=config,
            evaluate=evaluate if job.terms.mode == "train" else None, reexecute=reexecute,
            num_samples={k: max(1, by_id[k].num_samples) for k in updates},
        ))
        for uid, unit_report in report.units.items():
            u = by_id[uid]
            verdict = unit_report.verdict
            u.state, u.verdict = "checked", "accepted" if verdict.accepted else "rejected"
            u.reason = verdict.reason[:300]
            self.db.put_unit(u)
            if not verdict.accepted:
                self._event(job, f"round {r}: unit {u.unit} from {u.trainer_peer[:16]}… rejected: {verdict.reason}")
                await self._audit(job, {"state": "rejected", "round": r, "unit": u.unit, "reason": verdict.reason})
        return report

    def _load_updates(self, job: JobRecord, r: int, units: list[UnitRecord]) -> list[tuple[UnitRecord, np.ndarray | None]]:
        """Download, check against the on-chain hash, decrypt and flatten each update."""
        import io

        from fedswarm.learning.weights import flatten_state, load_weights_bytes
        from fedswarm.ledger.evm import job_id_from

        jid = job_id_from(job.job_id)
        layout, _ = _load_flat(self.job_dir(job.job_id) / f"global-{r}.safetensors")
        out: list[tuple[UnitRecord, np.ndarray | None]] = []
        for u in units:
            try:
                buf = io.BytesIO()
                self.store.get(u.update_key, buf)
                data = buf.getvalue()
                onchain = self.ledger.unit(jid, r, u.unit).update_hash.hex()
                if crypto.sha256_bytes(data) != onchain:
                    raise ValueError("update does not match the hash committed on chain")
                plain = crypto.decrypt_from_box(data, self.identity.box_key, job.job_id, f"update-{r}-{u.unit}")
                state = load_weights_bytes(plain, expected=layout)
                vec, _ = flatten_state(state)
                out.append((u, vec))
            except Exception as exc:
                u.reason = f"unusable update: {exc}"[:300]
                out.append((u, None))
        return out

    async def _aggregate(self, job: JobRecord, global_path: Path, next_path: Path,
                         units: list[UnitRecord]) -> dict[str, float]:
        from fedswarm.learning.strategies import make_strategy

        strategy = self._strategies.get(job.job_id)
        if strategy is None:
            params = {k: v for k, v in job.terms.strategy_params.items()}
            strategy = self._strategies[job.job_id] = make_strategy(job.terms.strategy, **params)
        vecs = await in_thread(self._load_accepted, job, units)
        layout, gvec = await in_thread(_load_flat, global_path)
        if vecs:
            new = await in_thread(strategy.aggregate, gvec, [v for v, _ in vecs], [n for _, n in vecs])
        else:
            new = gvec
        await in_thread(_save_flat, next_path, layout, new)
        worker = await self._get_worker()
        return await self._locked(lambda: _evaluate_params(worker, job, layout, new, self.job_dir(job.job_id)))

    def _load_accepted(self, job: JobRecord, units: list[UnitRecord]) -> list[tuple[np.ndarray, int]]:
        """Accepted updates with their sample counts: the vectors the checks already loaded,
        or (after a client restart between check and aggregation) loaded again."""
        missing = [u for u in units if (job.job_id, u.round, u.unit) not in self._vectors]
        if missing:
            for u, vec in self._load_updates(job, missing[0].round, missing):
                if vec is not None:
                    self._vectors[(job.job_id, u.round, u.unit)] = vec
        out = [(self._vectors[(job.job_id, u.round, u.unit)], max(1, u.num_samples))
               for u in units if (job.job_id, u.round, u.unit) in self._vectors]
        for key in [k for k in self._vectors if k[0] == job.job_id]:
            del self._vectors[key]  # the round is aggregated: free the memory
        return out

    async def _settle(self, job: JobRecord, r: int) -> None:
        """Pay accepted units, reject the rest with the reason hash (skipping what the chain
        already settled, so a restarted client never settles twice)."""
        from fedswarm.learning.checks import Verdict, reason_hash
        from fedswarm.ledger.contract import UnitStatus
        from fedswarm.ledger.evm import job_id_from

        rnd = self.db.get_round(job.job_id, r)
        assert rnd is not None
        jid = job_id_from(job.job_id)
        units, accepted, reasons = [], [], []
        for u in self.db.units(job.job_id, r):
            info = await in_thread(self.ledger.unit, jid, r, u.unit)
            if info.status != UnitStatus.COMMITTED:
                continue
            ok = u.verdict == "accepted"
            units.append(u.unit)
            accepted.append(ok)
            reasons.append(bytes(32) if ok else reason_hash(Verdict(False, u.reason or "rejected", "client")))
        if units and job.terms.fault != "never-settle":
            receipt = await in_thread(self.ledger.settle, jid, r, units, accepted, reasons)
            rnd.settle_tx = receipt.tx_hash
        rnd.state, rnd.settled = "settled", time.time()
        self.db.put_round(rnd)
        await self.node.publish(job_topic(job.job_id), RoundResult(
            job_id=job.job_id, round=r, val_loss=rnd.metrics.get("loss"),
            val_accuracy=rnd.metrics.get("accuracy"), accepted=rnd.accepted, rejected=rnd.rejected))
        await self._audit(job, {"state": "round_settled", "round": r, "accepted": rnd.accepted,
                                "rejected": rnd.rejected, "metrics": rnd.metrics})

    # ---------------------------------------------------------------- RPC handlers

    async def _on_bid(self, sender: str, bid: Bid, blob: bytes | None) -> tuple[Any, bytes | None]:
        from fedswarm.market.bids import BidError, verify_bid

        announce = self._announces.get(bid.job_id)
        if announce is None or bid.job_id not in self._bids:
            raise Rejected(f"job {bid.job_id} is not taking bids")
        if time.time() > announce.bid_deadline + 1.0:
            raise Rejected("the bid window is closed")
        try:
            verify_bid(bid, expected_peer_id=sender, job_id=bid.job_id)
        except BidError as exc:
            raise Rejected(f"bid refused: {exc}", code="forbidden") from None
        self._bids[bid.job_id][sender] = bid
        return BidAck(job_id=bid.job_id, received=True), None

    async def _on_unit_event(self, sender: str, msg: UnitDone | UnitFailed, blob: bytes | None) -> tuple[Any, bytes | None]:
        job = self.db.get_job(msg.job_id)
        if job is None or job.state in TERMINAL:
            raise Rejected(f"unknown or finished job {msg.job_id}", code="not_found")
        units = [u for u in self.db.units(msg.job_id, msg.round) if u.unit == msg.unit]
        if not units or units[0].trainer_peer != sender:
            raise Rejected("this unit was not assigned to you", code="forbidden")
        send, _ = self._inbox_pair(msg.job_id)
        await send.send((sender, msg))
        return Ack(), None

    async def _on_job_topic(self, sender: str, msg: Any) -> None:
        return None  # the client only publishes on its job topics

    # ---------------------------------------------------------------- helpers

    def _inbox_pair(self, job_id: str) -> tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]:
        if job_id not in self._inbox:
            self._inbox[job_id] = trio.open_memory_channel[Any](1024)
        return self._inbox[job_id]

    def _inbox_for(self, job_id: str) -> trio.MemoryReceiveChannel[Any]:
        return self._inbox_pair(job_id)[1]

    def _job(self, job_id: str) -> JobRecord:
        job = self.db.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _event(self, job: JobRecord, text: str) -> None:
        job.events.append({"ts": time.time(), "msg": text})
        del job.events[:-200]
        log.info("%s: %s", job.job_id, text)

    async def _fail(self, job_id: str, reason: str) -> None:
        job = self._job(job_id)
        job.state, job.error = "failed", reason
        self._event(job, f"failed: {reason}")
        self.db.put_job(job)
        try:
            await self.node.publish(job_topic(job_id), JobFinished(job_id=job_id, state="failed"))
            await self._audit(job, {"state": "failed", "reason": reason})
        except Exception:
            log.debug("could not announce the failure of %s", job_id, exc_info=True)

    async def _audit(self, job: JobRecord, entry: dict[str, Any]) -> None:
        if not job.audit_topic:
            return
        body = {"v": 1, "peer": self.node.peer_id, "role": "client", "job": job.job_id, "ts": round(time.time(), 3), **entry}
        try:
            await in_thread(self.audit.submit, job.audit_topic, body)
        except Exception as exc:  # the audit trail must never stop a job
            log.warning("audit submit failed for %s: %s", job.job_id, exc)

    async def _get_worker(self) -> Any:
        if self._worker is None:
            from fedswarm.learning.worker import TrainingWorker

            self._worker = TrainingWorker(self.home / "work", device="cpu")
            await in_thread(self._worker.start)
        return self._worker

    async def _locked(self, fn: Callable[[], T]) -> T:
        async with self._worker_lock:
            return await in_thread(fn)

    def _fedprox_mu(self, job: JobRecord) -> float:
        if job.terms.strategy == "fedprox":
            return float(job.terms.strategy_params.get("proximal_mu", 0.01))
        return 0.0

    def _quote(self, job: JobRecord) -> Any:
        from fedswarm.market.pricing import quote
        from fedswarm.market.selection import Selection

        selection = Selection(chosen=[Bid.model_validate(b) for b in job.chosen],
                              standby=[Bid.model_validate(b) for b in job.standby], rejected=[])
        return quote(selection, job.terms.rounds, reassign_reserve_units=job.terms.rounds)

    def _reputation(self) -> dict[str, Any]:
        from fedswarm.market.reputation import reputation_from_events

        try:
            events = self.ledger.read_events(self.home / "chain-cursor.json")
        except Exception as exc:
            log.warning("reputation unavailable (%s); treating every trainer as new", exc)
            return {}
        cache = self.home / "chain-events.jsonl"
        with cache.open("a") as fh:
            for ev in events:
                fh.write(json.dumps({"name": ev.name, "args": _jsonable(ev.args)}) + "\n")
        history = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        return reputation_from_events(history)

    def _upload_chunks(self, job: JobRecord, secret: bytes, chunks: list[Any]) -> list[dict[str, Any]]:
        out = []
        for c in chunks:
            key = crypto.derive_chunk_key(secret, job.job_id, c.chunk_id)
            enc = crypto.encrypt_bytes(Path(c.path).read_bytes(), key, job.job_id, c.chunk_id)
            obj = f"jobs/{job.job_id}/chunks/{c.chunk_id}.enc"
            self.store.put(obj, enc)
            out.append({"chunk_id": c.chunk_id, "key": obj, "sha256": crypto.sha256_bytes(enc),
                        "size": len(enc), "rows": c.rows, "path": str(c.path), "plain_size": c.size})
        return out

    def _upload_global(self, job: JobRecord, r: int, path: Path) -> dict[str, Any]:
        secret = self.db.get_secret(job.job_id)
        key = crypto.derive_chunk_key(secret, job.job_id, f"global-{r}")
        obj = f"jobs/{job.job_id}/global/{r}.enc"
        # Encryption is randomised, so re-uploading after a restart would change the hash that
        # earlier work units carry: upload once and remember the ciphertext's hash.
        meta = path.with_suffix(".ref.json")
        if meta.exists() and self.store.head(obj) is not None:
            return json.loads(meta.read_text())
        enc = crypto.encrypt_bytes(path.read_bytes(), key, job.job_id, f"global-{r}")
        self.store.put(obj, enc)
        ref = {"key": obj, "sha256": crypto.sha256_bytes(enc), "size": len(enc)}
        meta.write_text(json.dumps(ref))
        return ref

    def _upload_manifest(self, job: JobRecord, prepared: Any) -> None:
        from fedswarm.storage.manifest import ChunkEntry, DatasetSchema, Manifest, sign_manifest

        pre = prepared.preprocessing
        manifest = Manifest(
            job_id=job.job_id,
            chunks=[ChunkEntry(chunk_id=c["chunk_id"], object_key=c["key"], rows=c["rows"], plaintext_size=c["plain_size"],
                               ciphertext_size=c["size"], ciphertext_sha256=c["sha256"]) for c in job.chunks],
            data_schema=DatasetSchema(features=pre.features, label=pre.label, task=pre.task,
                                      num_classes=pre.num_classes),
            preprocessing=pre, train_rows=prepared.train_rows, validation_rows=prepared.validation_rows,
        )
        signed = sign_manifest(manifest, self.identity.key_pair())
        self.store.put(f"jobs/{job.job_id}/manifest.json", signed.to_json().encode())

    def resume_all(self) -> None:
        """Restart every unfinished job (after a client restart)."""
        for job in self.db.jobs():
            if job.state not in TERMINAL:
                self._event(job, f"client restarted; resuming from state {job.state}")
                self.db.put_job(job)
                if job.state in ("bidding",):
                    job.state = "prepared"  # bids lived in memory: ask again
                    self.db.put_job(job)
                self.start(job.job_id)


# -------------------------------------------------------------------- pure helpers


def min_ram_mb(num_params: int) -> int:
    """A trainer's memory floor for a model: weights, grads, optimiser state, activations."""
    return int(math.ceil(num_params * 4 * 6 / (1 << 20))) + 256


def unit_seed(job_seed: int, r: int, slot: int) -> int:
    """The seed of a unit: reproducible by the client for re-execution."""
    return (job_seed * 1_000_003 + r * 10_007 + slot) % (1 << 62)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return "0x" + obj.hex()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _validate_submission(dataset: Path, terms: JobTerms) -> int:
    """Dry-run the dataset (a few rows, same checks as ingestion) and the strategy before
    anything is spent; returns the number of features."""
    from fedswarm.learning.dataset import DatasetError, dry_run
    from fedswarm.learning.strategies import make_strategy

    if not Path(dataset).is_file():
        raise SubmitError(f"dataset {dataset} does not exist")
    try:
        dry = dry_run(dataset, terms.label, terms.features)
    except DatasetError as exc:
        raise SubmitError(str(exc)) from None
    try:
        make_strategy(terms.strategy, **terms.strategy_params)
    except (TypeError, ValueError) as exc:
        raise SubmitError(f"strategy: {exc}") from None
    return len(dry.features)


async def _model_tool(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "fedswarm.learning.modeltool", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)


async def _check_model(model: dict[str, Any], num_features: int, batch_size: int,
                       initial_weights: Path | None, workdir: Path) -> int:
    """Validate the model and dry-run it on the meta device (in a child process); returns
    its parameter count or raises :class:`SubmitError`."""
    spec_path = workdir / "model.json"
    spec_path.write_text(json.dumps(model))
    result = await _model_tool("check", str(spec_path), str(batch_size))
    try:
        report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SubmitError("the model could not be checked (its checker crashed)") from None
    if "error" in report:
        raise SubmitError(f"model rejected: {report['error']}")
    shape = report.get("input_shape") or []
    if len(shape) == 1 and shape[0] != num_features:
        raise SubmitError(f"model expects {shape[0]} input features, the dataset has {num_features}")
    if report.get("format") == "fedswarm-graph/1" and initial_weights is None:
        raise SubmitError("a fedswarm-graph/1 model needs its exported weights (weights.safetensors)")
    return int(report["params"])


def _prepare_dataset(job: JobRecord, workdir: Path) -> Any:
    from fedswarm.learning.dataset import DatasetError, prepare_dataset

    try:
        return prepare_dataset(job.dataset_path, workdir / "chunks", label=job.terms.label,
                               features=job.terms.features, num_chunks=job.terms.trainers,
                               validation_fraction=job.terms.validation_fraction, seed=job.terms.seed)
    except DatasetError as exc:
        raise JobFailed(str(exc)) from None


async def _write_initial_weights(model: dict[str, Any], seed: int, workdir: Path) -> None:
    """Seeded initial weights, made in a child process (torch stays out of the node)."""
    spec = workdir / "model.json"
    spec.write_text(json.dumps(model))
    result = await _model_tool("init", str(spec), str(seed), str(workdir / "global-0.safetensors"))
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise JobFailed(f"could not create the initial weights: {tail[0][:200]}")


def _load_flat(path: Path) -> tuple[Any, np.ndarray]:
    from fedswarm.learning.weights import flatten_state, load_weights_file

    vec, layout = flatten_state(load_weights_file(path))
    return layout, vec


def _save_flat(path: Path, layout: Any, vec: np.ndarray) -> None:
    from fedswarm.learning.weights import save_weights_file, unflatten_state

    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(3)}.safetensors")
    save_weights_file(tmp, unflatten_state(np.asarray(vec, dtype=np.float32), layout))
    tmp.replace(path)


def _evaluate_params(worker: Any, job: JobRecord, layout: Any, params: np.ndarray, workdir: Path) -> dict[str, float]:
    from fedswarm.learning.worker import EvalTask

    tmp = workdir / f"eval-{secrets.token_hex(4)}.safetensors"
    _save_flat(tmp, layout, params)
    try:
        return worker.evaluate(EvalTask(model=job.model, weights_path=str(tmp), chunk_paths=[job.validation_path],
                                        preprocessing=Preprocessing.model_validate(job.preprocessing)), 300)
    finally:
        tmp.unlink(missing_ok=True)


def _reexecute(worker: Any, job: JobRecord, global_path: Path, u: UnitRecord, workdir: Path) -> np.ndarray:
    """Train the unit ourselves with the trainer's exact inputs (seeded, deterministic on CPU)."""
    from fedswarm.learning.weights import flatten_state, load_weights_file
    from fedswarm.learning.worker import TrainTask

    chunk = job.chunks[u.slot % len(job.chunks)]
    task = TrainTask(model=job.model, weights_path=str(global_path), chunk_paths=[chunk["path"]],
                     preprocessing=Preprocessing.model_validate(job.preprocessing),
                     epochs=job.terms.local_epochs, batch_size=job.terms.batch_size, lr=job.terms.lr,
                     seed=unit_seed(job.terms.seed, u.round, u.slot), mode=job.terms.mode,
                     fedprox_mu=float(job.terms.strategy_params.get("proximal_mu", 0.0)) if job.terms.strategy == "fedprox" else 0.0)
    result = worker.train(task, 600)
    try:
        vec, _ = flatten_state(load_weights_file(result.update_path))
        return vec
    finally:
        Path(result.update_path).unlink(missing_ok=True)


async def build_client(node: Node, settings: Settings, home: Path, opts: dict[str, Any]) -> Any:
    """Wire the client role into a node: storage, ledger, audit log, job API and resume."""
    from fedswarm.api.jobs import job_parts
    from fedswarm.ledger.audit_factory import make_audit_log
    from fedswarm.ledger.factory import make_ledger
    from fedswarm.storage.factory import make_object_store

    identity = node.identity
    try:
        if settings.is_devnet:
            from fedswarm.devnet import ensure_funded

            await in_thread(ensure_funded, settings, identity.address, 50 * 10**18)
        store = await in_thread(make_object_store, settings)
        ledger = await in_thread(make_ledger, settings, identity)
        audit = await in_thread(make_audit_log, settings, identity)
    except ConfigError as exc:
        # Still a useful node (mesh, directory, API); jobs need storage and a ledger.
        log.warning("client runs without jobs: %s", exc)
        return _jobs_unavailable(str(exc))
    role = ClientRole(node, settings, home, identity, store, ledger, audit)
    assert node.role == Role.CLIENT
    return job_parts(role)


def _jobs_unavailable(reason: str) -> Any:
    from fastapi import APIRouter

    from fedswarm.api.app import ApiError
    from fedswarm.api.runtime import RoleParts

    router = APIRouter(prefix="/api/v1")

    @router.api_route("/jobs", methods=["GET", "POST"])
    @router.api_route("/jobs/{rest:path}", methods=["GET", "POST"])
    async def no_jobs(rest: str = "") -> None:
        raise ApiError(f"this client node cannot run jobs: {reason}", 503)

    return RoleParts(routers=[router], status=lambda: {"jobs_unavailable": reason})
