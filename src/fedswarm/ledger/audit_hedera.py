"""The Hedera backend of the audit log: :class:`HederaAuditLog` submits to the Hedera Consensus
Service with hiero-sdk-python and reads through the mirror node's REST API.

Split from :mod:`fedswarm.ledger.audit` (the interface, the devnet client and chunking), which
still exports ``HederaAuditLog`` for existing imports. The SDK is imported only inside methods,
so importing this module costs nothing until a Hedera log is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from eth_account.signers.local import LocalAccount

from fedswarm.ledger.audit import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    PAGE_LIMIT,
    AuditError,
    AuditLog,
    MirrorPage,
    SequenceInfo,
    _decode_body,
    _error_text,
    read_capped,
    split_chunks,
)
from fedswarm.ledger.hedera import MIRROR_URLS
from fedswarm.protocol.decode import MAX_MIRROR_JSON


@dataclass
class HederaAuditLog(AuditLog):
    """Hedera Consensus Service through hiero-sdk-python; reads from the mirror node REST API.

    Parameters: ``operator_id`` (``0.0.N``) and ``operator_key`` (any key string the SDK
    parses) pay for and sign the transactions (both None: read-only, mirror node only);
    ``network`` picks the consensus nodes and the default ``mirror_url``. The SDK client is
    created on first network use, so transactions can be built and signed offline.
    """

    operator_id: str | None
    operator_key: str | None = field(repr=False)
    network: str = "testnet"
    mirror_url: str | None = None
    timeout: float = 60.0
    envelope_account: LocalAccount | None = field(default=None, repr=False)
    default_topic: str | None = None
    _client: Any = field(default=None, init=False, repr=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from hiero_sdk_python import AccountId, PrivateKey

        if self.network not in MIRROR_URLS:
            raise AuditError(f"unknown Hedera network {self.network!r}: use testnet, mainnet or previewnet")
        self._account = self._key = None
        try:
            if self.operator_id or self.operator_key:
                self._account = AccountId.from_string(str(self.operator_id))
                self._key = PrivateKey.from_string(str(self.operator_key))
        except Exception as exc:  # the SDK raises plain ValueError/Exception subclasses
            raise AuditError(f"OPERATOR_ID/OPERATOR_KEY not usable ({exc}): check the values") from None
        self.mirror_url = (self.mirror_url or MIRROR_URLS[self.network]).rstrip("/")

    # --- building (offline) ---

    def build_create_topic(self, memo: str = "", *, restricted: bool = False) -> Any:
        """A TopicCreateTransaction with the operator as admin key (not frozen). No submit key
        unless ``restricted``: a job's trainers pay their fees from their own accounts, so the
        topic must take their messages; readers check the signed envelopes instead."""
        from hiero_sdk_python import TopicCreateTransaction

        public = self._operator_key().public_key()
        tx = TopicCreateTransaction().set_memo(memo).set_admin_key(public)
        return tx.set_submit_key(public) if restricted else tx

    def build_submit(self, topic_id: str | None, message: bytes | Mapping[str, Any]) -> Any:
        """A TopicMessageSubmitTransaction for ``message`` (the SDK chunks it at 1024 bytes)."""
        from hiero_sdk_python import TopicId, TopicMessageSubmitTransaction

        topic_id, data = self.prepare(topic_id, message)
        split_chunks(data)  # same limit check as the devnet, with our error message
        return (
            TopicMessageSubmitTransaction()
            .set_topic_id(TopicId.from_string(topic_id))
            .set_message(data)
            .set_chunk_size(CHUNK_SIZE)
            .set_max_chunks(MAX_CHUNKS)
        )

    def sign(self, tx: Any) -> Any:
        """Sign a frozen transaction (every chunk) with the operator key."""
        return tx.sign(self._operator_key())

    def _operator_key(self) -> Any:
        if self._key is None:
            raise AuditError("writing to Hedera needs OPERATOR_ID and OPERATOR_KEY: set both")
        return self._key

    # --- network ---

    def client(self) -> Any:
        """The SDK client (created on first use: it fetches the address book)."""
        if self._client is None:
            from hiero_sdk_python import Client, Network

            self._operator_key()
            self._client = Client(Network(self.network))
            self._client.set_operator(self._account, self._key)
        return self._client

    def create_topic(self, memo: str = "") -> str:
        client = self.client()
        tx = self.build_create_topic(memo).freeze_with(client)
        receipt = self.sign(tx).execute(client)
        if receipt.topic_id is None:
            raise AuditError(f"topic creation failed: status {receipt.status}")
        return str(receipt.topic_id)

    def submit(self, topic_id: str | None, message: bytes | Mapping[str, Any]) -> list[SequenceInfo]:
        client = self.client()
        topic_id = topic_id or self.default_topic
        tx = self.sign(self.build_submit(topic_id, message).freeze_with(client))
        receipts = tx.execute_all(client)
        infos = []
        for receipt in receipts:
            if not receipt.topic_sequence_number:
                raise AuditError(f"topic message submit failed: status {receipt.status}")
            infos.append(
                SequenceInfo(
                    topic_id=topic_id,
                    sequence_number=int(receipt.topic_sequence_number),
                    running_hash=bytes(receipt.topic_running_hash or b""),
                    transaction_id=str(receipt.transaction_id),
                    payer_account_id=self.operator_id,
                )
            )
        return infos

    def _mirror(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _get(self, url: str, params: dict[str, str] | None = None) -> MirrorPage:
        what = f"mirror node {self.mirror_url}"
        try:
            with self._mirror().stream("GET", url, params=params) as resp:
                body = read_capped(resp, MAX_MIRROR_JSON, what)
        except httpx.HTTPError as exc:
            raise AuditError(f"{what} unreachable ({exc.__class__.__name__})") from None
        if resp.status_code == 404:
            return MirrorPage(messages=[])  # the mirror node lags behind a new topic
        if resp.status_code >= 400:
            raise AuditError(f"mirror node refused {url}: {resp.status_code} {_error_text(body)}")
        return MirrorPage.from_json(_decode_body(body, what))

    def read(self, topic_id: str, after_seq: int = 0, limit: int = PAGE_LIMIT) -> MirrorPage:
        params = {"order": "asc", "limit": str(limit), "sequencenumber": f"gt:{after_seq}"}
        return self._get(f"{self.mirror_url}/api/v1/topics/{topic_id}/messages", params)

    def read_next(self, next_link: str) -> MirrorPage:
        # The mirror node's links.next is a path relative to its base URL.
        return self._get(urljoin(self.mirror_url + "/", next_link.lstrip("/")))
