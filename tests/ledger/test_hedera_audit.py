"""HederaAuditLog: transactions built, frozen and signed offline; a live run only with
OPERATOR_ID/OPERATOR_KEY set (testnet)."""

from __future__ import annotations

import os
import time

import pytest
from hiero_sdk_python import AccountId, PrivateKey, Transaction, TransactionId
from hiero_sdk_python.hapi.sdk.transaction_list_pb2 import TransactionList
from hiero_sdk_python.hapi.services import transaction_contents_pb2, transaction_pb2

from fedswarm.ledger.audit import AuditError, HederaAuditLog
from fedswarm.ledger.verify import verify_page

OPERATOR = "0.0.4242"


@pytest.fixture()
def key() -> PrivateKey:
    return PrivateKey.generate_ed25519()


@pytest.fixture()
def log(key: PrivateKey) -> HederaAuditLog:
    return HederaAuditLog(OPERATOR, key.to_string_der(), network="testnet")


def _freeze_offline(tx: Transaction) -> Transaction:
    tx.set_transaction_id(TransactionId.generate(AccountId.from_string(OPERATOR)))
    tx.set_node_account_ids([AccountId.from_string("0.0.3")])
    return tx.freeze()


def _bodies(raw: bytes) -> list[tuple[transaction_pb2.TransactionBody, list]]:
    out = []
    for tx in TransactionList.FromString(raw).transaction_list:
        signed = transaction_contents_pb2.SignedTransaction.FromString(tx.signedTransactionBytes)
        body = transaction_pb2.TransactionBody.FromString(signed.bodyBytes)
        out.append((body, signed))
    return out


def test_submit_chunked_built_and_signed_offline(log: HederaAuditLog, key: PrivateKey) -> None:
    # Prepare
    message = bytes(range(256)) * 10  # 2560 bytes → 3 chunks
    # Execute
    tx = log.sign(_freeze_offline(log.build_submit("0.0.5005", message)))
    parts = _bodies(tx.to_bytes())
    # Assert: one signed body per chunk, chunk_info like the network expects
    assert len(parts) == 3
    initial = parts[0][0].transactionID
    pub = key.public_key().to_bytes_raw()
    rebuilt = b""
    for n, (body, signed) in enumerate(parts, start=1):
        op = body.consensusSubmitMessage
        assert op.topicID.topicNum == 5005
        assert op.chunkInfo.number == n and op.chunkInfo.total == 3
        assert op.chunkInfo.initialTransactionID == initial
        assert body.transactionID.accountID.accountNum == 4242
        assert len(op.message) <= 1024
        rebuilt += op.message
        (pair,) = signed.sigMap.sigPair
        assert pair.pubKeyPrefix == pub
        key.public_key().verify(pair.ed25519, signed.bodyBytes)  # raises if forged
    assert rebuilt == message
    # chunk transaction ids advance by one nano from the initial one, as the SDKs do
    starts = [b.transactionID.transactionValidStart for b, _ in parts]
    ns = [s.seconds * 1_000_000_000 + s.nanos for s in starts]
    assert [t - ns[0] for t in ns] == [0, 1, 2]


def test_single_chunk_has_no_chunk_info(log: HederaAuditLog) -> None:
    tx = log.sign(_freeze_offline(log.build_submit("0.0.5005", {"state": "joined"})))
    ((body, _),) = _bodies(tx.to_bytes())
    assert not body.consensusSubmitMessage.HasField("chunkInfo")
    assert body.consensusSubmitMessage.message == b'{"state":"joined"}'


def test_create_topic_built_and_signed_offline(log: HederaAuditLog, key: PrivateKey) -> None:
    tx = log.sign(_freeze_offline(log.build_create_topic("fedswarm job 7")))
    ((body, signed),) = _bodies(tx.to_bytes())
    op = body.consensusCreateTopic
    assert op.memo == "fedswarm job 7"
    assert op.adminKey.ed25519 == key.public_key().to_bytes_raw()
    # No submit key: the job's trainers pay from their own accounts and must be able to write;
    # readers check each message's signed envelope instead.
    assert not op.HasField("submitKey")
    key.public_key().verify(signed.sigMap.sigPair[0].ed25519, signed.bodyBytes)
    restricted = log.sign(_freeze_offline(log.build_create_topic("node log", restricted=True)))
    ((body, _),) = _bodies(restricted.to_bytes())
    assert body.consensusCreateTopic.submitKey.ed25519 == key.public_key().to_bytes_raw()


def test_limits_and_bad_credentials() -> None:
    ro = HederaAuditLog(None, None, network="testnet")
    with pytest.raises(AuditError, match="OPERATOR"):
        ro.build_create_topic("x")
    with pytest.raises(AuditError, match="OPERATOR"):
        HederaAuditLog("not-an-id", "zz", network="testnet")
    with pytest.raises(AuditError, match="chunks"):
        ro.build_submit("0.0.5", b"x" * (20 * 1024 + 1))
    with pytest.raises(AuditError, match="network"):
        HederaAuditLog(None, None, network="moon")


def test_old_import_path_is_the_moved_class() -> None:
    # HederaAuditLog lives in audit_hedera; fedswarm.ledger.audit re-exports it (imported above).
    from fedswarm.ledger import audit, audit_hedera

    assert HederaAuditLog is audit_hedera.HederaAuditLog is audit.HederaAuditLog
    with pytest.raises(AttributeError):
        audit.NoSuchName  # noqa: B018


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.environ.get("OPERATOR_ID") and os.environ.get("OPERATOR_KEY")),
    reason="live Hedera test needs OPERATOR_ID and OPERATOR_KEY (testnet)",
)
def test_live_testnet_roundtrip() -> None:
    log = HederaAuditLog(os.environ["OPERATOR_ID"], os.environ["OPERATOR_KEY"], network="testnet")
    topic = log.create_topic("fedswarm live test")
    infos = log.submit(topic, {"hello": "hedera", "pad": "x" * 1500})
    assert [i.sequence_number for i in infos] == [1, 2]
    deadline = time.monotonic() + 120  # the mirror node lags consensus by seconds
    messages: list = []
    while time.monotonic() < deadline and len(messages) < 2:
        messages = list(log.iter_raw(topic))
        time.sleep(3)
    result = verify_page({"messages": messages})
    assert result.ok, result.describe()
    assert result.running_hash == infos[-1].running_hash
    (whole,) = list(log.iter_messages(topic))
    assert whole.json()["hello"] == "hedera"
