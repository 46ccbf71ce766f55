"""Signed audit envelopes: who wrote a message, checked by whoever reads the topic.

Per-job audit topics have no submit key (trainers pay their own fees from accounts the client
does not know, so no key could be set in advance), which means anyone may write to them. Every
message a node writes is therefore a **signed envelope**: the JSON body plus a ``sig`` field
``{"signer": 0x-address, "signature": 0x-hex}``, an EIP-191 signature by the node's **wallet**
key (the key that bids, is registered on the escrow and is paid) over::

    fedswarm/audit/envelope/1\\n<topic id>\\n<canonical JSON of the body without "sig">

The topic id is signed so a message cannot be replayed onto another job's topic; the sequence
number is not (it is only known after consensus). A reader checks each message against the
addresses it expects on the topic: the job's registered trainers and its operator, read from
the escrow. Anything else is flagged: unsigned, a bad signature, or a stranger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_hex_address, to_checksum_address

ENVELOPE_DOMAIN = "fedswarm/audit/envelope/1"
SIG_FIELD = "sig"

Status = Literal["ok", "unsigned", "bad_signature", "stranger", "not_json"]


class EnvelopeError(ValueError):
    """A message is not a valid signed envelope; the message says why."""


def envelope_text(topic_id: str, body: Mapping[str, Any]) -> str:
    """The text the envelope's signature covers (``body`` without its ``sig`` field)."""
    rest = {k: v for k, v in body.items() if k != SIG_FIELD}
    return f"{ENVELOPE_DOMAIN}\n{topic_id}\n" + json.dumps(rest, sort_keys=True, separators=(",", ":"))


def seal(topic_id: str, body: Mapping[str, Any], account: LocalAccount) -> dict[str, Any]:
    """``body`` with a ``sig`` by ``account`` (the node wallet) bound to ``topic_id``."""
    signed = account.sign_message(encode_defunct(text=envelope_text(topic_id, body)))
    rest = {k: v for k, v in body.items() if k != SIG_FIELD}
    return {**rest, SIG_FIELD: {"signer": account.address, "signature": signed.signature.to_0x_hex()}}


def signer_of(topic_id: str, body: Mapping[str, Any]) -> str:
    """The checksummed address that signed ``body`` for ``topic_id``; raises
    :class:`EnvelopeError` when there is no signature or it is not the named signer's."""
    sig = body.get(SIG_FIELD)
    if not isinstance(sig, Mapping):
        raise EnvelopeError("unsigned: no sig field")
    claimed, signature = sig.get("signer"), sig.get("signature")
    if not isinstance(claimed, str) or not is_hex_address(claimed) or not isinstance(signature, str):
        raise EnvelopeError("sig field malformed: want {signer: 0x address, signature: 0x hex}")
    try:
        recovered = Account.recover_message(
            encode_defunct(text=envelope_text(topic_id, body)), signature=signature
        )
    except Exception:  # eth-keys raises several types for malformed signatures
        raise EnvelopeError("signature does not parse") from None
    if recovered != to_checksum_address(claimed):
        raise EnvelopeError(f"signature is by {recovered}, not the named signer {claimed}")
    return recovered


@dataclass(frozen=True)
class EnvelopeCheck:
    """The verdict on one message: ``status`` ok/unsigned/bad_signature/stranger/not_json."""

    sequence: int
    status: Status
    signer: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Signed by an expected writer."""
        return self.status == "ok"


def check_envelope(
    topic_id: str, sequence: int, payload: Any, allowed: Iterable[str]
) -> EnvelopeCheck:
    """Check one decoded message ``payload`` of ``topic_id`` against the ``allowed`` writers
    (addresses: the job's registered trainers and its operator)."""
    if not isinstance(payload, Mapping):
        return EnvelopeCheck(sequence, "not_json", reason="not a JSON object: no envelope")
    if SIG_FIELD not in payload:
        return EnvelopeCheck(sequence, "unsigned", reason="no signature: anyone could have written it")
    try:
        signer = signer_of(topic_id, payload)
    except EnvelopeError as exc:
        return EnvelopeCheck(sequence, "bad_signature", reason=str(exc))
    expected = {to_checksum_address(a) for a in allowed}
    if signer not in expected:
        return EnvelopeCheck(sequence, "stranger", signer,
                             f"signed by {signer}, neither a registered trainer nor the operator")
    return EnvelopeCheck(sequence, "ok", signer)
