"""The trainer's durable state: jobs it bid on, the units of work it holds and the operator's
receipts for them, in SQLite.

A trainer can be killed at any moment (the demo does it with SIGKILL); everything it needs to
finish or abandon a unit cleanly after a restart is written here before the step that depends
on it: the work unit itself on acceptance, the encrypted update's hash, size and fresh key
before the upload, the operator's signed receipt before the update's key is handed over (the
receipt is what pays the unit if the operator never settles it: it must outlive the trainer).

Small synchronous writes (WAL, ``synchronous=NORMAL``): fast enough to call from the trio loop.
The file lives under the node's home, which is private (0700): a stored work unit holds
presigned URLs and sealed keys.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    client_peer_id TEXT NOT NULL,
    audit_topic TEXT NOT NULL,
    price_wei TEXT NOT NULL,
    state TEXT NOT NULL,             -- bid | finished
    finished_state TEXT,             -- done | failed | cancelled
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    contract TEXT NOT NULL,          -- the escrow the job was funded on (the receipt's domain)
    chain_id INTEGER NOT NULL,
    operator TEXT NOT NULL,
    receipt_json TEXT NOT NULL,      -- ledger.receipts.Receipt.to_json()
    signature TEXT NOT NULL,         -- 0x-hex, 65 bytes
    status TEXT NOT NULL,            -- held | paid | rejected | claimed | lapsed
    tx TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, round, unit)
);
CREATE TABLE IF NOT EXISTS units (
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    state TEXT NOT NULL,
    work_json TEXT NOT NULL,         -- the WorkUnit as received
    deadline REAL NOT NULL,
    update_sha256 TEXT,
    update_size INTEGER,
    num_samples INTEGER,
    train_loss REAL,
    seconds REAL,
    commit_tx TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, round, unit)
);
"""
# Columns added with settlement v2 (an older trainer.db gets them on open).
JOB_COLUMNS_V2 = {
    "operator": "TEXT",       # the announcement's signer (checked against the chain)
    "contract": "TEXT",       # the escrow the job is funded on (lowercase); NULL: a v1 job
    "chain_id": "INTEGER",
    "job_key": "TEXT",        # hex, no 0x (from the first work unit)
    "declined": "TEXT",       # the last reason a unit of this job was declined
    "stopped": "TEXT",        # why this trainer does no more work for the job (NULL: it does)
}
UNIT_COLUMNS_V2 = {"update_key": "TEXT"}  # the update's fresh key (hex) until it is handed over


class UnitState(StrEnum):
    """Where one unit of work stands, in the order a healthy unit goes through them."""

    ACCEPTED = "accepted"      # stored, work not started (or interrupted before any result)
    WORKING = "working"        # downloading / training
    UPLOADING = "uploading"    # update encrypted under a fresh key; hash, size, key stored
    UPLOADED = "uploaded"      # in the store; UnitDone next, a receipt expected back
    RECEIPTED = "receipted"    # the operator's valid receipt is stored; the key goes next
    DELIVERED = "delivered"    # the client has the update's key (v1: acknowledged UnitDone)
    REFUSED = "refused"        # the operator refused the delivery, signed (reassigned...)
    UNRECEIPTED = "unreceipted"  # no valid receipt came: we stopped working for the job
    FAILED = "failed"          # given back with UnitFailed
    ABANDONED = "abandoned"    # the deadline passed while we were down
    PAID = "paid"              # accepted by the operator's settlement
    REJECTED = "rejected"      # rejected by the operator's settlement
    CLAIMED = "claimed"        # paid by our own claim
    COMMITTED = "committed"    # v1 only: hash committed on chain (old records)


ACTIVE_STATES = (UnitState.ACCEPTED, UnitState.WORKING, UnitState.UPLOADING)
# Work done, the fair exchange with the client not finished: resumed after a restart.
DELIVERING_STATES = (UnitState.UPLOADED, UnitState.RECEIPTED)
# v1 units committed on chain and not yet known to be settled: the v1 claim loop watches these.
UNSETTLED_STATES = (UnitState.COMMITTED, UnitState.DELIVERED)
# A unit in one of these may be taken again if the client re-sends it.
RETAKABLE_STATES = (UnitState.FAILED, UnitState.ABANDONED)


class ReceiptStatus(StrEnum):
    """What became of a receipt on chain."""

    HELD = "held"              # not settled yet: claimable after the settle window
    PAID = "paid"              # the operator settled the unit as accepted
    REJECTED = "rejected"      # the operator settled the unit as rejected
    CLAIMED = "claimed"        # we claimed it ourselves
    LAPSED = "lapsed"          # can no longer pay (job released, or issued after it closed)


@dataclass(frozen=True)
class JobRecord:
    """A job this trainer bid on."""

    job_id: str
    client_peer_id: str
    audit_topic: str
    price_wei: int
    state: str
    finished_state: str | None
    operator: str | None = None
    contract: str | None = None
    chain_id: int | None = None
    job_key: str | None = None
    declined: str | None = None
    stopped: str | None = None

    @property
    def is_v2(self) -> bool:
        """Announced on the v2 escrow by a signing operator (else an old v1 job)."""
        return bool(self.contract and self.operator)


@dataclass(frozen=True)
class ReceiptRecord:
    """An operator's receipt we hold: what :meth:`EscrowV2.claim` needs, and its fate."""

    job_id: str
    round: int
    unit: int
    contract: str
    chain_id: int
    operator: str
    receipt: dict[str, Any]
    signature: str
    status: ReceiptStatus
    tx: str | None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.round, self.unit)


@dataclass(frozen=True)
class UnitRecord:
    """One unit of work this trainer holds or held."""

    job_id: str
    round: int
    unit: int
    state: UnitState
    work: dict[str, Any]
    deadline: float
    update_sha256: str | None
    update_size: int | None
    num_samples: int | None
    train_loss: float | None
    seconds: float | None
    commit_tx: str | None
    reason: str | None
    updated_at: float
    update_key: str | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.round, self.unit)

    def public(self) -> dict[str, Any]:
        """The unit without its work order (which holds presigned URLs and sealed keys)."""
        return {
            "job_id": self.job_id, "round": self.round, "unit": self.unit,
            "state": self.state.value, "deadline": self.deadline,
            "update_sha256": self.update_sha256, "update_size": self.update_size,
            "num_samples": self.num_samples, "train_loss": self.train_loss,
            "seconds": self.seconds, "commit_tx": self.commit_tx, "reason": self.reason,
            "updated_at": self.updated_at,
        }


class TrainerDB:
    """SQLite store of a trainer's jobs and units. Thread-safe (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._add_columns("jobs", JOB_COLUMNS_V2)
        self._add_columns("units", UNIT_COLUMNS_V2)

    def _add_columns(self, table: str, columns: dict[str, str]) -> None:
        have = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    # -- jobs ---------------------------------------------------------------------------------

    def add_job(self, job_id: str, client_peer_id: str, audit_topic: str, price_wei: int, *,
                operator: str | None = None, contract: str | None = None,
                chain_id: int | None = None) -> bool:
        """Remember a job we bid on (v2: the announcement's verified operator and the escrow
        it names); False if it was already known (nothing changes then)."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO jobs (job_id, client_peer_id, audit_topic, price_wei, state, "
                "finished_state, created_at, updated_at, operator, contract, chain_id) "
                "VALUES (?, ?, ?, ?, 'bid', NULL, ?, ?, ?, ?, ?)",
                (job_id, client_peer_id, audit_topic, str(price_wei), now, now, operator,
                 contract.lower() if contract else None, chain_id),
            )
            return cur.rowcount == 1

    def set_job(self, job_id: str, **fields: str | None) -> None:
        """Set any of ``job_key``, ``declined``, ``stopped`` on job ``job_id``."""
        bad = set(fields) - {"job_key", "declined", "stopped"}
        if bad:
            raise ValueError(f"unknown job fields {sorted(bad)}")
        cols = ["updated_at = ?", *(f"{k} = ?" for k in fields)]
        with self._lock:
            self._conn.execute(f"UPDATE jobs SET {', '.join(cols)} WHERE job_id = ?",
                               [time.time(), *fields.values(), job_id])

    def stop_job(self, job_id: str, reason: str) -> bool:
        """Record that we do no more work for ``job_id``; False if it was stopped already."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET stopped = ?, updated_at = ? WHERE job_id = ? AND stopped IS NULL",
                (reason, time.time(), job_id))
            return cur.rowcount == 1

    def forget_job(self, job_id: str) -> bool:
        """Drop a job we bid on but were never given a unit of; False if it has units."""
        with self._lock:
            if self._conn.execute("SELECT 1 FROM units WHERE job_id = ? LIMIT 1", (job_id,)).fetchone():
                return False
            cur = self._conn.execute("DELETE FROM jobs WHERE job_id = ? AND state = 'bid'", (job_id,))
            return cur.rowcount == 1

    def job(self, job_id: str) -> JobRecord | None:
        """The job ``job_id`` or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, state: str | None = None) -> list[JobRecord]:
        """Every job (optionally only those in ``state``), oldest first."""
        sql, args = "SELECT * FROM jobs", ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at", args).fetchall()
        return [_job(r) for r in rows]

    def finish_job(self, job_id: str, finished_state: str) -> bool:
        """Mark a job finished; False if unknown or already finished."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET state = 'finished', finished_state = ?, updated_at = ? "
                "WHERE job_id = ? AND state != 'finished'",
                (finished_state, time.time(), job_id),
            )
            return cur.rowcount == 1

    # -- units --------------------------------------------------------------------------------

    def add_unit(self, job_id: str, round_: int, unit: int, work: dict[str, Any], deadline: float) -> bool:
        """Store a newly accepted unit. False if we already hold it (a retakable old one —
        failed or abandoned — is replaced)."""
        now = time.time()
        with self._lock:
            row = self._conn.execute(
                "SELECT state FROM units WHERE job_id = ? AND round = ? AND unit = ?",
                (job_id, round_, unit),
            ).fetchone()
            if row is not None and UnitState(row["state"]) not in RETAKABLE_STATES:
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO units (job_id, round, unit, state, work_json, deadline, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, round_, unit, UnitState.ACCEPTED.value, json.dumps(work), deadline, now, now),
            )
            return True

    def unit(self, job_id: str, round_: int, unit: int) -> UnitRecord | None:
        """One unit or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM units WHERE job_id = ? AND round = ? AND unit = ?",
                (job_id, round_, unit),
            ).fetchone()
        return _unit(row) if row else None

    def units(self, states: tuple[UnitState, ...] | None = None, job_id: str | None = None) -> list[UnitRecord]:
        """Units, optionally filtered by state and job, oldest first."""
        where, args = [], []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        sql = "SELECT * FROM units" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at", args).fetchall()
        return [_unit(r) for r in rows]

    def set_unit(self, key: tuple[str, int, int], state: UnitState, **fields: Any) -> None:
        """Move a unit to ``state`` and set any of: update_sha256, update_size, num_samples,
        train_loss, seconds, commit_tx, reason, update_key."""
        allowed = {"update_sha256", "update_size", "num_samples", "train_loss", "seconds",
                   "commit_tx", "reason", "update_key"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown unit fields {sorted(bad)}")
        cols = ["state = ?", "updated_at = ?", *(f"{k} = ?" for k in fields)]
        args = [state.value, time.time(), *fields.values(), *key]
        with self._lock:
            self._conn.execute(
                f"UPDATE units SET {', '.join(cols)} WHERE job_id = ? AND round = ? AND unit = ?",
                args,
            )

    # -- receipts -----------------------------------------------------------------------------

    def add_receipt(self, job_id: str, round_: int, unit: int, *, contract: str, chain_id: int,
                    operator: str, receipt: dict[str, Any], signature: str) -> bool:
        """Store a verified receipt; False if one for this unit is already held (kept as is)."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (job_id, round_, unit, contract.lower(), chain_id, operator, json.dumps(receipt),
                 signature, ReceiptStatus.HELD.value, now, now))
            return cur.rowcount == 1

    def receipt(self, job_id: str, round_: int, unit: int) -> ReceiptRecord | None:
        """The receipt of one unit, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM receipts WHERE job_id = ? AND round = ? AND unit = ?",
                (job_id, round_, unit)).fetchone()
        return _receipt(row) if row else None

    def receipts(self, job_id: str | None = None,
                 status: ReceiptStatus | None = None) -> list[ReceiptRecord]:
        """Receipts, optionally of one job and in one status, oldest first."""
        where, args = [], []
        if job_id is not None:
            where.append("job_id = ?")
            args.append(job_id)
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        sql = "SELECT * FROM receipts" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at", args).fetchall()
        return [_receipt(r) for r in rows]

    def set_receipt(self, key: tuple[str, int, int], status: ReceiptStatus, tx: str | None = None) -> None:
        """Record what became of a receipt on chain (and the claim's transaction)."""
        with self._lock:
            self._conn.execute(
                "UPDATE receipts SET status = ?, tx = COALESCE(?, tx), updated_at = ? "
                "WHERE job_id = ? AND round = ? AND unit = ?", (status.value, tx, time.time(), *key))

    def counts(self) -> dict[str, int]:
        """Number of units per state."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM units GROUP BY state").fetchall()
        return {r["state"]: int(r["n"]) for r in rows}


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(row["job_id"], row["client_peer_id"], row["audit_topic"], int(row["price_wei"]),
                     row["state"], row["finished_state"], operator=row["operator"],
                     contract=row["contract"], chain_id=row["chain_id"], job_key=row["job_key"],
                     declined=row["declined"], stopped=row["stopped"])


def _receipt(row: sqlite3.Row) -> ReceiptRecord:
    return ReceiptRecord(
        job_id=row["job_id"], round=int(row["round"]), unit=int(row["unit"]), contract=row["contract"],
        chain_id=int(row["chain_id"]), operator=row["operator"], receipt=json.loads(row["receipt_json"]),
        signature=row["signature"], status=ReceiptStatus(row["status"]), tx=row["tx"])


def _unit(row: sqlite3.Row) -> UnitRecord:
    return UnitRecord(
        job_id=row["job_id"], round=int(row["round"]), unit=int(row["unit"]),
        state=UnitState(row["state"]), work=json.loads(row["work_json"]),
        deadline=float(row["deadline"]), update_sha256=row["update_sha256"],
        update_size=row["update_size"], num_samples=row["num_samples"],
        train_loss=row["train_loss"], seconds=row["seconds"], commit_tx=row["commit_tx"],
        reason=row["reason"], updated_at=float(row["updated_at"]), update_key=row["update_key"],
    )
