"""Phase 3 for a wallet user's job: the wallet pays the escrow, the node operates the job.

After bidding, a job owned by a wallet goes to ``awaiting-payment``: :meth:`Payment.request`
writes the ``fund(nonce, terms, trainers)`` call the wallet must send (payer = the wallet, so
the job key is ``keccak256(abi.encode(wallet, nonce))``; operator = this node; the chosen
trainers and standbys at their bid prices) into ``job.funding``, where the API shows it.
:meth:`Payment.wait` then polls the chain (off the round path: before round 0) until the job is
open there with exactly those terms, and the job proceeds as a node-funded one. Nothing on
chain before ``expires_at`` (``FEDSWARM_PAYMENT_WINDOW_S``, default 15 min): the job fails and
nothing needs refunding. Funded with other terms: the job fails and, when this node is the
operator, is cancelled through the settler so the payer's money returns.

A wallet can still send the funding call after the window closed (a transaction signed late or
mined late: the contract knows nothing of the window). :meth:`Payment.watch_late` keeps looking
at such jobs' keys until their chain deadline; a job found funded with this node as operator is
cancelled through the settler, so the payer's money comes back at once (what is reserved for
the registered trainers at release, after the settle and claim windows) instead of at the
deadline.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable

import trio
from eth_utils import to_checksum_address

from fedswarm.ledger.escrow import JobStatusV2, JobView, job_key_of
from fedswarm.ledger.escrow import JobTerms as ChainTerms
from fedswarm.ledger.escrow import TrainerTerms as ChainTrainer
from fedswarm.roles.client.records import NODE_OWNER, JobRecord
from fedswarm.roles.client.services import ClientServices, JobFailed, in_thread, log

DEFAULT_PAYMENT_WINDOW_S = 15 * 60
POLL_S = 1.0
LATE_POLL_S = 10.0  # how often the keys of jobs whose window closed unpaid are looked at
MAX_LATE_WATCHED = 64  # the most recent ones: a flood of unpaid quotes costs bounded chain reads


def payment_window_s() -> int:
    """How long a wallet has to pay after the quote (``FEDSWARM_PAYMENT_WINDOW_S``)."""
    return int(os.environ.get("FEDSWARM_PAYMENT_WINDOW_S", DEFAULT_PAYMENT_WINDOW_S))


def is_wallet_job(job: JobRecord) -> bool:
    """A job a wallet submitted (and pays for)."""
    return job.owner != NODE_OWNER


def chain_terms(job: JobRecord, trainers: list[ChainTrainer], operator: str, min_claim_window: int,
                now: float, extra_s: int = 0) -> ChainTerms:
    """The job's terms on chain (``extra_s`` pushes the deadline past the payment window)."""
    deadline_s = job.terms.deadline_s or int(job.terms.rounds * job.terms.round_deadline_s * 3 + 3600)
    return ChainTerms(operator=operator, deadline=int(now) + deadline_s + extra_s,
                      settle_window=job.terms.settle_window_s,
                      claim_window=max(job.terms.claim_window_s, min_claim_window),
                      price_cap=job.terms.price_cap_wei, unit_budget=sum(t.units for t in trainers))


def funding_mismatch(view: JobView, funding: dict[str, object], registered: dict[str, tuple[int, int, bool]]) -> str | None:
    """None when the chain's job is what ``funding`` asked for; else what differs.
    ``registered``: trainer address (lower) -> (price, units, registered) read from the chain."""
    if view.payer.lower() != str(funding["payer"]).lower():
        return f"funded by {view.payer}, not by the job's wallet {funding['payer']}"
    if view.operator.lower() != str(funding["operator"]).lower():
        return f"names operator {view.operator}, not this node ({funding['operator']})"
    if view.escrow != int(str(funding["total_wei"])):
        return f"holds {view.escrow}, the quote was {funding['total_wei']}"
    trainers = funding["trainers"]
    assert isinstance(trainers, list)
    if view.units_registered != sum(int(t["units"]) for t in trainers):
        return f"registers {view.units_registered} units, the quote {sum(int(t['units']) for t in trainers)}"
    for t in trainers:
        price, units, ok = registered.get(str(t["address"]).lower(), (0, 0, False))
        if not ok or price != int(t["price_wei"]) or units != int(t["units"]):
            return f"trainer {t['address']} is not registered at {t['price_wei']} x {t['units']} units"
    return None


class Payment:
    """Builds the wallet's funding call and waits for the chain to show it paid."""

    def __init__(self, svc: ClientServices, trainer_terms: Callable[[JobRecord], list[ChainTrainer]]) -> None:
        self.svc = svc
        self.trainer_terms = trainer_terms

    async def request(self, job: JobRecord) -> None:
        """Write the fund() call for the job's wallet and move to ``awaiting-payment``."""
        svc, esc = self.svc, self.svc.escrow
        trainers = self.trainer_terms(job)
        total = sum(t.price * t.units for t in trainers)
        now = time.time()
        window = payment_window_s()
        nonce = secrets.randbits(63)
        payer = to_checksum_address(job.owner)
        min_claim = await in_thread(esc.min_claim_window)
        chain_id = await in_thread(esc.get_chain_id)
        terms = chain_terms(job, trainers, svc.identity.address, min_claim, now, extra_s=window)
        data = esc.ledger.contract.encode_abi("fund", args=[nonce, terms.as_tuple(), [t.as_tuple() for t in trainers]])
        standby = {b["address"].lower() for b in job.standby}
        peers = {b["address"].lower(): b["peer_id"] for b in [*job.chosen, *job.standby]}
        job.funding = {
            "to": esc.contract_address, "data": data, "value": str(esc.units.to_rpc(total)),
            "chain_id": chain_id, "payer": payer, "operator": svc.identity.address, "nonce": str(nonce),
            "job_key": "0x" + job_key_of(payer, nonce).hex(), "total_wei": str(total),
            "trainers": [{"address": t.trainer, "peer_id": peers.get(t.trainer.lower()), "price_wei": str(t.price),
                          "units": t.units, "standby": t.trainer.lower() in standby} for t in trainers],
            "deadline": terms.deadline, "expires_at": int(now) + window,
        }
        job.state = "awaiting-payment"
        svc.event(job, f"waiting for {payer} to fund {total} on {esc.contract_address} "
                       f"(until {time.strftime('%H:%M:%S', time.localtime(now + window))})")
        svc.db.put_job(job)

    async def wait(self, job: JobRecord, cancelled: Callable[[str], bool]) -> None:
        """Poll the chain until the job is funded as asked (then ``escrowed``); JobFailed when
        the window passes or the funding is not the quote. Returns early on a cancel request
        (the driver then cancels: nothing was funded, or the settler returns the money)."""
        svc, esc = self.svc, self.svc.escrow
        funding = job.funding or {}
        key = bytes.fromhex(str(funding["job_key"])[2:])
        while True:
            view = await in_thread(esc.job, key)
            if view.status != JobStatusV2.NONE:
                break
            if cancelled(job.job_id):
                return
            if time.time() > int(funding["expires_at"]):
                # Watched until the chain deadline: a late payment is cancelled (watch_late).
                funding["late_watch_until"] = int(str(funding["deadline"]))
                svc.db.put_job(job)
                raise JobFailed("not paid in time: the wallet did not fund the escrow before the payment "
                                "window closed (nothing was escrowed; a payment that still arrives is "
                                "cancelled by this node and returns to the wallet)")
            await trio.sleep(POLL_S)
        registered = {}
        for t in funding["trainers"]:
            reg = await in_thread(esc.trainer, key, t["address"])
            registered[t["address"].lower()] = (reg.price, reg.units, reg.registered)
        problem = ("is not open" if view.status != JobStatusV2.OPEN
                   else funding_mismatch(view, funding, registered))
        # From here the job key is the job's: a cancel or a failure closes it on chain.
        job.nonce, job.payer, job.operator = int(funding["nonce"]), view.payer, view.operator
        job.contract = esc.contract_address
        # (Not when the job is no longer open: the payer closed it already, nothing to cancel.)
        if view.status == JobStatusV2.OPEN and (problem is None or view.operator.lower() == svc.identity.address.lower()):
            job.job_key = key.hex()
            # Only with the key: a job with a funding transaction and no v2 key reads as one
            # funded on the v1 contract, which fail() would then try to close there.
            job.escrow_tx = job.funding_tx_hint
        if problem is not None:
            job.deposited_wei = view.escrow
            svc.db.put_job(job)
            if view.status != JobStatusV2.OPEN:
                raise JobFailed(f"the job's escrow {problem} (it is {view.status.name.lower()} on chain); "
                                "nothing left for this node to cancel")
            raise JobFailed(f"the escrow was funded with other terms than the quote ({problem}); "
                            + ("cancelled so the payer's money returns" if job.job_key else
                               "this node is not its operator: the payer can cancel it"))
        job.deposited_wei = view.escrow
        job.state = "escrowed"
        svc.event(job, f"funded by {view.payer}: {view.escrow} escrowed on {esc.contract_address} for "
                       f"{len(job.chosen)} trainers (+{len(job.standby)} standby)")
        svc.db.put_job(job)
        await svc.audit_entry(job, {"state": "escrowed", "wei": view.escrow, "job_key": job.job_key,
                                    "contract": esc.contract_address, "payer": view.payer})


def late_watched(jobs: Iterable[JobRecord], now: float) -> list[JobRecord]:
    """The failed wallet jobs whose funding may still arrive late, newest first, at most
    :data:`MAX_LATE_WATCHED` (pure)."""
    out = [j for j in jobs if j.state == "failed" and j.job_key is None and j.funding
           and int(str(j.funding.get("late_watch_until") or 0)) > now]
    out.sort(key=lambda j: -int(str((j.funding or {}).get("expires_at", 0))))
    return out[:MAX_LATE_WATCHED]


class LateFunding:
    """Finds wallet payments that arrived after their job's payment window (see the module
    doc); ``on_late(job)`` asks the settler to cancel one (the job key is then the job's)."""

    def __init__(self, svc: ClientServices, on_late: Callable[[JobRecord], None]) -> None:
        self.svc = svc
        self.on_late = on_late

    async def check(self, job: JobRecord) -> bool:
        """Look at one watched job's key once; True when it was funded late with this node as
        operator (recorded, and handed to ``on_late``). A job found in any other state on
        chain is watched no more."""
        svc, esc = self.svc, self.svc.escrow
        funding = job.funding or {}
        key = bytes.fromhex(str(funding["job_key"])[2:])
        view = await in_thread(esc.job, key)
        if view.status == JobStatusV2.NONE:
            return False
        job = svc.job(job.job_id)  # fresh: the API may have written it while we read the chain
        funding = job.funding or {}
        funding["late_watch_until"] = 0
        mine = view.operator.lower() == svc.identity.address.lower()
        if view.status != JobStatusV2.OPEN or not mine:
            svc.event(job, f"funded by {view.payer} after the payment window closed; it is "
                           f"{view.status.name.lower()} on chain" + ("" if mine else
                           f" with operator {view.operator}, not this node: the payer can cancel it"))
            svc.db.put_job(job)
            return False
        job.job_key, job.nonce = key.hex(), int(str(funding["nonce"]))
        job.payer, job.operator, job.contract = view.payer, view.operator, esc.contract_address
        job.deposited_wei = view.escrow
        svc.event(job, f"{view.payer} funded {view.escrow} after the payment window closed: cancelling it "
                       "on chain so the money returns to the wallet")
        svc.db.put_job(job)
        self.on_late(job)
        return True

    async def watch(self) -> None:
        """Check every watched job each :data:`LATE_POLL_S` seconds, forever."""
        while True:
            await trio.sleep(LATE_POLL_S)
            # Off the event loop: every failed job's record is read and parsed.
            failed = await in_thread(self.svc.db.jobs, "failed")
            for job in late_watched(failed, time.time()):
                try:
                    await self.check(job)
                except Exception as exc:  # a chain hiccup: the next pass tries again
                    log.warning("late funding check of %s failed: %s", job.job_id, exc)
