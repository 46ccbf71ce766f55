"""The client's durable job state: SQLite under the node's home (WAL, one writer: the node).

Records are pydantic models stored as JSON beside a few indexed columns, so the state machine
in :mod:`fedswarm.roles.client.role` can restart from the last durable step: every transition is written
before the side effect it enables is considered done (and chain effects are re-checked on the
chain itself on resume, so nothing is paid twice).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

JobState = Literal["submitted", "prepared", "bidding", "selected", "awaiting-payment", "escrowed", "running",
                   "finishing", "done", "failed", "cancelled"]
NODE_OWNER = "node"  # a job submitted with the node's own credentials (else: a wallet address)
# assigned -> accepted (trainer took it) -> receipted (object checked, receipt signed: waiting
# for the update's key) -> delivered (decrypted, usable) -> checked (verdict recorded).
UnitState = Literal["assigned", "accepted", "receipted", "delivered", "failed", "lost", "checked"]
TERMINAL: set[str] = {"done", "failed", "cancelled"}


class JobTerms(BaseModel):
    """What the user asks for (validated before any money moves)."""

    rounds: int = Field(5, ge=1, le=1000)
    local_epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=65_536)
    lr: float = Field(0.01, gt=0, le=10)
    strategy: str = "fedavg"
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    trainers: int = Field(3, ge=1, le=256)
    standby: int = Field(1, ge=0, le=256)
    price_cap_wei: int = Field(10**16, ge=1, lt=1 << 128)
    round_deadline_s: float = Field(120.0, ge=5, le=86_400)
    settle_window_s: int = Field(3600, ge=10, le=30 * 86_400)
    # How long after the settle window a receipt can still be claimed; the contract refuses
    # less than its minimum claim window (devnet: 10 s, production: 1 hour).
    claim_window_s: int = Field(86_400, ge=10, le=30 * 86_400)
    # The job's deadline on chain, in seconds from funding (receipts issued later never pay;
    # a client that vanished lets the payer release at deadline + both windows). None: three
    # times every round's deadline, plus an hour.
    deadline_s: int | None = Field(None, ge=60, le=365 * 86_400)
    # The base probability that the client re-executes any delivered unit (besides the round's
    # reference, new trainers' and doubtful units): more verification for more of the client's CPU.
    reexec_fraction: float = Field(0.1, ge=0, le=1)
    # No longer used (kept so that stored terms load): the validation-loss gate is measured
    # against the client's re-executed reference with a bound from honest runs; new jobs that
    # set it are refused (api.jobs.parse_terms).
    loss_tolerance: float = Field(0.5, ge=0, le=100)
    validation_fraction: float = Field(0.2, gt=0, lt=0.9)
    label: str | None = None
    features: list[str] | None = None
    seed: int = Field(0, ge=0, lt=1 << 31)
    bid_window_s: float = Field(10.0, ge=0.5, le=600)  # closes early once enough bids arrived
    mode: Literal["train", "noop"] = "train"
    user_box_public: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # The origin the wallet's result key was derived for (fedswarm.wallet_envelope): the user
    # needs it again to derive the key that opens the result.
    result_key_origin: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\r\n]+$")


class ChainTx(BaseModel):
    """One transaction the client sent for a job (``kind``: fund, settle, complete, cancel,
    release, withdraw)."""

    kind: str
    tx_hash: str
    gas_used: int = 0
    fee: int = 0
    ts: float = Field(default_factory=time.time)
    note: str = ""


class EscrowRecord(BaseModel):
    """What the job's escrow did, as the client's settler saw it (amounts in contract units).
    Kept in its own table: the settler task writes it while the job's driver writes the job.

    ``closing`` is what the job asked for (``complete`` with ``result_pointer``, or ``cancel``);
    the settler does it once every verdict is on chain, then releases at ``release_at`` and
    deletes the job's objects after the retention time.
    """

    paid_wei: int = 0
    refunded_wei: int = 0
    release_at: int | None = None
    closing: Literal["complete", "cancel"] | None = None
    result_pointer: str | None = None
    closed: bool = False
    released: bool = False
    cleaned: bool = False
    skipped: list[dict[str, Any]] = Field(default_factory=list)  # units the chain skipped, and why
    txs: list[ChainTx] = Field(default_factory=list)
    released_at: float | None = None  # when this client saw the release (retention counts from it)
    error: str | None = None  # the settler's last failure (retried)


class JobRecord(BaseModel):
    """One job as the client drives it: its terms, where it stands and what it produced."""

    job_id: str
    state: JobState = "submitted"
    owner: str = NODE_OWNER  # "node" or the checksum address of the wallet that submitted it
    terms: JobTerms
    model: dict[str, Any]
    dataset_path: str
    dataset_name: str = ""
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    error: str | None = None
    audit_topic: str | None = None
    current_round: int = 0
    num_params: int = 0
    preprocessing: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = Field(default_factory=list)  # id, key, sha256, size, rows, path
    validation_path: str | None = None
    train_rows: int = 0
    chosen: list[dict[str, Any]] = Field(default_factory=list)  # bids (as dicts)
    standby: list[dict[str, Any]] = Field(default_factory=list)
    deposited_wei: int = 0
    escrow_tx: str | None = None
    # Settlement v2: where and how the job was funded. A job with ``job_key`` None that got
    # past selection was funded on the v1 contract (``contract`` then names it, if known).
    contract: str | None = None
    job_key: str | None = None  # hex, no 0x
    nonce: int | None = None
    payer: str | None = None
    operator: str | None = None
    result_key: str | None = None
    result_sha256: str | None = None
    # A wallet job: the fund() call the wallet sends (see roles.client.payment), and what the
    # result envelope holds (plaintext sha256 and size; the node keeps no plaintext copy).
    funding: dict[str, Any] | None = None
    funding_tx_hint: str | None = None
    result_plain_sha256: str | None = None
    result_size: int | None = None
    final_metrics: dict[str, float] = Field(default_factory=dict)
    events: list[dict[str, Any]] = Field(default_factory=list)  # human-readable timeline


class RoundRecord(BaseModel):
    """One round of a job: open (units out), checked (aggregated), settled (paid on chain)."""

    job_id: str
    round: int
    state: Literal["open", "checked", "settled"] = "open"
    started: float = Field(default_factory=time.time)
    finished: float | None = None  # checked and aggregated
    settled: float | None = None  # paid on chain: the next round starts after this
    deadline: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    reassigned: int = 0
    settle_tx: str | None = None
    # The review's summaries (reference, re-executions and budget, skipped audits, copies,
    # weight flags, cost): one per review of the round's deliveries.
    review: list[dict[str, Any]] = Field(default_factory=list)


class UnitRecord(BaseModel):
    """One work unit: which trainer has which slot of a round, and what became of it."""

    job_id: str
    round: int
    unit: int
    slot: int
    trainer_peer: str
    trainer_address: str
    price_wei: int
    state: UnitState = "assigned"
    update_key: str
    update_sha256: str | None = None
    num_samples: int = 0
    train_loss: float | None = None
    verdict: str | None = None  # "accepted" / "rejected"
    reason: str | None = None
    assigned_at: float = Field(default_factory=time.time)
    seconds: float | None = None
    # Settlement v2: the receipt the operator signed for this unit (Receipt.to_json() plus
    # "signature"), sent again as is if the trainer delivers twice; the verdict's settle batch.
    receipt: dict[str, Any] | None = None
    settle_tx: str | None = None
    settled: bool = False


class ClientDB:
    """Thread-safe access to the client's SQLite file (called from worker threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript("""
                CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, state TEXT, body TEXT);
                CREATE TABLE IF NOT EXISTS rounds (job_id TEXT, round INTEGER, body TEXT,
                    PRIMARY KEY (job_id, round));
                CREATE TABLE IF NOT EXISTS units (job_id TEXT, round INTEGER, unit INTEGER, body TEXT,
                    PRIMARY KEY (job_id, round, unit));
                CREATE TABLE IF NOT EXISTS secrets (job_id TEXT PRIMARY KEY, secret BLOB);
                CREATE TABLE IF NOT EXISTS escrow (job_id TEXT PRIMARY KEY, body TEXT);
            """)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # jobs
    def put_job(self, job: JobRecord) -> None:
        job.updated = time.time()
        self._exec("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (job.job_id, job.state, job.model_dump_json()))

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._exec("SELECT body FROM jobs WHERE job_id = ?", (job_id,))
        return JobRecord.model_validate_json(rows[0][0]) if rows else None

    def jobs(self, state: JobState | None = None) -> list[JobRecord]:
        """Every job (or those in ``state``), oldest first."""
        rows = (self._exec("SELECT body FROM jobs") if state is None
                else self._exec("SELECT body FROM jobs WHERE state = ?", (state,)))
        return sorted((JobRecord.model_validate_json(r[0]) for r in rows), key=lambda j: j.created)

    # secrets: the per-job key material never leaves this file (0600)
    def put_secret(self, job_id: str, secret: bytes) -> None:
        self._exec("INSERT OR REPLACE INTO secrets VALUES (?, ?)", (job_id, secret))

    def get_secret(self, job_id: str) -> bytes:
        rows = self._exec("SELECT secret FROM secrets WHERE job_id = ?", (job_id,))
        if not rows:
            raise KeyError(f"no secret for job {job_id}")
        return bytes(rows[0][0])

    # escrow: read-modify-write without awaiting in between (trio tasks then never interleave)
    def get_escrow(self, job_id: str) -> EscrowRecord:
        rows = self._exec("SELECT body FROM escrow WHERE job_id = ?", (job_id,))
        return EscrowRecord.model_validate_json(rows[0][0]) if rows else EscrowRecord()

    def put_escrow(self, job_id: str, esc: EscrowRecord) -> None:
        self._exec("INSERT OR REPLACE INTO escrow VALUES (?, ?)", (job_id, esc.model_dump_json()))

    # rounds
    def put_round(self, rnd: RoundRecord) -> None:
        self._exec("INSERT OR REPLACE INTO rounds VALUES (?, ?, ?)", (rnd.job_id, rnd.round, rnd.model_dump_json()))

    def get_round(self, job_id: str, round_: int) -> RoundRecord | None:
        rows = self._exec("SELECT body FROM rounds WHERE job_id = ? AND round = ?", (job_id, round_))
        return RoundRecord.model_validate_json(rows[0][0]) if rows else None

    def rounds(self, job_id: str) -> list[RoundRecord]:
        rows = self._exec("SELECT body FROM rounds WHERE job_id = ? ORDER BY round", (job_id,))
        return [RoundRecord.model_validate_json(r[0]) for r in rows]

    # units
    def put_unit(self, u: UnitRecord) -> None:
        self._exec("INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?)", (u.job_id, u.round, u.unit, u.model_dump_json()))

    def get_unit(self, job_id: str, round_: int, unit: int) -> UnitRecord | None:
        """One unit's record as stored now (None: no such unit)."""
        rows = self._exec("SELECT body FROM units WHERE job_id = ? AND round = ? AND unit = ?", (job_id, round_, unit))
        return UnitRecord.model_validate_json(rows[0][0]) if rows else None

    def units(self, job_id: str, round_: int | None = None) -> list[UnitRecord]:
        if round_ is None:
            rows = self._exec("SELECT body FROM units WHERE job_id = ? ORDER BY round, unit", (job_id,))
        else:
            rows = self._exec("SELECT body FROM units WHERE job_id = ? AND round = ? ORDER BY unit", (job_id, round_))
        return [UnitRecord.model_validate_json(r[0]) for r in rows]


def to_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
