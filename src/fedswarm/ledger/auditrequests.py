"""Parsing and signature checks of the devnet topic log's requests (pure: no I/O, no state).

Split from :mod:`.auditserver` so the server module holds the store and the HTTP plumbing.
"""

from __future__ import annotations

from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from fedswarm.ledger.audit import MAX_CHUNKS
from fedswarm.ledger.topickeys import KeySpec, TopicKeyError, validate_key
from fedswarm.ledger.verify import parse_timestamp

OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "="}


class RequestError(Exception):
    """A refused request: HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def require(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RequestError(400, f"field {key!r} missing or not a {kind.__name__}")
    return value


def parse_valid_start(text: str) -> tuple[int, int]:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise RequestError(400, f"valid_start: {exc}") from None


def _verify_one(pub_hex: Any, sig_hex: Any, signed: bytes) -> bytes:
    try:
        public_key, signature = bytes.fromhex(pub_hex), bytes.fromhex(sig_hex)
        if len(public_key) != 32 or len(signature) != 64:
            raise ValueError
        VerifyKey(public_key).verify(signed, signature)
    except (ValueError, TypeError, BadSignatureError):
        raise RequestError(403, "INVALID_SIGNATURE: a signature does not verify for its public key"
                                " and this request") from None
    return public_key


def check_signatures(body: dict[str, Any], signed: bytes) -> tuple[bytes, set[bytes]]:
    """The payer's raw Ed25519 public key and every verified signer (payer included). Like a
    Hedera signature map, one bad signature refuses the whole transaction."""
    pub_hex, sig_hex = body.get("public_key"), body.get("signature")
    if not pub_hex or not sig_hex:
        raise RequestError(401, "unsigned request: public_key and signature are required")
    payer = _verify_one(pub_hex, sig_hex, signed)
    extra = body.get("signatures") or []
    if not isinstance(extra, list) or len(extra) > 10:
        raise RequestError(400, "signatures must be a list of at most 10 {public_key, signature}")
    signers = {payer}
    for item in extra:
        if not isinstance(item, dict):
            raise RequestError(400, "signatures must be a list of {public_key, signature}")
        signers.add(_verify_one(item.get("public_key"), item.get("signature"), signed))
    return payer, signers


def parse_key(value: Any, *, clearing: bool = False) -> KeySpec | None:
    """A topic key from a request (None: no key; with ``clearing`` an empty key list is None
    too, the way an update removes a key on Hedera)."""
    if value is None or (clearing and value == {"key_list": []}):
        return None
    try:
        return validate_key(value)
    except TopicKeyError as exc:
        raise RequestError(400, f"BAD_ENCODING: {exc}") from None


def parse_chunk(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError(400, "chunk must be an object or null")
    initial = require(value, "initial_valid_start", str)
    number, total = require(value, "number", int), require(value, "total", int)
    try:
        parse_timestamp(initial)
    except ValueError as exc:
        raise RequestError(400, f"chunk: {exc}") from None
    if not 1 <= total <= MAX_CHUNKS:
        raise RequestError(400, f"chunk total {total} not within 1..{MAX_CHUNKS} (the network's limit per message)")
    if not 1 <= number <= total:
        raise RequestError(400, f"chunk number {number} not within 1..{total}")
    return {"initial_valid_start": initial, "number": number, "total": total}


def parse_bounds(query: dict[str, list[str]]) -> list[tuple[str, str, int]]:
    bounds = []
    for param, column in (("sequencenumber", "sequence_number"), ("timestamp", "consensus_ns")):
        for raw in query.get(param, []):
            op, _, value = raw.rpartition(":")
            op = op or "eq"
            if op not in OPS:
                raise RequestError(400, f"invalid {param} operator {op!r}: use gt, gte, lt, lte, eq")
            try:
                if column == "consensus_ns":
                    secs, _, frac = value.partition(".")
                    number = int(secs) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
                else:
                    number = int(value)
                if number < 0 or number >= 2**63:
                    raise ValueError
            except ValueError:
                raise RequestError(400, f"invalid {param} value {value!r}") from None
            bounds.append((column, OPS[op], number))
    return bounds


