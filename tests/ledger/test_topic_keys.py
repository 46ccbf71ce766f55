"""The devnet topic log refuses what Hedera's consensus service refuses: submit keys (single,
key list, threshold), admin keys (create, update, delete, immutable topics), deleted topics, and
the mirror node's paging limits; and readers flag audit messages from strangers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from libp2p.crypto.ed25519 import create_new_key_pair

from fedswarm.ledger.audit import AuditError, LocalAuditLog
from fedswarm.ledger.audit_envelope import check_envelope, seal, signer_of
from fedswarm.ledger.auditserver import start_audit_server
from fedswarm.ledger.topickeys import (
    TopicKeyError,
    ed25519_key,
    key_list,
    threshold_key,
    validate_key,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    proc, info = start_audit_server(tmp_path_factory.mktemp("keys") / "audit.db")
    try:
        yield info["audit"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _client(server: dict[str, Any], pair: Any = None, wallet: Any = None) -> LocalAuditLog:
    return LocalAuditLog(server["url"], pair or create_new_key_pair(), envelope_account=wallet)


def _pub(pair: Any) -> dict[str, Any]:
    return ed25519_key(pair.public_key.to_bytes())


def test_no_submit_key_anyone_writes(server: dict[str, Any]) -> None:
    owner, stranger = _client(server), _client(server)
    topic = owner.create_topic("open")
    assert stranger.submit(topic, b"hello")[0].sequence_number == 1
    info = owner.topic_info(topic)
    assert info["submit_key"] is None and info["admin_key"] == _pub_hex(owner)


def _pub_hex(log: LocalAuditLog) -> dict[str, Any]:
    return {"ed25519": log.public_key_hex}


def test_submit_key_refuses_other_signers(server: dict[str, Any]) -> None:
    writer_pair = create_new_key_pair()
    owner, writer, stranger = _client(server), _client(server, writer_pair), _client(server)
    topic = owner.create_topic("closed", submit_key=_pub(writer_pair))
    with pytest.raises(AuditError, match="403 INVALID_SIGNATURE"):
        stranger.submit(topic, b"let me in")
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        owner.submit(topic, b"even the admin key is not the submit key")
    # The submit key may co-sign a transaction paid by someone else, as on Hedera.
    assert stranger.submit(topic, b"co-signed", co_signers=[writer_pair])[0].sequence_number == 1
    assert writer.submit(topic, b"mine")[0].sequence_number == 2
    assert len(owner.read(topic).messages) == 2  # the refused ones left no trace


def test_key_list_and_threshold_submit_keys(server: dict[str, Any]) -> None:
    a, b, c = (create_new_key_pair() for _ in range(3))
    payer = _client(server)
    both = payer.create_topic("list", submit_key=key_list([_pub(a), _pub(b)]))
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        payer.submit(both, b"x", co_signers=[a])
    payer.submit(both, b"x", co_signers=[a, b])
    two_of_three = payer.create_topic("2/3", submit_key=threshold_key(2, [_pub(a), _pub(b), _pub(c)]))
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        payer.submit(two_of_three, b"y", co_signers=[c])
    payer.submit(two_of_three, b"y", co_signers=[c, a])


def test_a_bad_cosignature_refuses_the_whole_transaction(server: dict[str, Any]) -> None:
    log = _client(server)
    topic = log.create_topic("t")
    body = {"message": "eA==", "valid_start": "1.0", "chunk": None, "public_key": log.public_key_hex,
            "signature": "00" * 64, "signatures": []}
    r = httpx.post(f"{server['url']}/api/v1/topics/{topic}/messages", json=body)
    assert r.status_code == 403 and "INVALID_SIGNATURE" in r.text


def test_admin_key_must_sign_creation(server: dict[str, Any]) -> None:
    admin = create_new_key_pair()
    payer = _client(server)
    with pytest.raises(AuditError, match="INVALID_SIGNATURE: the admin key must sign"):
        payer.create_topic("t", admin_key=_pub(admin))
    assert payer.create_topic("t", admin_key=_pub(admin), co_signers=[admin])


def test_immutable_topic_cannot_be_updated_or_deleted(server: dict[str, Any]) -> None:
    log = _client(server)
    topic = log.create_topic("forever", admin_key=None)
    with pytest.raises(AuditError, match="UNAUTHORIZED"):
        log.update_topic(topic, memo="changed")
    with pytest.raises(AuditError, match="UNAUTHORIZED"):
        log.delete_topic(topic)
    assert log.topic_info(topic)["memo"] == "forever"


def test_admin_key_governs_update_and_delete(server: dict[str, Any]) -> None:
    owner, stranger = _client(server), _client(server)
    new_admin = create_new_key_pair()
    topic = owner.create_topic("job")
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        stranger.update_topic(topic, memo="mine now")
    with pytest.raises(AuditError, match="new admin key must sign"):
        owner.update_topic(topic, admin_key=_pub(new_admin))
    owner.update_topic(topic, admin_key=_pub(new_admin), submit_key="self", co_signers=[new_admin])
    info = owner.topic_info(topic)
    assert info["admin_key"] == _pub(new_admin) and info["submit_key"] == _pub_hex(owner)
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        stranger.submit(topic, b"closed now")
    owner.update_topic(topic, submit_key={"key_list": []}, co_signers=[new_admin])  # clears it
    stranger.submit(topic, b"open again")
    with pytest.raises(AuditError, match="INVALID_SIGNATURE"):
        owner.delete_topic(topic)  # the old admin key no longer governs it
    owner.delete_topic(topic, co_signers=[new_admin])
    with pytest.raises(AuditError, match="INVALID_TOPIC_ID"):
        owner.submit(topic, b"after delete")
    assert owner.topic_info(topic)["deleted"] is True
    assert len(owner.read(topic).messages) == 1  # history stays readable


def test_malformed_keys_are_refused() -> None:
    for bad in ({"ed25519": "00"}, {"key_list": []}, {"threshold": 3, "keys": [{"ed25519": "11" * 32}]},
                {"rsa": "x"}, {"key_list": [{"key_list": [{"key_list": [{"key_list": [{"ed25519": "11" * 32}]}]}]}]}):
        with pytest.raises(TopicKeyError):
            validate_key(bad)


def test_limit_over_100_is_refused_and_next_link_pages(server: dict[str, Any]) -> None:
    log = _client(server)
    topic = log.create_topic("pages")
    url = f"{server['url']}/api/v1/topics/{topic}/messages"
    assert httpx.get(url, params={"limit": "101"}).status_code == 400
    for i in range(3):
        log.submit(topic, f"m{i}".encode())
    page = log.read(topic, limit=2)
    assert [m["sequence_number"] for m in page.messages] == [1, 2] and page.next
    rest = log.read_next(page.next)
    assert [m["sequence_number"] for m in rest.messages] == [3]


def test_reader_flags_a_strangers_message(server: dict[str, Any]) -> None:
    trainer_wallet, operator_wallet, stranger_wallet = (Account.create() for _ in range(3))
    operator = _client(server, wallet=operator_wallet)
    trainer = _client(server, wallet=trainer_wallet)
    stranger = _client(server, wallet=stranger_wallet)
    topic = operator.create_topic("fedswarm job j1")
    operator.submit(topic, {"role": "client", "state": "prepared"})
    trainer.submit(topic, {"role": "trainer", "state": "training"})
    stranger.submit(topic, {"role": "trainer", "state": "uploaded"})  # claims to be a trainer
    _client(server).submit(topic, {"role": "trainer", "state": "done"})  # no envelope at all
    forged = seal(topic, {"state": "training"}, stranger_wallet)
    forged["sig"]["signer"] = trainer_wallet.address  # names the trainer, signed by the stranger
    _client(server).submit(topic, forged)
    replayed = seal("0.0.1", {"state": "claimed"}, trainer_wallet)  # signed for another topic
    _client(server).submit(topic, replayed)
    checks = operator.read_checked(topic, [trainer_wallet.address, operator_wallet.address])
    statuses = [c.status for _, c in checks]
    assert statuses == ["ok", "ok", "stranger", "unsigned", "bad_signature", "bad_signature"]
    assert checks[2][1].signer == stranger_wallet.address
    assert checks[1][0].json()["state"] == "training"  # readers still see the body's fields


def test_envelope_binds_body_and_topic() -> None:
    wallet = Account.create()
    sealed = seal("0.0.7", {"a": 1}, wallet)
    assert signer_of("0.0.7", sealed) == wallet.address
    assert check_envelope("0.0.7", 1, {**sealed, "a": 2}, [wallet.address]).status == "bad_signature"
    assert check_envelope("0.0.8", 1, sealed, [wallet.address]).status == "bad_signature"
    assert check_envelope("0.0.7", 1, "text", [wallet.address]).status == "not_json"
