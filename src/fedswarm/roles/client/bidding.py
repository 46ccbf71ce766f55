"""Phases 2 and 3, bidding and escrow: find trainers, then lock their pay on chain.

``collect_bids`` announces the job on the market topic (re-announcing while the window is
open, up to three windows; the announcement is signed by the node's wallet, the job's operator)
and picks trainers and standbys from the signed bids with the market's selection policy and the
trainers' on-chain reputation. ``escrow`` funds the job on FedSwarmEscrowV2 in one transaction
that registers the chosen trainers and the standbys (standbys are never added mid-job); the
nonce and job key are recorded before it is sent and the chain is asked first, so a restarted
client never funds twice.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import trio

from fedswarm.ledger.escrow import JobStatusV2, job_key_of
from fedswarm.ledger.escrow import JobTerms as ChainTerms
from fedswarm.ledger.escrow import TrainerTerms as ChainTrainer
from fedswarm.market.bids import BidError, verify_bid
from fedswarm.market.operator import sign_announcement
from fedswarm.market.pricing import Quote, quote
from fedswarm.market.reputation import Reputation, SettlementBook, trainer_reputation
from fedswarm.market.selection import JobRequirements, Selection, SelectionError, make_policy
from fedswarm.market.settlement_sync import sync_book
from fedswarm.p2p.node import Rejected
from fedswarm.protocol.job import Bid, BidAck, JobAnnounce
from fedswarm.protocol.messages import Role
from fedswarm.protocol.topics import MARKET_TOPIC, job_topic
from fedswarm.roles.client.records import JobRecord
from fedswarm.roles.client.services import ClientServices, JobFailed, in_thread, log


def min_ram_mb(num_params: int) -> int:
    """A trainer's memory floor for a model: weights, grads, optimiser state, activations."""
    return int(math.ceil(num_params * 4 * 6 / (1 << 20))) + 256


def units_registered(job: JobRecord, standby: bool) -> int:
    """Units a trainer is registered for at funding: a chosen trainer its rounds plus a redo
    budget of half the rounds (reassignments, rejected units redone); a standby half the
    rounds plus one."""
    half = math.ceil(job.terms.rounds / 2)
    return half + 1 if standby else job.terms.rounds + half


def fund_trainers(job: JobRecord) -> list[ChainTrainer]:
    """The trainers the funding transaction registers (chosen first, then standbys)."""
    return [ChainTrainer(trainer=b["address"], price=int(b["price_wei"]), units=units_registered(job, standby))
            for standby, bids in ((False, job.chosen), (True, job.standby)) for b in bids]


def job_quote(job: JobRecord) -> Quote:
    """What the job costs with its chosen trainers and standbys (one unit per round each,
    standbys included: their reserve covers reassignments)."""
    selection = Selection(chosen=[Bid.model_validate(b) for b in job.chosen],
                          standby=[Bid.model_validate(b) for b in job.standby], rejected=[])
    return quote(selection, job.terms.rounds, reassign_reserve_units=job.terms.rounds)


class Bidding:
    """Announces jobs, takes bids (the ``Bid`` RPC), selects trainers and escrows their pay."""

    def __init__(self, svc: ClientServices,
                 trainer_terms: Callable[[JobRecord], list[ChainTrainer]] = fund_trainers) -> None:
        self.svc = svc
        self.trainer_terms = trainer_terms  # what funding registers (a test double's seam)
        self._bids: dict[str, dict[str, Bid]] = {}  # job -> bidder peer -> bid (in memory only)
        self._announces: dict[str, JobAnnounce] = {}

    async def collect_bids(self, job: JobRecord) -> None:
        """Announce the job on the market topic and pick trainers from the signed bids."""
        svc, terms = self.svc, job.terms
        job.state = "bidding"
        svc.db.put_job(job)
        self._bids[job.job_id] = {}
        self._check_asking_prices(job)
        await svc.node.subscribe(job_topic(job.job_id), self._on_job_topic)
        wanted = terms.trainers + terms.standby
        chain_id = await in_thread(svc.escrow.get_chain_id)
        contract = svc.escrow.contract_address
        operator_sig = sign_announcement(svc.identity.wallet, job.job_id, svc.node.peer_id, chain_id, contract)
        # Up to three windows: trainers that were busy, slow or just joining get another chance
        # before the job fails for want of trainers (nothing has been spent yet).
        for window in range(3):
            deadline = time.time() + terms.bid_window_s
            announce = JobAnnounce(
                job_id=job.job_id, client_peer_id=svc.node.peer_id, trainers=terms.trainers,
                standby=terms.standby, rounds=terms.rounds, price_cap_wei=terms.price_cap_wei,
                min_ram_mb=min_ram_mb(job.num_params), model_params=job.num_params,
                train_rows=job.train_rows, bid_deadline=deadline, chain_id=chain_id,
                contract=contract, audit_topic=job.audit_topic or "0.0.0",
                client_addrs=svc.node.addrs[:16], operator=svc.identity.address, operator_sig=operator_sig,
            )
            self._announces[job.job_id] = announce
            started = time.time()
            # Re-announce while the window is open: a trainer that connects late still hears it.
            while time.time() < deadline:
                await svc.node.publish(MARKET_TOPIC, announce)
                if len(self._bids[job.job_id]) >= wanted and time.time() - started > 1.0:
                    break
                await trio.sleep(min(1.0, max(0.05, deadline - time.time())))
            got = len(self._bids[job.job_id])
            if got >= wanted or (got >= terms.trainers and window >= 1):
                break
            svc.event(job, f"bidding: {got} of {wanted} bids after window {window + 1}; announcing again")
            svc.db.put_job(job)
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
        svc.event(job, f"selected {len(job.chosen)} trainers (+{len(job.standby)} standby) from {len(bids)} bids")
        svc.db.put_job(job)

    def _check_asking_prices(self, job: JobRecord) -> None:
        """Fail fast, before any announcement, when the cap is below what trainers ask: they
        would not bid, and the user should hear the price rather than "no bids"."""
        asks = sorted(r.price_wei for r in self.svc.node.directory.records(role=Role.TRAINER)
                      if r.price_wei is not None)
        cap = job.terms.price_cap_wei
        if len(asks) >= job.terms.trainers and sum(a <= cap for a in asks) < job.terms.trainers:
            raise JobFailed(f"price cap {cap} wei is below what the online trainers ask "
                            f"(cheapest {asks[0]} wei; {sum(a <= cap for a in asks)} of {len(asks)} within the cap); "
                            f"raise the cap to at least {asks[job.terms.trainers - 1]} wei")

    def _reputation(self) -> dict[str, Reputation]:
        """Every trainer's record from the escrow's settlement events, read incrementally from
        the contract's deployment block (book and cursor kept in the node's home)."""
        home = self.svc.home
        book_path = home / "trainer-settlements.json"
        try:
            book = SettlementBook.load(book_path)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("settlement records unreadable (%s); re-reading them from the chain", exc)
            book = SettlementBook()
            (home / "trainer-settlements-cursor.json").unlink(missing_ok=True)
        try:
            sync_book(book, book_path, home / "trainer-settlements-cursor.json", self.svc.escrow)
        except Exception as exc:  # the chain being away must not stop selection
            log.warning("reputation not refreshed (%s); using the records read so far", exc)
        return trainer_reputation(book.all())

    async def escrow(self, job: JobRecord) -> None:
        """Fund the job on FedSwarmEscrowV2 (one transaction, chosen and standby trainers
        registered at their bid prices); idempotent across restarts."""
        svc = self.svc
        esc = svc.escrow
        if job.job_key is None:
            # Recorded before anything is sent: after a crash the same key is looked up.
            job.nonce = secrets.randbits(63)
            job.payer = job.operator = svc.identity.address
            job.contract = esc.contract_address
            job.job_key = job_key_of(job.payer, job.nonce).hex()
            svc.db.put_job(job)
        key = bytes.fromhex(job.job_key)
        trainers = self.trainer_terms(job)
        amount = sum(t.price * t.units for t in trainers)
        view = await in_thread(esc.job, key)
        if view.status == JobStatusV2.NONE:
            min_claim = await in_thread(esc.min_claim_window)
            claim_window = max(job.terms.claim_window_s, min_claim)
            deadline_s = job.terms.deadline_s or int(job.terms.rounds * job.terms.round_deadline_s * 3 + 3600)
            chain_terms = ChainTerms(operator=svc.identity.address, deadline=int(time.time()) + deadline_s,
                                     settle_window=job.terms.settle_window_s, claim_window=claim_window,
                                     price_cap=job.terms.price_cap_wei,
                                     unit_budget=sum(t.units for t in trainers))
            funded = await in_thread(esc.fund, job.nonce, chain_terms, trainers, amount)
            job.escrow_tx = funded.receipt.tx_hash
            svc.record_tx(job.job_id, "fund", funded.receipt, f"{len(trainers)} trainers, {amount} wei")
        elif view.payer.lower() != (job.payer or "").lower() or view.operator.lower() != svc.identity.address.lower():
            # Only our key can fund our key's job: this means the record is not ours.
            raise JobFailed(f"job key {job.job_key[:16]}… on chain names another payer or operator; "
                            "not using it")
        job.deposited_wei = amount
        job.state = "escrowed"
        svc.event(job, f"escrowed {amount} wei on {esc.contract_address} for {len(job.chosen)} trainers "
                       f"(+{len(job.standby)} standby)")
        svc.db.put_job(job)
        await svc.audit_entry(job, {"state": "escrowed", "wei": amount, "job_key": job.job_key,
                                    "contract": esc.contract_address})

    # ------------------------------------------------------------------ network handlers

    async def on_bid(self, sender: str, bid: Bid, blob: bytes | None) -> tuple[BidAck, bytes | None]:
        """The ``Bid`` RPC: keep a verified bid while the job's window is open."""
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

    async def _on_job_topic(self, sender: str, msg: Any) -> None:
        return None  # the client only publishes on its job topics

