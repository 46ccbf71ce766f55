"""The demo's chain side: find the job on escrow v2, wait for claims, release and withdrawals,
and build the report's ``escrow`` and ``chain`` blocks from the contract alone.

The client's own records are not trusted for money: every figure here comes from
FedSwarmEscrowV2's events and views (:mod:`fedswarm.ledger.escrow_books`).
"""

from __future__ import annotations

import time
from typing import Any

from eth_account import Account

from fedswarm.devnet import Devnet
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.escrow_books import JobBooks, funded_jobs, job_books, reason_hashes
from fedswarm.ledger.escrow_types import JobStatusV2
from fedswarm.ledger.hedera import ValueUnits

# The demo's windows: short, so the demo ends with the job released and its books balanced.
# Trainers may claim a receipted unit the client left unsettled after SETTLE_WINDOW_S (long
# enough that an honest client on a loaded 2-core machine settles first); anyone may release
# CLAIM_WINDOW_S after that (the devnet deployment's minimum claim window).
SETTLE_WINDOW_S = 30
NEVER_SETTLE_WINDOW_S = 15  # the never-settle fault: trainers claim sooner
# The client's settler sends `release` once due; past this grace the demo sends it itself
# (anyone may) so the books still close, and the report says who did.
RELEASE_GRACE_S = 30.0
RELEASE_MAX_WAIT_S = 180.0  # the longest the demo waits for a release time to come


class ChainError(RuntimeError):
    """The job could not be found or followed on the chain."""


def reader(devnet: Devnet, key: str | None = None) -> EscrowV2:
    """An EscrowV2 client on the devnet's v2 deployment (a throwaway account unless ``key``)."""
    chain = devnet.state["chain"]
    account = Account.from_key(key) if key else Account.create()
    return EscrowV2(chain["rpc_url"], chain["escrow_v2_address"], account, units=ValueUnits.for_chain(chain),
                    chain_id=int(chain["chain_id"]), deploy_block=int(chain["escrow_v2_deploy_block"]))


def windows(devnet: Devnet, never_settle: bool) -> dict[str, int]:
    """The demo job's ``settle_window_s`` and ``claim_window_s`` terms."""
    claim = int(devnet.state["chain"].get("escrow_v2_min_claim_window") or 10)
    return {"settle_window_s": NEVER_SETTLE_WINDOW_S if never_settle else SETTLE_WINDOW_S,
            "claim_window_s": claim}


def job_key(job: dict[str, Any], escrow: EscrowV2, payer: str | None) -> bytes | None:
    """The job's v2 key: from the client's job detail when it names one, else the last job the
    client's wallet funded on the contract (the demo runs one job). None if never funded."""
    named = (job.get("escrow") or {}).get("job_key") or job.get("job_key")
    if named:
        return bytes.fromhex(str(named).removeprefix("0x"))
    keys = funded_jobs(escrow.read_events(), payer)
    return keys[-1] if keys else None


def wait_claims(escrow: EscrowV2, key: bytes, job: dict[str, Any], console: Any,
                timeout: float = 120.0) -> str:
    """With a client that never settles, trainers claim their receipted units once the settle
    window has passed: wait until the claims cover the units the client received."""
    delivered = sum(u.get("state") in ("delivered", "checked") for u in job.get("units", []))
    deadline = time.monotonic() + timeout
    claimed = 0
    with console.status("waiting for trainers to claim unsettled units"):
        while time.monotonic() < deadline:
            books = job_books(escrow, key, with_gas=False)
            claimed = sum(t.claimed for t in books.trainers.values())
            if claimed and claimed >= delivered:
                return f"never-settle: trainers claimed {claimed} units after the window"
            time.sleep(1.0)
    return f"never-settle: trainers claimed {claimed} of {delivered} units within {timeout:.0f} s"


def wait_release(escrow: EscrowV2, key: bytes, devnet: Devnet, console: Any,
                 max_wait_s: float = RELEASE_MAX_WAIT_S) -> None:
    """Wait for the job's ``release`` (the client's settler sends it when due); RELEASE_GRACE_S
    after the release time, send it from the devnet faucet (anyone may) so the books close.
    A job whose release time is more than ``max_wait_s`` away (one that never closed runs to
    its deadline) is left unreleased: the report then says it does not balance yet."""
    view = escrow.job(key)
    if view.status == JobStatusV2.NONE:
        raise ChainError(f"job 0x{key.hex()} is not on the v2 escrow")
    if view.release_at - time.time() > max_wait_s:
        return
    with console.status(f"waiting for the escrow's release (release time in "
                        f"{max(0, view.release_at - int(time.time()))} s)"):
        while view.status != JobStatusV2.RELEASED:
            if time.time() > view.release_at + RELEASE_GRACE_S:
                reader(devnet, devnet.state["chain"]["faucet_key"]).release(key)
                return
            time.sleep(0.5)
            view = escrow.job(key)


def wait_withdrawals(escrow: EscrowV2, addresses: list[str], console: Any,
                     timeout: float = 30.0) -> None:
    """Trainers pull their pay when they hear the job finished; give them a moment."""
    deadline = time.monotonic() + timeout
    with console.status("waiting for trainers to withdraw their pay"):
        while time.monotonic() < deadline:
            if all(escrow.pending(a) == 0 for a in addresses):
                return
            time.sleep(0.5)


EMPTY_ESCROW: dict[str, Any] = {"deposited_wei": 0, "paid_wei": 0, "refunded_wei": 0, "held_wei": 0,
                                "released": False, "balanced": False}


def escrow_block(books: JobBooks, devnet: Devnet) -> dict[str, Any]:
    """The report's ``escrow``: deposited = paid + refunded once released (``balanced``), and
    who released it: ``operator`` (the client's settler), ``payer``, ``demo`` (the demo's
    fallback after RELEASE_GRACE_S) or the address."""
    v = books.view
    by = (books.released_by or "").lower()
    faucet = Account.from_key(devnet.state["chain"]["faucet_key"]).address.lower()
    # The client's wallet is both payer and operator for now: call it the operator then.
    label = {v.payer.lower(): "payer", v.operator.lower(): "operator", faucet: "demo"}.get(by, by or None)
    return {"contract": books.contract, "job_key": "0x" + books.job_key.hex(),
            "status": v.status.name.lower(), "deposited_wei": books.deposited,
            "paid_wei": books.paid, "refunded_wei": books.refunded, "held_wei": books.held,
            "released": books.released, "released_refund_wei": books.released_refund,
            "released_by": label, "release_at": v.release_at, "close_at": v.close_at,
            "payer_withdrawn_wei": books.payer_withdrawn,
            "balanced": books.released and books.deposited == books.paid + books.refunded}


def chain_block(books: JobBooks, devnet: Devnet, units: int) -> dict[str, Any]:
    """The report's ``chain``: transactions by kind and their gas, block time, windows."""
    return {"transactions": dict(books.transactions), "gas": dict(books.gas),
            "units": units, "block_time": float(devnet.state["chain"].get("block_time") or 0),
            "settle_window_s": books.view.settle_window, "claim_window_s": books.view.claim_window}


def read_books(escrow: EscrowV2, key: bytes) -> JobBooks:
    """The job's books, with the gas of each of its transactions."""
    return job_books(escrow, key)


def chain_reason_hashes(devnet: Devnet, job: dict[str, Any], payer: str | None = None,
                        ) -> dict[tuple[int, int], str]:
    """``(round, unit) -> reason hash`` of the job's rejections as settled on chain."""
    escrow = reader(devnet)
    key = job_key(job, escrow, payer)
    return reason_hashes(escrow.read_events(), key) if key else {}
