"""The trainer's durable state: jobs it bid on and the units of work it holds, in SQLite.

A trainer can be killed at any moment (the demo does it with SIGKILL); everything it needs to
finish or abandon a unit cleanly after a restart is written here before the step that depends
on it: the work unit itself on acceptance, the encrypted update's hash and size before the
upload (so a commit that landed on chain just before a crash can be recognised), the commit
before the client is told.

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


class UnitState(StrEnum):
    """Where one unit of work stands, in the order a healthy unit goes through them."""

    ACCEPTED = "accepted"      # stored, work not started (or interrupted before any result)
    WORKING = "working"        # downloading / training
    UPLOADING = "uploading"    # update encrypted; hash and size stored; upload + commit next
    COMMITTED = "committed"    # hash on chain; the client still has to hear about it
    DELIVERED = "delivered"    # the client acknowledged UnitDone
    FAILED = "failed"          # given back with UnitFailed
    ABANDONED = "abandoned"    # the deadline passed while we were down
    PAID = "paid"              # accepted by the client's settlement
    REJECTED = "rejected"      # rejected by the client's settlement
    CLAIMED = "claimed"        # paid by our own claimUnsettled


ACTIVE_STATES = (UnitState.ACCEPTED, UnitState.WORKING, UnitState.UPLOADING)
# Committed on chain and not yet known to be settled: the claim loop watches these.
UNSETTLED_STATES = (UnitState.COMMITTED, UnitState.DELIVERED)
# A unit in one of these may be taken again if the client re-sends it.
RETAKABLE_STATES = (UnitState.FAILED, UnitState.ABANDONED)


@dataclass(frozen=True)
class JobRecord:
    """A job this trainer bid on."""

    job_id: str
    client_peer_id: str
    audit_topic: str
    price_wei: int
    state: str
    finished_state: str | None


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

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    # -- jobs ---------------------------------------------------------------------------------

    def add_job(self, job_id: str, client_peer_id: str, audit_topic: str, price_wei: int) -> bool:
        """Remember a job we bid on; False if it was already known (nothing changes then)."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?, ?, 'bid', NULL, ?, ?)",
                (job_id, client_peer_id, audit_topic, str(price_wei), now, now),
            )
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
        train_loss, seconds, commit_tx, reason."""
        allowed = {"update_sha256", "update_size", "num_samples", "train_loss", "seconds",
                   "commit_tx", "reason"}
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

    def counts(self) -> dict[str, int]:
        """Number of units per state."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM units GROUP BY state").fetchall()
        return {r["state"]: int(r["n"]) for r in rows}


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(row["job_id"], row["client_peer_id"], row["audit_topic"], int(row["price_wei"]),
                     row["state"], row["finished_state"])


def _unit(row: sqlite3.Row) -> UnitRecord:
    return UnitRecord(
        job_id=row["job_id"], round=int(row["round"]), unit=int(row["unit"]),
        state=UnitState(row["state"]), work=json.loads(row["work_json"]),
        deadline=float(row["deadline"]), update_sha256=row["update_sha256"],
        update_size=row["update_size"], num_samples=row["num_samples"],
        train_loss=row["train_loss"], seconds=row["seconds"], commit_tx=row["commit_tx"],
        reason=row["reason"], updated_at=float(row["updated_at"]),
    )
