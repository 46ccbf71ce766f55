"""The devnet topic log: Hedera Consensus Service rules, served over HTTP from SQLite.

Run as its own process: ``python -m fedswarm.ledger.auditserver --db FILE --port P`` (binds
127.0.0.1; prints one JSON line ``{"audit": {"url": ...}}`` on stdout when ready). Or call
:func:`start_audit_server`, the devnet service pattern.

Endpoints (read ones in the mirror node's REST shape):

- ``POST /api/v1/topics`` ``{memo, valid_start, admin_key, submit_key, public_key, signature,
  signatures}`` → ``{topic_id}``
- ``POST /api/v1/topics/{id}/messages`` ``{message (base64), valid_start, chunk, public_key,
  signature, signatures}`` → receipt; the Ed25519 signature covers
  :func:`audit.submit_signing_bytes`. Unsigned → 401, bad signature → 403; nothing is stored.
- ``POST /api/v1/topics/{id}/update`` ``{memo?, admin_key?, submit_key?, valid_start, ...}``
  and ``POST /api/v1/topics/{id}/delete`` ``{valid_start, ...}``: admin-key operations.

``public_key``/``signature`` are the payer's; ``signatures`` (a list of ``{public_key,
signature}`` over the same bytes) play the part of the rest of a Hedera signature map. Topic
keys are enforced as the consensus service does (:mod:`.topickeys`): with a submit key only
messages it signs are sequenced (else 403 ``INVALID_SIGNATURE``); without one anyone may write;
the admin key must sign creation, update and delete; a topic without one is immutable (403
``UNAUTHORIZED``); a deleted topic takes no messages (400 ``INVALID_TOPIC_ID``) and its history
stays readable.
- ``GET /api/v1/topics/{id}/messages?order=asc&limit=..&sequencenumber=gt:N`` → mirror page
- ``GET /api/v1/topics/{id}`` → topic info; ``GET /health``.

Like Hedera: a payer is an account ``0.0.N`` registered for its public key on first use;
a transaction id is (payer, valid start), valid for 180 s and accepted once; sequence numbers
per topic are gap-free (each submission is one ``BEGIN IMMEDIATE`` SQLite transaction, which
also serialises several server processes on one file); consensus timestamps are strictly
increasing across the whole log; running hashes are version 3 (:mod:`.runninghash`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import queue
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fedswarm.ledger.audit import (
    CHUNK_SIZE,
    create_signing_bytes,
    delete_signing_bytes,
    submit_signing_bytes,
    update_signing_bytes,
)
from fedswarm.ledger.auditrequests import (
    RequestError,
    check_signatures,
    parse_bounds,
    parse_chunk,
    parse_key,
    parse_valid_start,
    require,
)
from fedswarm.ledger.runninghash import RUNNING_HASH_VERSION, ZERO_HASH, EntityId, next_running_hash
from fedswarm.ledger.topickeys import KeySpec, decode_key, encode_key, is_satisfied
from fedswarm.ledger.verify import format_timestamp
from fedswarm.protocol.decode import DecodeError, decode_object
from fedswarm.tools import serve_announcing, spawn_announcing

log = logging.getLogger("fedswarm.ledger.auditserver")

# Hedera's limits: a transaction is at most 6 KiB, a message at most 20 chunks of 1024 bytes.
MAX_BODY = 6 * 1024
VALID_DURATION_NS = 180 * 1_000_000_000  # Hedera's maximum transaction valid duration
FUTURE_SKEW_NS = 10 * 1_000_000_000
FIRST_ENTITY_NUM = 1001
DEFAULT_LIMIT = 25  # the mirror node's default page size
MAX_LIMIT = 100
_TOPIC_PATH = re.compile(r"^/api/v1/topics/(\d+\.\d+\.\d+)(/messages|/update|/delete)?$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    num INTEGER PRIMARY KEY, public_key BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS topics (
    num INTEGER PRIMARY KEY, memo TEXT NOT NULL, admin_num INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, sequence_number INTEGER NOT NULL, running_hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    payer_num INTEGER NOT NULL, valid_start TEXT NOT NULL, PRIMARY KEY (payer_num, valid_start));
CREATE TABLE IF NOT EXISTS messages (
    topic_num INTEGER NOT NULL, sequence_number INTEGER NOT NULL, consensus_ns INTEGER NOT NULL,
    payer_num INTEGER NOT NULL, message BLOB NOT NULL, running_hash BLOB NOT NULL,
    chunk_json TEXT, PRIMARY KEY (topic_num, sequence_number));
"""
# Columns added after the first release: a devnet's database outlives upgrades.
_MIGRATIONS = ("ALTER TABLE topics ADD COLUMN admin_key TEXT",
               "ALTER TABLE topics ADD COLUMN submit_key TEXT",
               "ALTER TABLE topics ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")


class TopicStore:
    """The SQLite-backed topic log (thread-safe: a small pool of connections)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        with self._conn() as conn:
            conn.executescript(SCHEMA)
            for stmt in _MIGRATIONS:
                with contextlib.suppress(sqlite3.OperationalError):  # already migrated
                    conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('next_entity', ?), ('last_consensus_ns', 0)",
                (FIRST_ENTITY_NUM,),
            )

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the read of the
        # topic's sequence/running hash and the write of the next one are one transaction.
        conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._pool.put(conn)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- helpers inside a write transaction ---

    @staticmethod
    def _next_entity(conn: sqlite3.Connection) -> int:
        (num,) = conn.execute("SELECT value FROM meta WHERE key='next_entity'").fetchone()
        conn.execute("UPDATE meta SET value=? WHERE key='next_entity'", (num + 1,))
        return int(num)

    def _account_for(self, conn: sqlite3.Connection, public_key: bytes) -> int:
        row = conn.execute("SELECT num FROM accounts WHERE public_key=?", (public_key,)).fetchone()
        if row:
            return int(row[0])
        num = self._next_entity(conn)
        conn.execute("INSERT INTO accounts VALUES (?, ?)", (num, public_key))
        return num

    @staticmethod
    def _consensus_now(conn: sqlite3.Connection) -> int:
        (last,) = conn.execute("SELECT value FROM meta WHERE key='last_consensus_ns'").fetchone()
        now = max(time.time_ns(), int(last) + 1)  # strictly increasing even if the clock steps back
        conn.execute("UPDATE meta SET value=? WHERE key='last_consensus_ns'", (now,))
        return now

    @staticmethod
    def _use_transaction_id(conn: sqlite3.Connection, payer: int, valid_start: str) -> None:
        secs, nanos = parse_valid_start(valid_start)
        start_ns = secs * 1_000_000_000 + nanos
        now = time.time_ns()
        if start_ns > now + FUTURE_SKEW_NS:
            raise RequestError(400, "transaction valid start is in the future: check the clock")
        if start_ns < now - VALID_DURATION_NS:
            raise RequestError(400, "transaction expired (valid start older than 180 s): resubmit")
        try:
            conn.execute("INSERT INTO transactions VALUES (?, ?)", (payer, valid_start))
        except sqlite3.IntegrityError:
            raise RequestError(409, f"duplicate transaction 0.0.{payer}@{valid_start}") from None

    # --- operations ---

    def create_topic(self, memo: str, public_key: bytes, valid_start: str,
                     admin_key: KeySpec | None = None, submit_key: KeySpec | None = None) -> dict[str, Any]:
        """Create a topic paid by the signer's account with the given (checked) keys."""
        with self._write() as conn:
            payer = self._account_for(conn, public_key)
            self._use_transaction_id(conn, payer, valid_start)
            num = self._next_entity(conn)
            created = self._consensus_now(conn)
            conn.execute(
                "INSERT INTO topics (num, memo, admin_num, created_ns, sequence_number, running_hash,"
                " admin_key, submit_key, deleted) VALUES (?, ?, ?, ?, 0, ?, ?, ?, 0)",
                (num, memo, payer, created, ZERO_HASH, encode_key(admin_key), encode_key(submit_key)),
            )
        return {"topic_id": f"0.0.{num}", "payer_account_id": f"0.0.{payer}",
                "consensus_timestamp": format_timestamp(created)}

    def _keys(self, conn: sqlite3.Connection, topic: EntityId) -> tuple[KeySpec | None, KeySpec | None]:
        row = conn.execute(
            "SELECT admin_key, submit_key, deleted FROM topics WHERE num=?", (topic.num,)
        ).fetchone()
        if row is None or topic.shard or topic.realm:
            raise RequestError(404, f"topic {topic} not found: create it first")
        if row[2]:
            raise RequestError(400, f"INVALID_TOPIC_ID: topic {topic} was deleted")
        return decode_key(row[0]), decode_key(row[1])

    def _admin(self, conn: sqlite3.Connection, topic: EntityId, signers: set[bytes]) -> None:
        admin, _ = self._keys(conn, topic)
        if admin is None:
            raise RequestError(403, f"UNAUTHORIZED: topic {topic} has no admin key: it cannot be"
                                    " updated or deleted")
        if not is_satisfied(admin, signers):
            raise RequestError(403, f"INVALID_SIGNATURE: topic {topic}'s admin key did not sign")

    def update_topic(self, topic: EntityId, public_key: bytes, valid_start: str,
                     signers: set[bytes], changes: dict[str, Any]) -> dict[str, Any]:
        """Apply memo/key ``changes`` (a key of None clears it) signed by the admin key (and by
        a new admin key), like ``ConsensusUpdateTopic``."""
        with self._write() as conn:
            self._admin(conn, topic, signers)
            new_admin = changes.get("admin_key")
            if new_admin is not None and not is_satisfied(new_admin, signers):
                raise RequestError(403, "INVALID_SIGNATURE: the new admin key must sign its update")
            payer = self._account_for(conn, public_key)
            self._use_transaction_id(conn, payer, valid_start)
            for column in ("memo", "admin_key", "submit_key"):  # fixed names, never the client's
                if column in changes:
                    value = changes[column] if column == "memo" else encode_key(changes[column])
                    conn.execute(f"UPDATE topics SET {column}=? WHERE num=?", (value, topic.num))
        return {"topic_id": str(topic), "status": "SUCCESS"}

    def delete_topic(self, topic: EntityId, public_key: bytes, valid_start: str,
                     signers: set[bytes]) -> dict[str, Any]:
        """Mark the topic deleted (admin key signs); its messages stay readable."""
        with self._write() as conn:
            self._admin(conn, topic, signers)
            payer = self._account_for(conn, public_key)
            self._use_transaction_id(conn, payer, valid_start)
            conn.execute("UPDATE topics SET deleted=1 WHERE num=?", (topic.num,))
        return {"topic_id": str(topic), "status": "SUCCESS"}

    def submit(
        self, topic: EntityId, public_key: bytes, valid_start: str, message: bytes,
        chunk: dict[str, Any] | None, signers: set[bytes] | None = None,
    ) -> dict[str, Any]:
        """Sequence one chunk: next sequence number, consensus time and running hash. A topic
        with a submit key takes the chunk only if ``signers`` satisfy it."""
        with self._write() as conn:
            _, submit_key = self._keys(conn, topic)
            if submit_key is not None and not is_satisfied(submit_key, signers or {public_key}):
                raise RequestError(403, f"INVALID_SIGNATURE: topic {topic} has a submit key and this"
                                        " message is not signed by it")
            row = conn.execute(
                "SELECT sequence_number, running_hash FROM topics WHERE num=?", (topic.num,)
            ).fetchone()
            payer = self._account_for(conn, public_key)
            self._use_transaction_id(conn, payer, valid_start)
            seq, prev_hash = int(row[0]) + 1, bytes(row[1])
            ts = self._consensus_now(conn)
            secs, nanos = divmod(ts, 1_000_000_000)
            running = next_running_hash(
                prev_hash, EntityId(0, 0, payer), topic, secs, nanos, seq, message
            )
            chunk_json = None
            if chunk is not None:
                chunk_json = json.dumps({
                    "initial_transaction_id": {
                        "account_id": f"0.0.{payer}",
                        "nonce": 0,
                        "scheduled": False,
                        "transaction_valid_start": chunk["initial_valid_start"],
                    },
                    "number": chunk["number"],
                    "total": chunk["total"],
                })
            conn.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic.num, seq, ts, payer, message, running, chunk_json),
            )
            conn.execute(
                "UPDATE topics SET sequence_number=?, running_hash=? WHERE num=?",
                (seq, running, topic.num),
            )
        return {
            "topic_id": str(topic),
            "sequence_number": seq,
            "running_hash": base64.b64encode(running).decode(),
            "running_hash_version": RUNNING_HASH_VERSION,
            "consensus_timestamp": format_timestamp(ts),
            "payer_account_id": f"0.0.{payer}",
            "transaction_id": f"0.0.{payer}@{valid_start}",
        }

    def topic_info(self, topic: EntityId) -> dict[str, Any] | None:
        """Memo, sequence number and running hash of a topic (None if unknown)."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT memo, admin_num, created_ns, sequence_number, running_hash, admin_key,"
                " submit_key, deleted FROM topics WHERE num=?", (topic.num,)
            ).fetchone()
        if row is None or topic.shard or topic.realm:
            return None
        return {
            "topic_id": str(topic), "memo": row[0], "admin_account_id": f"0.0.{row[1]}",
            "created_timestamp": format_timestamp(row[2]), "sequence_number": row[3],
            "running_hash": base64.b64encode(row[4]).decode(),
            "running_hash_version": RUNNING_HASH_VERSION,
            "admin_key": decode_key(row[5]), "submit_key": decode_key(row[6]), "deleted": bool(row[7]),
        }

    def messages(
        self, topic: EntityId, where: list[tuple[str, str, int]], order: str, limit: int
    ) -> list[dict[str, Any]]:
        """Messages of ``topic`` filtered by (column, op, value) bounds, in the mirror shape."""
        sql = ("SELECT sequence_number, consensus_ns, payer_num, message, running_hash, chunk_json "
               "FROM messages WHERE topic_num=?")
        args: list[Any] = [topic.num]
        for column, op, value in where:  # column and op come from fixed tables, never the client
            sql += f" AND {column} {op} ?"
            args.append(value)
        sql += f" ORDER BY sequence_number {'DESC' if order == 'desc' else 'ASC'} LIMIT ?"
        args.append(limit)
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [
            {
                "chunk_info": json.loads(chunk) if chunk else None,
                "consensus_timestamp": format_timestamp(ts),
                "message": base64.b64encode(msg).decode(),
                "payer_account_id": f"0.0.{payer}",
                "running_hash": base64.b64encode(rh).decode(),
                "running_hash_version": RUNNING_HASH_VERSION,
                "sequence_number": seq,
                "topic_id": str(topic),
            }
            for seq, ts, payer, msg, rh, chunk in rows
        ]


class _Handler(BaseHTTPRequestHandler):
    server_version = "fedswarm-audit/1"
    protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection per client
    timeout = 30  # a stalled client frees its thread
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    store: TopicStore  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        # The mirror node's error shape.
        self._send(status, {"_status": {"messages": [{"message": message}]}})

    def _dispatch(self, method: str) -> None:
        try:
            if method == "POST":
                body = self._read_json()
                self._send(*self._post(urlsplit(self.path).path, body))
            else:
                self._send(*self._get())
        except RequestError as exc:
            if exc.status == 413:
                self.close_connection = True
            self._error(exc.status, exc.message)
        except Exception:  # a bug must not kill the server; log it, answer 500
            log.exception("audit server error on %s %s", method, self.path[:200])
            self.close_connection = True
            self._error(500, "internal error")

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        self._dispatch("POST")

    def _read_json(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise RequestError(411, "Content-Length required") from None
        if length < 0 or length > MAX_BODY:
            raise RequestError(413, f"body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:  # the one bounded decoder: size, then nesting depth, then parse
            return decode_object(raw, max_bytes=MAX_BODY, max_depth=8, what="transaction")
        except DecodeError as exc:
            raise RequestError(400, str(exc)) from None

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/api/v1/topics":
            memo = require(body, "memo", str)
            if len(memo.encode()) > 100:
                raise RequestError(400, "memo over 100 bytes")
            valid_start = require(body, "valid_start", str)
            admin, submit = parse_key(body.get("admin_key")), parse_key(body.get("submit_key"))
            public_key, signers = check_signatures(
                body, create_signing_bytes(memo, valid_start, body.get("admin_key"), body.get("submit_key"))
            )
            if admin is not None and not is_satisfied(admin, signers):
                raise RequestError(403, "INVALID_SIGNATURE: the admin key must sign the topic's creation")
            return 201, self.store.create_topic(memo, public_key, valid_start, admin, submit)
        m = _TOPIC_PATH.match(path)
        if not m or not m.group(2):
            raise RequestError(404, f"no such endpoint: POST {path[:100]}")
        topic_text = m.group(1)
        if m.group(2) != "/messages":
            return 200, self._admin_op(m.group(2), topic_text, body)
        message_b64 = require(body, "message", str)
        valid_start = require(body, "valid_start", str)
        chunk = parse_chunk(body.get("chunk"))
        public_key, signers = check_signatures(
            body, submit_signing_bytes(topic_text, valid_start, message_b64, chunk)
        )
        try:
            topic = EntityId.parse(topic_text)
            message = base64.b64decode(message_b64, validate=True)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if not message:
            raise RequestError(400, "empty message: the network refuses empty messages")
        if len(message) > CHUNK_SIZE:
            raise RequestError(400, f"message chunk over {CHUNK_SIZE} bytes: split it")
        return 200, self.store.submit(topic, public_key, valid_start, message, chunk, signers)

    def _admin_op(self, op: str, topic_text: str, body: dict[str, Any]) -> dict[str, Any]:
        valid_start = require(body, "valid_start", str)
        try:
            topic = EntityId.parse(topic_text)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if op == "/delete":
            public_key, signers = check_signatures(body, delete_signing_bytes(topic_text, valid_start))
            return self.store.delete_topic(topic, public_key, valid_start, signers)
        changes = {k: body[k] for k in ("memo", "admin_key", "submit_key") if k in body}
        if "memo" in changes and (not isinstance(changes["memo"], str) or len(changes["memo"].encode()) > 100):
            raise RequestError(400, "memo must be a string of at most 100 bytes")
        public_key, signers = check_signatures(body, update_signing_bytes(topic_text, valid_start, changes))
        parsed = {k: v if k == "memo" else parse_key(v, clearing=True) for k, v in changes.items()}
        return self.store.update_topic(topic, public_key, valid_start, signers, parsed)

    def _get(self) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(self.path)
        if parts.path == "/health":
            return 200, {"ok": True}
        m = _TOPIC_PATH.match(parts.path)
        if not m:
            raise RequestError(404, f"no such endpoint: GET {parts.path[:100]}")
        try:
            topic = EntityId.parse(m.group(1))
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        if not m.group(2):
            info = self.store.topic_info(topic)
            if info is None:
                raise RequestError(404, f"topic {topic} not found")
            return 200, info
        return 200, self._messages_page(topic, parse_qs(parts.query))

    def _messages_page(self, topic: EntityId, query: dict[str, list[str]]) -> dict[str, Any]:
        order = (query.get("order") or ["asc"])[-1].lower()
        if order not in ("asc", "desc"):
            raise RequestError(400, "order must be asc or desc")
        try:
            limit = int((query.get("limit") or [str(DEFAULT_LIMIT)])[-1])
        except ValueError:
            raise RequestError(400, "limit must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise RequestError(400, f"limit must be within 1..{MAX_LIMIT}")
        bounds = parse_bounds(query)
        if self.store.topic_info(topic) is None:
            raise RequestError(404, f"topic {topic} not found")
        messages = self.store.messages(topic, bounds, order, limit)
        nxt = None
        if len(messages) == limit:
            # Next page: same query, the sequence bound moved past the last message given.
            last = messages[-1]["sequence_number"]
            # Keep the far-side bounds (e.g. lt:N when ascending); replace the near side.
            far = ("lt", "lte") if order == "asc" else ("gt", "gte")
            keep = [s for s in query.get("sequencenumber", []) if s.partition(":")[0] in far]
            seq_params = keep + [f"{'gt' if order == 'asc' else 'lt'}:{last}"]
            params: list[tuple[str, str]] = [("limit", str(limit)), ("order", order)]
            params += [("sequencenumber", s) for s in seq_params]
            params += [("timestamp", t) for t in query.get("timestamp", [])]
            nxt = f"/api/v1/topics/{topic}/messages?{urlencode(params)}"
        return {"messages": messages, "links": {"next": nxt}}


class AuditHTTPServer(ThreadingHTTPServer):
    """Threading HTTP server whose handler threads are daemons (shutdown never hangs)."""

    daemon_threads = True
    allow_reuse_address = True


def make_server(db_path: Path, host: str = "127.0.0.1", port: int = 0) -> AuditHTTPServer:
    """An audit HTTP server bound to ``host:port`` (not yet serving)."""
    store = TopicStore(db_path)
    handler = type("Handler", (_Handler,), {"store": store})
    return AuditHTTPServer((host, port), handler)


def start_audit_server(
    db_path: Path, port: int = 0, *, host: str = "127.0.0.1", log_path: Path | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the devnet topic log in its own process and wait until it serves.

    Returns ``(popen, {"audit": {"url", "db", "pid"}})``; stop it with ``popen.terminate()``.
    Logs go to ``log_path`` (default: next to the database, ``.log``).
    """
    db_path = Path(db_path).expanduser().resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = log_path or db_path.with_suffix(".log")
    proc, info = spawn_announcing(
        [sys.executable, "-m", "fedswarm.ledger.auditserver", "--db", str(db_path), "--host", host, "--port", str(port)],
        log_path, "audit server", timeout)
    info["audit"]["pid"] = proc.pid
    return proc, info


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m fedswarm.ledger.auditserver")
    parser.add_argument("--db", required=True, help="SQLite file holding the topics")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(Path(args.db), args.host, args.port)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    log.info("audit topic log serving on %s (db %s)", url, args.db)
    return serve_announcing(server, {"audit": {"url": url, "db": str(Path(args.db).resolve())}})


if __name__ == "__main__":
    sys.exit(main())
