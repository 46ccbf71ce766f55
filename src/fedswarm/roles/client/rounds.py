"""Phase 4, rounds: for each round, assign work units, collect the updates (reassigning lost or
failed slots) and have them reviewed (:mod:`.review`).

A round is ``open`` while units are out, ``checked`` once aggregated (its verdicts are then in
the unit records) and ``settled`` once the background settler (:mod:`.settlement`) put every
verdict on chain. No chain transaction sits on a round's path: deliveries are receipted off
chain (:mod:`.exchange`) and the next round starts as soon as this one is checked. Every step
is recorded before the next, so a restarted client resumes the round where it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fedswarm.market.operator import sign_assignment
from fedswarm.p2p.node import Rejected, RpcError
from fedswarm.protocol.job import Ack, ChunkRef, UnitAccepted, UnitFailed, WorkUnit
from fedswarm.protocol.preprocessing import Preprocessing
from fedswarm.roles.client.bidding import units_registered
from fedswarm.roles.client.records import TERMINAL, JobRecord, RoundRecord, UnitRecord, UnitState
from fedswarm.roles.client.review import Review, global_path
from fedswarm.roles.client.services import ClientServices, JobFailed, in_thread
from fedswarm.roles.client.training import max_update_bytes, unit_training
from fedswarm.storage.sealed import JobObjects, StoredRef, seal, seal_key_b64

URL_TTL_SLACK_S = 600  # presigned URLs outlive the round deadline by this much
UnitEvent = tuple[str, UnitFailed | None]  # (sender peer, message); None: a unit's record changed
Inbox = trio.MemoryReceiveChannel[UnitEvent]


class Rounds:
    """Runs a job's rounds; ``checked(job, r)`` is called once a round is aggregated (it hands
    the verdicts to the settler and tells the trainers; it sends no transaction itself)."""

    def __init__(self, svc: ClientServices, review: Review,
                 checked: Callable[[JobRecord, int], Awaitable[None]],
                 cancel_requested: Callable[[str], bool]) -> None:
        self.svc = svc
        self.review = review
        self.checked = checked
        self.cancel_requested = cancel_requested
        self._inbox: dict[str, tuple[trio.MemorySendChannel[UnitEvent], Inbox]] = {}

    async def run_rounds(self, job: JobRecord) -> None:
        """Run the job's remaining rounds, then mark it ``finishing``."""
        db = self.svc.db
        job.state = "running"
        db.put_job(job)
        while job.current_round < job.terms.rounds:
            if self.cancel_requested(job.job_id):
                return
            await self.run_round(job, job.current_round)
            job = self.svc.job(job.job_id)
            job.current_round += 1
            db.put_job(job)
        job.state = "finishing"
        db.put_job(job)

    async def run_round(self, job: JobRecord, r: int) -> None:
        """Assign, collect (reassigning missing or failed units), check and aggregate."""
        svc = self.svc
        rnd = svc.db.get_round(job.job_id, r)
        if rnd is None:
            rnd = RoundRecord(job_id=job.job_id, round=r, deadline=time.time() + job.terms.round_deadline_s)
            svc.db.put_round(rnd)
        if rnd.state != "open":
            return
        global_ref = await in_thread(self._upload_global, job, r)
        inbox = self._inbox_pair(job.job_id)[1]
        if not svc.db.units(job.job_id, r):
            async with trio.open_nursery() as n:
                for slot, bid in enumerate(job.chosen):
                    n.start_soon(self._assign, job, r, slot, bid, slot, global_ref, rnd.deadline)
        else:
            svc.event(job, f"round {r}: resumed after a restart")
        async with trio.open_nursery() as early:
            # The likely reference is re-executed while the trainers work (off the round's path).
            early.start_soon(self.review.prepare_reference, job, r)
            await self._collect(job, r, rnd, global_ref, inbox)
        await self._review(job, r, rnd, global_ref, inbox)
        await self.checked(job, r)
        if not any(u.verdict == "accepted" for u in svc.db.units(job.job_id, r)):
            # Nobody left who delivers usable work: more rounds would only spend the deadline.
            raise JobFailed(f"round {r}: no trainer delivered a usable update (all failed, lost or rejected)")

    async def _review(self, job: JobRecord, r: int, rnd: RoundRecord, global_ref: StoredRef,
                      inbox: Inbox) -> None:
        """Check every delivered update; reassign rejected slots once if time allows; aggregate
        the accepted ones."""
        for attempt in range(2):
            self._reject_unopened(job, r)
            await self.review.check_units(job, r)
            rejected = [u for u in self.svc.db.units(job.job_id, r) if u.verdict == "rejected"]
            if attempt == 1 or not rejected or time.time() > rnd.deadline - 5:
                break
            await self._reassign_lost(job, r, rnd, global_ref)
            await self._collect(job, r, rnd, global_ref, inbox)
        await self.review.aggregate_round(job, r, rnd)

    def _reject_unopened(self, job: JobRecord, r: int) -> None:
        """A receipted unit whose key never came is rejected: its verdict goes on chain, so the
        receipt cannot be claimed for an update the client could not use."""
        for u in self.svc.db.units(job.job_id, r):
            if u.state == "receipted":
                u.state, u.verdict, u.reason = "checked", "rejected", "the update's key was never delivered"
                self.svc.db.put_unit(u)

    def _upload_global(self, job: JobRecord, r: int) -> StoredRef:
        """Encrypt and upload the round's global weights once (the reference is kept beside them)."""
        svc = self.svc
        path = global_path(svc.job_dir(job.job_id), r)
        obj = JobObjects(job.job_id).global_weights(r)
        # Encryption is randomised, so re-uploading after a restart would change the hash that
        # earlier work units carry: upload once and remember the ciphertext's hash.
        meta = path.with_suffix(".ref.json")
        if meta.exists() and svc.store.head(obj.key) is not None:
            return StoredRef.from_dict(json.loads(meta.read_text()))
        ref = seal(svc.store, obj, path.read_bytes(), key=obj.derive_key(svc.db.get_secret(job.job_id)))
        meta.write_text(json.dumps(ref.to_dict()))
        return ref

    async def _assign(self, job: JobRecord, r: int, slot: int, bid: dict[str, Any], unit: int,
                      global_ref: StoredRef, deadline: float) -> UnitRecord:
        """Send one work unit to a trainer; the record says whether it took it."""
        svc = self.svc
        update_key = JobObjects(job.job_id).update(r, unit).key
        rec = UnitRecord(job_id=job.job_id, round=r, unit=unit, slot=slot, trainer_peer=bid["peer_id"],
                         trainer_address=bid["address"], price_wei=bid["price_wei"], update_key=update_key)
        svc.db.put_unit(rec)
        try:
            wu = await in_thread(self.work_unit, job, r, slot, unit, bid, global_ref, deadline)
            await svc.node.request(bid["peer_id"], wu, expect=(UnitAccepted,), timeout=svc.node.rpc_timeout)
            answer: tuple[UnitState, str | None] = ("accepted", None)
        except (RpcError, Rejected) as exc:
            answer = ("failed", f"assignment failed: {exc}"[:300])
        # Re-read before writing: a trainer that trains in milliseconds can deliver (and the
        # exchange record its receipt) or give up before its answer to the order arrives, on a
        # slow or flapping link. Writing this record back would erase that receipt.
        stored = svc.db.get_unit(job.job_id, r, unit)
        if stored is not None and stored.state != "assigned":
            rec = stored
        else:
            rec.state, rec.reason = answer
            svc.db.put_unit(rec)
        await svc.audit_entry(job, {"state": "assigned", "round": r, "unit": unit, "trainer": bid["peer_id"],
                                    "ok": answer[0] == "accepted"})
        return rec

    def work_unit(self, job: JobRecord, r: int, slot: int, unit: int, bid: dict[str, Any],
                  global_ref: StoredRef, deadline: float) -> WorkUnit:
        """The work unit for ``slot`` of round ``r``: presigned URLs, keys sealed to the
        trainer, and the training settings the client's re-execution uses too."""
        svc = self.svc
        secret = svc.db.get_secret(job.job_id)
        objects = JobObjects(job.job_id)
        ttl = int(deadline - time.time() + URL_TTL_SLACK_S)
        chunk = job.chunks[slot % len(job.chunks)]
        chunk_key = objects.chunk(chunk["chunk_id"]).derive_key(secret)
        global_key = objects.global_weights(r).derive_key(secret)
        max_update = max_update_bytes(job.num_params)
        training = unit_training(job, self.review.strategies.get(job), r, slot)
        assert job.job_key is not None and job.contract is not None, "work units need a funded v2 job"
        chain_id = svc.escrow.get_chain_id()
        assignment_sig = sign_assignment(
            svc.identity.wallet, job_key=job.job_key, contract=job.contract, chain_id=chain_id, round_=r,
            unit=unit, trainer=bid["address"], deadline=deadline, global_sha256=global_ref.sha256,
            chunk_sha256s=[chunk["sha256"]])
        return WorkUnit(
            job_id=job.job_id, round=r, unit=unit, model=job.model,
            preprocessing=Preprocessing.model_validate(job.preprocessing),
            global_url=svc.store.presign_get(global_ref.key, ttl), global_sha256=global_ref.sha256,
            global_size=global_ref.size, global_sealed_key=seal_key_b64(global_key, bid["box_public"]),
            chunks=[ChunkRef(chunk_id=chunk["chunk_id"], url=svc.store.presign_get(chunk["key"], ttl),
                             sha256=chunk["sha256"], size=chunk["size"], rows=chunk["rows"],
                             sealed_key=seal_key_b64(chunk_key, bid["box_public"]))],
            **training.fields(),  # type: ignore[arg-type]
            deadline=deadline, put_url=svc.store.presign_put(objects.update(r, unit).key, ttl, max_update),
            put_max_bytes=max_update, client_box_public=svc.identity.box_public_hex,
            audit_topic=job.audit_topic or "0.0.0",
            job_key=job.job_key, contract=job.contract, chain_id=chain_id, operator=svc.identity.address,
            trainer=bid["address"], assignment_sig=assignment_sig,
        )

    async def _collect(self, job: JobRecord, r: int, rnd: RoundRecord, global_ref: StoredRef,
                       inbox: Inbox) -> None:
        """Wait for every slot's update; reassign a slot whose trainer failed or vanished."""
        while True:
            units = self.svc.db.units(job.job_id, r)
            if self._round_complete(job, units) or time.time() >= rnd.deadline:
                return
            with trio.move_on_after(0.25):
                event = await inbox.receive()
                self._apply_unit_event(job, r, event)
            await self._reassign_lost(job, r, rnd, global_ref)
            # Nothing out and nobody left to take the missing slots: waiting for the deadline
            # would only delay the round.
            if not any(u.state in ("assigned", "accepted", "receipted") for u in self.svc.db.units(job.job_id, r)):
                return

    @staticmethod
    def _round_complete(job: JobRecord, units: list[UnitRecord]) -> bool:
        done_slots = {u.slot for u in units if u.state in ("delivered", "checked") and u.verdict != "rejected"}
        return len(done_slots) >= len(job.chosen)

    def _apply_unit_event(self, job: JobRecord, r: int, event: UnitEvent) -> None:
        sender, msg = event
        if msg is None or msg.round != r:
            return  # a delivery: the exchange already recorded it
        rec = self.svc.db.get_unit(job.job_id, r, msg.unit)
        if rec is None or rec.trainer_peer != sender or rec.state not in ("assigned", "accepted"):
            return  # a unit already receipted stays with its trainer (its receipt is owed)
        rec.state, rec.reason = "failed", f"trainer gave up: {msg.reason}"[:300]
        self.svc.db.put_unit(rec)

    async def _reassign_lost(self, job: JobRecord, r: int, rnd: RoundRecord, global_ref: StoredRef) -> None:
        """A unit whose trainer failed, refused or went silent goes to a standby (or another
        healthy trainer) within the round, under a new unit number."""
        svc = self.svc
        # While we hear nobody, our own link is the likely one down: a trainer is judged silent
        # only after we have heard the others for a whole peer timeout (or a flap of our link
        # would take every unit away and assign each slot twice).
        judging = svc.node.hearing_for() >= svc.node.directory.timeout
        for rec in svc.db.units(job.job_id, r):
            if rec.state in ("assigned", "accepted") and judging:
                peer = svc.node.directory.get(rec.trainer_peer)
                if peer is None or not svc.node.directory.is_online(peer):
                    rec.state, rec.reason = "lost", "trainer went silent"
                    svc.db.put_unit(rec)
        units = svc.db.units(job.job_id, r)
        covered = {u.slot for u in units if u.state not in ("failed", "lost") and u.verdict != "rejected"}
        for slot in range(len(job.chosen)):
            if slot in covered or time.time() > rnd.deadline - 2:
                continue
            bid = self._pick_replacement(job, units)
            if bid is None:
                continue
            unit = max(max(u.unit for u in units) + 1, len(job.chosen))
            # Re-read: the review adds its summaries to the stored round meanwhile.
            stored = svc.db.get_round(job.job_id, r) or rnd
            stored.reassigned = rnd.reassigned = stored.reassigned + 1
            svc.db.put_round(stored)
            svc.event(job, f"round {r}: slot {slot} reassigned to {bid['peer_id'][:16]}… as unit {unit}")
            await self._assign(job, r, slot, bid, unit, global_ref, rnd.deadline)
            units = svc.db.units(job.job_id, r)

    def _pick_replacement(self, job: JobRecord, units: list[UnitRecord]) -> dict[str, Any] | None:
        failed = {u.trainer_peer for u in units if u.state in ("failed", "lost") or u.verdict == "rejected"}
        busy = {u.trainer_peer for u in units if u.state in ("assigned", "accepted", "receipted")}
        # Standbys were registered at funding, each for a fixed number of units (never more
        # mid-job): a trainer takes an extra unit only if it keeps one for each of its own
        # remaining slots, or a later receipt of its would exceed what the chain pays it.
        r = units[0].round if units else 0
        taken: dict[str, int] = {}
        for u in self.svc.db.units(job.job_id):
            if u.state not in ("failed", "lost"):
                taken[u.trainer_peer] = taken.get(u.trainer_peer, 0) + 1
        chosen_ids = {b["peer_id"] for b in job.chosen}
        directory = self.svc.node.directory
        for bid in [*job.standby, *job.chosen]:
            peer = directory.get(bid["peer_id"])
            if bid["peer_id"] in failed or bid["peer_id"] in busy:
                continue
            chosen = bid["peer_id"] in chosen_ids
            own_left = job.terms.rounds - r - 1 if chosen else 0
            if taken.get(bid["peer_id"], 0) + own_left >= units_registered(job, standby=not chosen):
                continue
            if peer is not None and directory.is_online(peer):
                return bid
        return None

    # ------------------------------------------------------------------ network handlers

    async def on_unit_failed(self, sender: str, msg: UnitFailed, blob: bytes | None) -> tuple[Ack, bytes | None]:
        """The ``UnitFailed`` RPC: queue the news for the round's collector."""
        job = self.svc.db.get_job(msg.job_id)
        if job is None or job.state in TERMINAL:
            raise Rejected(f"unknown or finished job {msg.job_id}", code="not_found")
        rec = self.svc.db.get_unit(msg.job_id, msg.round, msg.unit)
        if rec is None or rec.trainer_peer != sender:
            raise Rejected("this unit was not assigned to you", code="forbidden")
        send, _ = self._inbox_pair(msg.job_id)
        await send.send((sender, msg))
        return Ack(), None

    async def wake(self, job_id: str) -> None:
        """A unit of ``job_id`` changed (delivered, refused): the collector looks again now."""
        send, _ = self._inbox_pair(job_id)
        if send.statistics().current_buffer_used < 512:  # a full inbox wakes the collector anyway
            send.send_nowait(("", None))

    def _inbox_pair(self, job_id: str) -> tuple[trio.MemorySendChannel[UnitEvent], Inbox]:
        if job_id not in self._inbox:
            self._inbox[job_id] = trio.open_memory_channel[UnitEvent](1024)
        return self._inbox[job_id]
