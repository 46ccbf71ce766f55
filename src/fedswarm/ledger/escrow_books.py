"""A v2 job's books read from the chain alone: money in and out, transactions by kind, gas.

Everything here comes from FedSwarmEscrowV2's events (from its deployment block) and views,
not from any node's records, so the demo, the benchmarks and ``fedswarm ledger job`` can check a
client's claims against what the contract did. For one job::

    deposited = paid + refunded + held        (held: what the contract still keeps for it)

and ``held`` is 0 once the job is released, so a released job balances to the wei.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.escrow_types import JobStatusV2, JobView
from fedswarm.ledger.evm import LedgerEvent

# The transaction kinds a job can cause, in the order a tx's events are matched against them
# (a settle batch after the job closed also emits Refunded, a release never settles, ...).
TX_KINDS: tuple[tuple[str, str], ...] = (
    ("fund", "JobFunded"),
    ("complete", "JobCompleted"),
    ("cancel", "JobCancelled"),
    ("release", "JobReleased"),
    ("settle", "UnitSettled"),
    ("settle", "UnitSkipped"),
    ("claim", "UnitClaimed"),
    ("add_trainers", "TrainerAdded"),
)


@dataclass
class TrainerBooks:
    """One registered trainer's side of a job."""

    address: str
    price: int = 0
    units: int = 0
    accepted: int = 0
    rejected: int = 0
    claimed: int = 0
    paid: int = 0
    withdrawn: int = 0  # withdrawals by this account from the job's funding on (any job)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (amounts in wei / contract units)."""
        return {"address": self.address, "price_wei": self.price, "units_registered": self.units,
                "units_accepted": self.accepted, "units_rejected": self.rejected,
                "units_claimed": self.claimed, "paid_wei": self.paid, "withdrawn_wei": self.withdrawn}


@dataclass
class JobBooks:
    """A job's money and transactions as the chain records them."""

    job_key: bytes
    view: JobView
    payer: str
    operator: str
    contract: str = ""
    deposited: int = 0
    paid: int = 0
    refunded: int = 0
    released_refund: int | None = None  # JobReleased's refund, None until released
    released_by: str | None = None
    trainers: dict[str, TrainerBooks] = field(default_factory=dict)
    transactions: dict[str, int] = field(default_factory=dict)
    gas: dict[str, int] = field(default_factory=dict)
    payer_withdrawn: int = 0

    @property
    def held(self) -> int:
        """What the contract still holds for the job (0 once released)."""
        return self.view.escrow

    @property
    def balanced(self) -> bool:
        """deposited == paid + refunded + held, to the wei."""
        return self.deposited == self.paid + self.refunded + self.held

    @property
    def released(self) -> bool:
        """True once ``release`` ran (everything not paid went back to the payer)."""
        return self.view.status == JobStatusV2.RELEASED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (amounts in wei / contract units; times unix seconds)."""
        v = self.view
        return {
            "job_key": "0x" + self.job_key.hex(), "contract": self.contract, "payer": self.payer, "operator": self.operator,
            "status": v.status.name.lower(), "close_at": v.close_at, "release_at": v.release_at,
            "settle_window_s": v.settle_window, "claim_window_s": v.claim_window,
            "deposited_wei": self.deposited, "paid_wei": self.paid, "refunded_wei": self.refunded,
            "held_wei": self.held, "free_wei": v.free, "reserved_wei": v.reserved,
            "released": self.released, "released_refund_wei": self.released_refund,
            "released_by": self.released_by, "balanced": self.balanced,
            "payer_withdrawn_wei": self.payer_withdrawn,
            "units_done": v.units_done, "units_registered": v.units_registered,
            "transactions": dict(self.transactions), "gas": dict(self.gas),
            "trainers": [t.as_dict() for t in self.trainers.values()],
        }


def job_books(escrow: EscrowV2, job_key: bytes, events: Sequence[LedgerEvent] | None = None,
              with_gas: bool = True, withdrawals_until: int | None = None) -> JobBooks:
    """The books of ``job_key`` on ``escrow``'s contract. ``events``: the contract's events if
    already read (else read from its deployment block). ``with_gas`` reads each of the job's
    transaction receipts for its gas (one RPC per transaction). Withdrawals by the job's parties
    count from its funding block up to ``withdrawals_until`` (exclusive; default: no end)."""
    view = escrow.job(job_key)
    evs = list(escrow.read_events() if events is None else events)
    mine = [e for e in evs if _key(e) == job_key]
    books = JobBooks(job_key=job_key, view=view, payer=view.payer, operator=view.operator,
                     contract=escrow.contract_address)
    kinds: dict[str, str] = {}  # tx hash -> kind
    for e in mine:
        a = e.args
        if e.name == "JobFunded":
            books.deposited += int(a["amount"])
        elif e.name == "TrainerAdded":
            t = _trainer(books, a["trainer"])
            t.price, t.units = int(a["price"]), t.units + int(a["units"])
        elif e.name == "UnitSettled":
            t = _trainer(books, a["trainer"])
            if a["accepted"]:
                t.accepted += 1
                t.paid += int(a["amount"])
                books.paid += int(a["amount"])
            else:
                t.rejected += 1
        elif e.name == "UnitClaimed":
            t = _trainer(books, a["trainer"])
            t.claimed += 1
            t.paid += int(a["amount"])
            books.paid += int(a["amount"])
        elif e.name == "Refunded":
            books.refunded += int(a["amount"])
        elif e.name == "JobReleased":
            books.released_refund = int(a["refund"])
            books.released_by = str(a["by"])
    for tx, names in _names_by_tx(mine).items():
        kinds[tx] = next((kind for kind, ev in TX_KINDS if ev in names), "other")
    # Withdrawals are per account, not per job: count those of the job's parties from the
    # block it was funded in (on a devnet that runs one job, that is exactly the job's).
    start = min((e.block_number for e in mine), default=0)
    parties = {books.payer.lower(): "payer", **{a.lower(): "trainer" for a in books.trainers}}
    for e in evs:
        if e.name != "Withdrawn" or e.block_number < start:
            continue
        if withdrawals_until is not None and e.block_number >= withdrawals_until:
            continue
        who = str(e.args["account"]).lower()
        if who not in parties:
            continue
        kinds[e.tx_hash] = "withdraw"
        if parties[who] == "payer":
            books.payer_withdrawn += int(e.args["amount"])
        else:
            books.trainers[who].withdrawn += int(e.args["amount"])
    for kind in kinds.values():
        books.transactions[kind] = books.transactions.get(kind, 0) + 1
    if with_gas:
        for tx, kind in kinds.items():
            used = tx_gas(escrow, tx)
            books.gas[kind] = books.gas.get(kind, 0) + used
        books.gas["total"] = sum(books.gas.values())
    return books


def tx_gas(escrow: EscrowV2, tx_hash: str) -> int:
    """Gas used by one mined transaction."""
    return int(escrow.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])


def funded_jobs(events: Iterable[LedgerEvent], payer: str | None = None) -> list[bytes]:
    """Keys of the jobs funded in ``events`` (by ``payer`` if given), oldest first."""
    want = to_checksum_address(payer) if payer else None
    return [bytes(e.args["jobKey"]) for e in events
            if e.name == "JobFunded" and (want is None or to_checksum_address(e.args["payer"]) == want)]


def reason_hashes(events: Iterable[LedgerEvent], job_key: bytes) -> dict[tuple[int, int], str]:
    """``(round, unit) -> 0x reason hash`` of the job's rejected units as settled on chain."""
    return {(int(e.args["round"]), int(e.args["unit"])): "0x" + bytes(e.args["reasonHash"]).hex()
            for e in events
            if e.name == "UnitSettled" and _key(e) == job_key and not e.args["accepted"]}


def _key(e: LedgerEvent) -> bytes | None:
    k = e.args.get("jobKey")
    return bytes(k) if k is not None else None


def _trainer(books: JobBooks, address: str) -> TrainerBooks:
    addr = to_checksum_address(address)
    return books.trainers.setdefault(addr.lower(), TrainerBooks(addr))


def _names_by_tx(events: Iterable[LedgerEvent]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e.tx_hash, set()).add(e.name)
    return out
