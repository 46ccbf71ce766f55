"""The devnet topic log against Hedera's rules, through the real server process."""

from __future__ import annotations

import base64
import copy
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from fedswarm.ledger.audit import (
    AuditError,
    ChunkAssembler,
    LocalAuditLog,
    submit_signing_bytes,
)
from fedswarm.ledger.auditserver import start_audit_server
from fedswarm.ledger.runninghash import ZERO_HASH
from fedswarm.ledger.verify import format_timestamp, parse_timestamp, verify_page


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db = tmp_path_factory.mktemp("audit") / "audit.db"
    proc, info = start_audit_server(db)
    try:
        yield info["audit"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def log(server: dict[str, Any]) -> Iterator[LocalAuditLog]:
    with LocalAuditLog(server["url"], create_new_key_pair()) as client:
        yield client


def _all_raw(log: LocalAuditLog, topic: str) -> list[dict[str, Any]]:
    return list(log.iter_raw(topic))


def test_mirror_shape_sequence_and_timestamps(log: LocalAuditLog) -> None:
    # Prepare
    topic = log.create_topic("job 1")
    # Execute
    infos = [log.submit(topic, {"state": "training", "step": i})[0] for i in range(30)]
    page = log.read(topic, after_seq=0, limit=100).to_json()
    # Assert
    assert set(page) == {"messages", "links"} and page["links"]["next"] is None
    msgs = page["messages"]
    assert [m["sequence_number"] for m in msgs] == list(range(1, 31))
    assert [i.sequence_number for i in infos] == list(range(1, 31))
    keys = {"chunk_info", "consensus_timestamp", "message", "payer_account_id", "running_hash",
            "running_hash_version", "sequence_number", "topic_id"}
    for m, info in zip(msgs, infos, strict=True):
        assert set(m) == keys
        assert m["topic_id"] == topic and m["running_hash_version"] == 3
        assert m["chunk_info"] is None
        assert m["payer_account_id"] == info.payer_account_id
        assert base64.b64decode(m["running_hash"]) == info.running_hash
        assert len(base64.b64decode(m["running_hash"])) == 48
        assert m["consensus_timestamp"] == info.consensus_timestamp
    stamps = [parse_timestamp(m["consensus_timestamp"]) for m in msgs]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert json.loads(base64.b64decode(msgs[3]["message"])) == {"state": "training", "step": 3}
    # the payer id is stable for a key
    assert len({m["payer_account_id"] for m in msgs}) == 1
    result = verify_page(page, ZERO_HASH)
    assert result.ok, result.describe()
    assert result.running_hash == infos[-1].running_hash


def test_paging_via_links_next(log: LocalAuditLog) -> None:
    topic = log.create_topic("paging")
    for i in range(25):
        log.submit(topic, f"m{i}".encode())
    first = log.read(topic, after_seq=0, limit=10)
    assert len(first.messages) == 10 and first.next is not None
    assert "sequencenumber=gt%3A10" in first.next or "sequencenumber=gt:10" in first.next
    second = log.read_next(first.next)
    assert [m["sequence_number"] for m in second.messages] == list(range(11, 21))
    everything = _all_raw(log, topic)
    assert [m["sequence_number"] for m in everything] == list(range(1, 26))
    # a page continues from the previous page's last running hash
    r1 = verify_page(first.to_json())
    r2 = verify_page(second.to_json(), r1.running_hash, prev_sequence=r1.sequence_number)
    assert r1.ok and r2.ok
    desc = httpx.get(f"{log.url}/api/v1/topics/{topic}/messages",
                     params={"order": "desc", "limit": 5}).json()
    assert [m["sequence_number"] for m in desc["messages"]] == [25, 24, 23, 22, 21]


FIELD_CHANGES = {
    "message": lambda m: m.update(message=base64.b64encode(b"tampered").decode()),
    "payer_account_id": lambda m: m.update(payer_account_id="0.0.9999"),
    "topic_id": lambda m: m.update(topic_id="0.0.1"),
    "consensus_timestamp": lambda m: m.update(
        consensus_timestamp=m["consensus_timestamp"][:-1]
        + str((int(m["consensus_timestamp"][-1]) + 1) % 10)),
    "sequence_number": lambda m: m.update(sequence_number=m["sequence_number"] + 100),
    "running_hash": lambda m: m.update(
        running_hash=base64.b64encode(bytes(48)).decode()),
    "running_hash_version": lambda m: m.update(running_hash_version=2),
    "chunk_info.number": lambda m: m["chunk_info"].update(number=m["chunk_info"]["total"] + 1),
    "chunk_info.account_id": lambda m: m["chunk_info"]["initial_transaction_id"].update(
        account_id="0.0.4242"),
    "chunk_info.total": lambda m: m["chunk_info"].update(total=m["chunk_info"]["total"] + 1),
    "dropped field": lambda m: m.pop("running_hash"),
}


@pytest.mark.parametrize("change", sorted(FIELD_CHANGES))
def test_any_changed_field_fails_at_that_message(log: LocalAuditLog, change: str) -> None:
    topic = log.create_topic("tamper")
    for i in range(3):
        log.submit(topic, {"i": i})
    log.submit(topic, b"c" * 2500)  # 3 chunks: sequences 4, 5, 6
    log.submit(topic, {"i": "last"})
    page = log.read(topic).to_json()
    assert verify_page(page).ok
    target = 4 if change.startswith("chunk_info") else 2  # 0-based: sequence 5 or 3
    bad = copy.deepcopy(page)
    FIELD_CHANGES[change](bad["messages"][target])
    result = verify_page(bad, ZERO_HASH)
    assert not result.ok
    assert result.bad_index == target, result.describe()
    assert result.checked == target


def test_signed_unsigned_and_forged(log: LocalAuditLog, server: dict[str, Any]) -> None:
    topic = log.create_topic("auth")
    log.submit(topic, b"genuine")
    url = f"{server['url']}/api/v1/topics/{topic}/messages"
    valid_start = format_timestamp(time.time_ns())
    b64 = base64.b64encode(b"forged").decode()
    unsigned = {"message": b64, "valid_start": valid_start, "chunk": None}
    assert httpx.post(url, json=unsigned).status_code == 401
    # signed by another key than the one claimed
    victim, attacker = create_new_key_pair(), create_new_key_pair()
    sig = attacker.private_key.sign(submit_signing_bytes(topic, valid_start, b64, None))
    forged = unsigned | {"public_key": victim.public_key.to_bytes().hex(), "signature": sig.hex()}
    assert httpx.post(url, json=forged).status_code == 403
    # a genuine signature replayed onto another message or topic
    good_sig = victim.private_key.sign(submit_signing_bytes(topic, valid_start, b64, None))
    other = unsigned | {"message": base64.b64encode(b"other").decode(),
                        "public_key": victim.public_key.to_bytes().hex(), "signature": good_sig.hex()}
    assert httpx.post(url, json=other).status_code == 403
    # the genuine one goes through once; a replay of the same transaction is refused
    genuine = unsigned | {"public_key": victim.public_key.to_bytes().hex(), "signature": good_sig.hex()}
    assert httpx.post(url, json=genuine).status_code == 200
    assert httpx.post(url, json=genuine).status_code == 409
    msgs = _all_raw(log, topic)
    assert [base64.b64decode(m["message"]) for m in msgs] == [b"genuine", b"forged"]
    assert verify_page({"messages": msgs}).ok


def test_chunking_and_reassembly(log: LocalAuditLog, server: dict[str, Any]) -> None:
    topic = log.create_topic("chunks")
    other = LocalAuditLog(server["url"], create_new_key_pair())
    big = bytes(range(256)) * 12  # 3072 bytes: exactly 3 chunks
    infos = log.submit(topic, big)
    assert [i.sequence_number for i in infos] == [1, 2, 3]
    exact = log.submit(topic, b"y" * 1024)  # one chunk, no chunk_info
    assert len(exact) == 1
    # interleave two chunked messages from two payers by submitting chunk by chunk
    other.submit(topic, b"z" * 1025)
    msgs = _all_raw(log, topic)
    chunked = [m for m in msgs if m["chunk_info"]]
    assert [c["chunk_info"]["number"] for c in chunked] == [1, 2, 3, 1, 2]
    first = chunked[0]["chunk_info"]
    assert first["total"] == 3
    assert first["initial_transaction_id"]["account_id"] == chunked[0]["payer_account_id"]
    assert infos[0].transaction_id.endswith(first["initial_transaction_id"]["transaction_valid_start"])
    assert [len(base64.b64decode(m["message"])) for m in msgs] == [1024, 1024, 1024, 1024, 1024, 1]
    # reassembly, even with chunks of two messages interleaved
    order = [msgs[0], msgs[4], msgs[1], msgs[5], msgs[2], msgs[3]]
    asm = ChunkAssembler()
    done = [w for w in (asm.add(m) for m in order) if w is not None]
    assert [w.payload for w in done] == [b"z" * 1025, big, b"y" * 1024]
    assert asm.pending == 0
    whole = list(log.iter_messages(topic))
    assert [w.payload for w in whole] == [big, b"y" * 1024, b"z" * 1025]
    assert whole[0].chunks == 3 and (whole[0].first_sequence, whole[0].last_sequence) == (1, 3)
    with pytest.raises(AuditError, match="chunks"):
        log.submit(topic, b"x" * (1024 * 20 + 1))
    with pytest.raises(AuditError, match="empty"):
        log.submit(topic, b"")
    other.close()


def _raw_http(url: str, data: bytes) -> bytes:
    """Send ``data`` on a raw socket and read what comes back. The server may answer garbage and
    hang up before it has read all of it (its right): a write or shutdown refused then (reset,
    "not connected") is not a failure; whether the server lives on is checked after."""
    host, port = url.removeprefix("http://").split(":")
    chunks: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_malformed_requests_do_not_kill_it(log: LocalAuditLog, server: dict[str, Any]) -> None:
    topic = log.create_topic("robust")
    base = server["url"]
    url = f"{base}/api/v1/topics/{topic}/messages"
    cases = [
        ("POST", url, b"not json"),
        ("POST", url, b"[1,2,3]"),
        ("POST", url, json.dumps({"message": 5}).encode()),
        ("POST", url, json.dumps({"message": "!!", "valid_start": "x", "chunk": 7}).encode()),
        ("POST", url, json.dumps({"message": "aGk=", "valid_start": "1.1", "public_key": "zz",
                                  "signature": "00"}).encode()),
        ("POST", f"{base}/api/v1/topics", json.dumps({"memo": 3}).encode()),
        ("POST", f"{base}/api/v1/topics/0.0.999999/messages", b"{}"),
        ("GET", f"{url}?limit=abc", b""),
        ("GET", f"{url}?limit=1000", b""),
        ("GET", f"{url}?sequencenumber=zz:3", b""),
        ("GET", f"{url}?sequencenumber=gt:-1", b""),
        ("GET", f"{url}?order=sideways", b""),
        ("GET", f"{base}/api/v1/topics/0.0.424242/messages", b""),
        ("GET", f"{base}/api/v1/topics/banana/messages", b""),
        ("GET", f"{base}/nope", b""),
    ]
    for method, u, body in cases:
        r = httpx.request(method, u, content=body)
        assert 400 <= r.status_code < 500, (method, u, body, r.status_code)
        assert r.json()["_status"]["messages"][0]["message"]
    # raw garbage on the socket, a huge declared body, and random bytes
    _raw_http(base, b"\x00\xff garbage \r\n\r\n")
    _raw_http(base, b"POST /api/v1/topics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{")
    _raw_http(base, bytes(range(256)) * 40)
    assert httpx.get(f"{base}/health").json() == {"ok": True}
    # a valid-looking message signed for a bad valid_start is refused, nothing stored
    pair = create_new_key_pair()
    b64 = base64.b64encode(b"late").decode()
    for vs in ["12.5", "1.000000001", format_timestamp(time.time_ns() + 3600 * 10**9)]:
        sig = pair.private_key.sign(submit_signing_bytes(topic, vs, b64, None)).hex()
        body = {"message": b64, "valid_start": vs, "chunk": None,
                "public_key": pair.public_key.to_bytes().hex(), "signature": sig}
        assert httpx.post(url, json=body).status_code == 400
    log.submit(topic, b"still fine")
    assert [m["sequence_number"] for m in _all_raw(log, topic)] == [1]



def test_chunk_count_and_transaction_size_are_capped(log: LocalAuditLog, server: dict[str, Any]) -> None:
    # Hedera refuses a message of more than 20 chunks and a transaction over 6 KiB; so does this.
    topic = log.create_topic("caps")
    url = f"{server['url']}/api/v1/topics/{topic}/messages"
    pair = create_new_key_pair()
    b64 = base64.b64encode(b"x" * 1024).decode()

    def signed(chunk: dict[str, Any] | None, message: str = b64, **extra: Any) -> dict[str, Any]:
        vs = format_timestamp(time.time_ns())
        sig = pair.private_key.sign(submit_signing_bytes(topic, vs, message, chunk)).hex()
        return {"message": message, "valid_start": vs, "chunk": chunk,
                "public_key": pair.public_key.to_bytes().hex(), "signature": sig, **extra}

    first = format_timestamp(time.time_ns())
    for total in (21, 10**9):
        r = httpx.post(url, json=signed({"initial_valid_start": first, "number": 1, "total": total}))
        assert r.status_code == 400 and "1..20" in r.json()["_status"]["messages"][0]["message"]
    r = httpx.post(url, json=signed(None, base64.b64encode(b"x" * 1025).decode()))
    assert r.status_code == 400  # one chunk is at most 1024 bytes
    r = httpx.post(url, json=signed(None, padding="p" * 6000))
    assert r.status_code == 413  # the whole transaction is at most 6 KiB
    deep = {"message": b64, "valid_start": first, "chunk": None, "x": json.loads("[" * 50 + "]" * 50)}
    r = httpx.post(url, json=deep)
    assert r.status_code == 400 and "nest" in r.json()["_status"]["messages"][0]["message"].lower()
    assert _all_raw(log, topic) == []
    ok = httpx.post(url, json=signed({"initial_valid_start": first, "number": 20, "total": 20}))
    assert ok.status_code == 200 and len(_all_raw(log, topic)) == 1


SUBMITTER = """
import sys
from libp2p.crypto.ed25519 import create_new_key_pair
from fedswarm.ledger.audit import LocalAuditLog
url, topic, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with LocalAuditLog(url, create_new_key_pair()) as log:
    for i in range(n):
        log.submit(topic, {"from": name, "i": i})
"""


@pytest.mark.slow
def test_two_processes_500_each(log: LocalAuditLog, server: dict[str, Any], tmp_path: Path) -> None:
    topic = log.create_topic("concurrent")
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    procs = [
        subprocess.Popen([sys.executable, str(script), server["url"], topic, name, "500"])
        for name in ("a", "b")
    ]
    try:
        for p in procs:
            assert p.wait(timeout=240) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    msgs = _all_raw(log, topic)
    assert [m["sequence_number"] for m in msgs] == list(range(1, 1001))
    bodies = [json.loads(base64.b64decode(m["message"])) for m in msgs]
    for name in ("a", "b"):
        assert [b["i"] for b in bodies if b["from"] == name] == list(range(500))
    assert len({m["payer_account_id"] for m in msgs}) == 2
    result = verify_page({"messages": msgs}, ZERO_HASH)
    assert result.ok, result.describe()
    assert result.checked == 1000
    info = log.topic_info(topic)
    assert info["sequence_number"] == 1000
    assert base64.b64decode(info["running_hash"]) == result.running_hash
