"""The job page's audit view (``GET /api/v1/jobs/{id}/audit``) against the real FastAPI app and
an in-process audit log with real running hashes: the chain is verified and every message's
signed envelope is checked against the job's writers (the client node's wallet as operator,
the chosen and standby trainers' addresses); anything else is shown, marked."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from eth_account import Account

from fedswarm.api.app import create_app
from fedswarm.api.guard import ApiGuard
from fedswarm.api.jobs import job_parts
from fedswarm.ledger.audit import PAGE_LIMIT, AuditError, AuditLog, MirrorPage, SequenceInfo
from fedswarm.ledger.audit_envelope import seal
from fedswarm.ledger.runninghash import ZERO_HASH, EntityId, next_running_hash
from fedswarm.ledger.verify import format_timestamp
from fedswarm.protocol.messages import Role
from fedswarm.roles.client import JobNotFound

PAYER = "0.0.2"
BASE = "http://127.0.0.1:8123"


def fake_node() -> Any:
    return SimpleNamespace(role=Role.CLIENT, peer_id="12D3KooWfake", addrs=["/ip4/127.0.0.1/tcp/1"],
                           identity=SimpleNamespace(address="0x" + "11" * 20), started_at=0.0,
                           stats={}, limits_status=lambda: {}, gossip_status=lambda: {}, connected_peers=lambda: [])


class MemoryAuditLog(AuditLog):
    """The audit layer below, in process: mirror-node shaped messages chained with Hedera's
    running hash (v3), one page per read; messages stay under one chunk."""

    def __init__(self) -> None:
        self.topics: dict[str, list[dict[str, Any]]] = {}
        self.fail: str | None = None

    def create_topic(self, memo: str = "") -> str:
        topic = f"0.0.{1000 + len(self.topics)}"
        self.topics[topic] = []
        return topic

    def submit(self, topic_id: str | None, message: bytes | Mapping[str, Any]) -> list[SequenceInfo]:
        topic, data = self.prepare(topic_id, message)
        msgs = self.topics[topic]
        prev = base64.b64decode(msgs[-1]["running_hash"]) if msgs else ZERO_HASH
        seq, secs = len(msgs) + 1, 1_700_000_000 + len(msgs)
        running = next_running_hash(prev, EntityId.parse(PAYER), EntityId.parse(topic), secs, 0, seq, data)
        msgs.append({"topic_id": topic, "sequence_number": seq, "running_hash": base64.b64encode(running).decode(),
                     "running_hash_version": 3, "consensus_timestamp": format_timestamp(secs * 10**9),
                     "payer_account_id": PAYER, "message": base64.b64encode(data).decode()})
        return [SequenceInfo(topic, seq, running, f"{PAYER}@{secs}.0")]

    def read(self, topic_id: str, after_seq: int = 0, limit: int = PAGE_LIMIT) -> MirrorPage:
        if self.fail:
            raise AuditError(self.fail)
        return MirrorPage([m for m in self.topics.get(topic_id, []) if m["sequence_number"] > after_seq][:limit])

    def read_next(self, next_link: str) -> MirrorPage:
        raise AssertionError("one page only")


class AuditRole:
    """The parts of ClientRole the audit route touches."""

    def __init__(self, operator: str, audit: AuditLog, jobs: dict[str, Any]) -> None:
        # home: job_parts names its uploads folder; this route never writes there
        self.home, self.identity, self.audit, self.jobs = Path("/nonexistent"), SimpleNamespace(address=operator), audit, jobs

    def job(self, job_id: str) -> Any:
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]


def make_app(role: AuditRole) -> Any:
    parts = job_parts(role)  # type: ignore[arg-type]
    return create_app(fake_node(), guard=ApiGuard(), extra_routers=parts.routers, extra_commands=parts.commands)


async def get(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        return await c.get(path)


def scenario() -> tuple[AuditRole, dict[str, Any]]:
    operator, chosen, standby, stranger = (Account.create() for _ in range(4))
    log = MemoryAuditLog()
    topic = log.create_topic("job job-1")

    def write(account: Any, body: dict[str, Any]) -> None:
        log.envelope_account = account
        log.submit(topic, body)

    write(operator, {"state": "announced"})
    write(chosen, {"state": "delivered", "round": 0})
    write(standby, {"state": "standing_by"})
    write(stranger, {"state": "paid", "amount_wei": "999"})  # well signed, by nobody of the job
    log.envelope_account = None
    log.submit(topic, {"state": "withdrawn"})  # no envelope at all
    forged = seal(topic, {"state": "accepted"}, chosen)
    log.submit(topic, json.dumps({**forged, "state": "rejected"}).encode())  # altered after signing
    log.submit(topic, b"plain text")
    job = SimpleNamespace(job_id="job-1", audit_topic=topic,
                          chosen=[{"peer_id": "p1", "address": chosen.address}],
                          standby=[{"peer_id": "p2", "address": standby.address}])
    role = AuditRole(operator.address, log, {"job-1": job, "job-2": SimpleNamespace(audit_topic=None)})
    return role, {"operator": operator.address, "chosen": chosen.address, "standby": standby.address,
                  "stranger": stranger.address}


async def test_each_message_carries_its_envelope_check() -> None:
    role, who = scenario()
    r = await get(make_app(role), "/api/v1/jobs/job-1/audit")
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["verified"] is True and a["checked"] == 7 and a["signers_checked"] is True
    checks = [(m["sequence"], m["check"]["status"], m["check"]["signer"]) for m in a["messages"]]
    assert checks == [(1, "ok", who["operator"]), (2, "ok", who["chosen"]), (3, "ok", who["standby"]),
                      (4, "stranger", who["stranger"]), (5, "unsigned", None), (6, "bad_signature", None),
                      (7, "not_json", None)]
    assert a["not_ok"] == 4
    assert "neither a registered trainer nor the operator" in a["messages"][3]["check"]["reason"]
    assert a["messages"][6]["body"] == {"raw": "plain text"}


async def test_a_trainer_outside_the_job_is_a_stranger() -> None:
    role, who = scenario()
    role.jobs["job-1"].standby = []  # the standby's messages no longer come from the job
    a = (await get(make_app(role), "/api/v1/jobs/job-1/audit")).json()
    assert a["messages"][2]["check"] == {"status": "stranger", "signer": who["standby"],
                                         "reason": f"signed by {who['standby']}, neither a registered trainer nor the operator"}
    assert a["not_ok"] == 5


async def test_no_topic_unknown_job_and_a_dead_log_are_one_line_errors() -> None:
    role, _ = scenario()
    app = make_app(role)
    for path, code in (("/api/v1/jobs/job-2/audit", 404), ("/api/v1/jobs/nope/audit", 404)):
        r = await get(app, path)
        assert r.status_code == code and "\n" not in r.json()["error"], r.text
    role.audit.fail = "audit log at http://127.0.0.1:1 unreachable (ConnectError)"  # type: ignore[attr-defined]
    r = await get(app, "/api/v1/jobs/job-1/audit")
    assert r.status_code == 502 and r.json()["error"].startswith("cannot read audit topic 0.0.1000: audit log at")


async def test_the_topic_route_without_a_job_checks_no_signers() -> None:
    from fedswarm.web import read_audit

    role, _ = scenario()
    a = read_audit(None, role.jobs["job-1"].audit_topic, log=role.audit)
    assert a["signers_checked"] is False and a["not_ok"] == 0 and "check" not in a["messages"][0]
