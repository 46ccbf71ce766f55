"""The trainer on the market: which announced jobs it bids on, the signed bid, the job topic.

A :class:`JobAnnounce` on the market topic that fits (sender is the job's client, our price
within the cap, RAM/GPU, the same chain and v2 escrow as ours, signed by the operator it names)
gets a signed :class:`Bid` over RPC; the job is remembered with its operator and escrow, and its
topic followed (RoundResult, JobFinished). After JobFinished the trainer withdraws its pending
pay.
"""

from __future__ import annotations

import contextlib
import time

import trio

from fedswarm.market.operator import SignatureError, verify_announcement
from fedswarm.p2p.node import RpcError
from fedswarm.protocol.job import Bid, BidAck, JobAnnounce, JobFinished, RoundResult
from fedswarm.protocol.messages import Capabilities, WireModel
from fedswarm.protocol.topics import job_topic
from fedswarm.roles.trainer.core import TrainerCore, log


class Bidding(TrainerCore):
    """Market announcements, bids and the topics of the jobs we bid on."""

    async def _on_market(self, sender: str, msg: WireModel) -> None:
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
        if ann.operator is None or ann.operator_sig is None:
            self.stats.bump("announces_unsigned")
            return "the announcement names no signing operator"
        try:
            verify_announcement(ann.operator, ann.operator_sig, ann.job_id, ann.client_peer_id,
                                ann.chain_id, ann.contract)
        except SignatureError as exc:
            self.stats.bump("announces_unsigned")
            return f"the announcement's operator signature does not hold: {exc}"
        refusal = self.client_book.refusal(ann.operator)
        if refusal:
            self.stats.bump("announces_refused_client")
            return f"the client's operator {refusal}"
        return None

    def _client_seen(self, operator: str | None) -> dict[str, float | int | None]:
        """The operator's rejection rate as this trainer sees it, for the bid."""
        rec = self.client_book.record(operator)
        if rec is None or not rec.settled:
            return {"client_rejection_rate": None, "client_units_judged": 0 if operator else None}
        return {"client_rejection_rate": round(rec.rejection_rate, 4), "client_units_judged": rec.settled}

    async def _bid(self, ann: JobAnnounce) -> None:
        from fedswarm.market.bids import sign_bid

        try:
            signature = sign_bid(self.identity.wallet, self.peer_id, self.identity.box_public_hex,
                                 ann.job_id, self.options.price_wei)
            bid = Bid(job_id=ann.job_id, peer_id=self.peer_id, address=self.identity.address,
                      box_public=self.identity.box_public_hex, price_wei=self.options.price_wei,
                      capabilities=self._capabilities(), signature=signature,
                      **self._client_seen(ann.operator))
            # Remember the job before the client can answer with a work unit.
            # The operator is remembered only now that its signature held (see _why_not_bid).
            self.db.add_job(ann.job_id, ann.client_peer_id, ann.audit_topic, self.options.price_wei,
                            operator=ann.operator, contract=ann.contract, chain_id=ann.chain_id)
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

    async def _on_job_topic(self, sender: str, msg: WireModel) -> None:
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
