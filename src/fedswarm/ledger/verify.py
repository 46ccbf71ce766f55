"""One verifier for both audit backends: re-computes a topic's running-hash chain from
mirror-node JSON (Hedera's mirror REST API or the devnet topic log, which share the shape).

Each message is checked against the previous running hash: its own ``running_hash`` must be
the SHA-384 chain value over the payer, topic, consensus time, sequence number and message
(:mod:`fedswarm.ledger.runninghash`), so changing any of those fields, or the hash itself,
fails at that message. Sequence numbers must follow without gaps, consensus times must
increase strictly, and ``chunk_info`` (which the network does not hash) must be consistent
with the rules the network enforces (the initial transaction's payer is the message's payer,
``1 <= number <= total``, one total per chunked message, no chunk twice).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedswarm.ledger.runninghash import (
    HASH_SIZE,
    RUNNING_HASH_VERSION,
    ZERO_HASH,
    EntityId,
    next_running_hash,
)

_TIMESTAMP_RE = re.compile(r"^(\d{1,19})\.(\d{9})$")
_FIELDS = (
    "consensus_timestamp",
    "message",
    "payer_account_id",
    "running_hash",
    "running_hash_version",
    "sequence_number",
    "topic_id",
)


class VerificationError(ValueError):
    """A message does not fit the chain; ``sequence``/``index`` say which one."""

    def __init__(self, reason: str, *, index: int, sequence: int | None) -> None:
        where = f"message #{index}" + (f" (sequence {sequence})" if sequence is not None else "")
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.index = index
        self.sequence = sequence


def parse_timestamp(text: str) -> tuple[int, int]:
    """``"seconds.nanos"`` (nine nano digits, as the mirror node writes it) → (seconds, nanos)."""
    if not isinstance(text, str):
        raise ValueError(f"consensus timestamp must be a string, got {type(text).__name__}")
    m = _TIMESTAMP_RE.match(text)
    if not m:
        raise ValueError(f"consensus timestamp {text!r} is not 'seconds.nanos' (9 digits)")
    seconds = int(m.group(1))
    if seconds >= 2**63:
        raise ValueError(f"consensus timestamp {text!r} out of range")
    return seconds, int(m.group(2))


def format_timestamp(total_nanos: int) -> str:
    """Nanoseconds since the epoch → the mirror node's ``"seconds.nanos"`` string."""
    return f"{total_nanos // 1_000_000_000}.{total_nanos % 1_000_000_000:09d}"


def b64decode_strict(text: Any, what: str) -> bytes:
    """Decode standard base64 with padding; a ValueError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def _strict_int(value: Any, what: str) -> int:
    # JSON true/1.0 are not sequence numbers: bool is an int subclass in Python.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer")
    return value


@dataclass
class VerifyResult:
    """Outcome of checking a run of messages: ``ok`` or the first bad message."""

    ok: bool
    checked: int
    running_hash: bytes
    sequence_number: int | None
    bad_index: int | None = None
    bad_sequence: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        """One line for humans."""
        if self.ok:
            return (
                f"OK: {self.checked} messages verified, last sequence {self.sequence_number}, "
                f"running hash {self.running_hash.hex()}"
            )
        where = f"message #{self.bad_index}"
        if self.bad_sequence is not None:
            where += f" (sequence {self.bad_sequence})"
        return f"FAILED at {where}: {self.reason} ({self.checked} verified before it)"


@dataclass
class ChainVerifier:
    """Stateful verifier: feed messages in consensus order with :meth:`check`.

    Parameters: ``prev_running_hash`` is the running hash before the first message fed (48 zero
    bytes for a new topic, which also pins the first sequence number to 1); ``prev_sequence``
    (optional) pins the sequence number expected next; ``topic_id`` (optional) pins the topic.
    """

    prev_running_hash: bytes = ZERO_HASH
    prev_sequence: int | None = None
    topic_id: str | None = None
    prev_timestamp: tuple[int, int] | None = None
    checked: int = 0
    _chunks: dict[tuple[str, str], tuple[int, set[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prev_running_hash) != HASH_SIZE:
            raise ValueError(
                f"previous running hash must be {HASH_SIZE} bytes, got {len(self.prev_running_hash)}"
            )
        if self.prev_sequence is None and self.prev_running_hash == ZERO_HASH:
            self.prev_sequence = 0  # a new topic starts at sequence 1

    def check(self, msg: Mapping[str, Any]) -> None:
        """Verify one mirror-node message and advance; raises VerificationError if it is bad
        (the state is left unchanged then)."""
        index = self.checked
        seq_hint = msg.get("sequence_number") if isinstance(msg, Mapping) else None
        seq_hint = seq_hint if isinstance(seq_hint, int) else None
        try:
            new_state = self._check(msg)
        except ValueError as exc:
            raise VerificationError(str(exc), index=index, sequence=seq_hint) from None
        self.prev_running_hash, self.prev_sequence, self.prev_timestamp = new_state
        self.checked += 1

    def _check(self, msg: Mapping[str, Any]) -> tuple[bytes, int, tuple[int, int]]:
        if not isinstance(msg, Mapping):
            raise ValueError("message is not a JSON object")
        missing = [f for f in _FIELDS if f not in msg]
        if missing:
            raise ValueError(f"missing fields: {', '.join(missing)}")
        version = _strict_int(msg["running_hash_version"], "running_hash_version")
        if version != RUNNING_HASH_VERSION:
            raise ValueError(f"running_hash_version {version} is not {RUNNING_HASH_VERSION}")
        seq = _strict_int(msg["sequence_number"], "sequence_number")
        if self.prev_sequence is not None and seq != self.prev_sequence + 1:
            raise ValueError(f"sequence number {seq} does not follow {self.prev_sequence}")
        topic_text = msg["topic_id"]
        topic = EntityId.parse(topic_text)
        if self.topic_id is not None and str(topic) != self.topic_id:
            raise ValueError(f"topic {topic} is not {self.topic_id}")
        payer = EntityId.parse(msg["payer_account_id"])
        secs, nanos = parse_timestamp(msg["consensus_timestamp"])
        if self.prev_timestamp is not None and (secs, nanos) <= self.prev_timestamp:
            raise ValueError("consensus timestamp does not increase")
        body = b64decode_strict(msg["message"], "message")
        claimed = b64decode_strict(msg["running_hash"], "running_hash")
        if len(claimed) != HASH_SIZE:
            raise ValueError(f"running hash is {len(claimed)} bytes, not {HASH_SIZE}")
        expected = next_running_hash(
            self.prev_running_hash, payer, topic, secs, nanos, seq, body
        )
        if expected != claimed:
            raise ValueError(
                "running hash mismatch: the message, payer, topic, timestamp, sequence number "
                "or running hash was altered (or the previous hash is wrong)"
            )
        self._check_chunk(msg.get("chunk_info"), str(payer))
        if self.topic_id is None:
            self.topic_id = str(topic)
        return claimed, seq, (secs, nanos)

    def _check_chunk(self, info: Any, payer: str) -> None:
        if info is None:
            return
        if not isinstance(info, Mapping):
            raise ValueError("chunk_info is not an object")
        number = _strict_int(info.get("number"), "chunk_info.number")
        total = _strict_int(info.get("total"), "chunk_info.total")
        if not 1 <= number <= total:
            raise ValueError(f"chunk number {number} not within 1..{total}")
        initial = info.get("initial_transaction_id")
        if not isinstance(initial, Mapping):
            raise ValueError("chunk_info.initial_transaction_id missing")
        account = initial.get("account_id")
        valid_start = initial.get("transaction_valid_start")
        if account != payer:
            # The network refuses a chunk whose initial transaction has another payer.
            raise ValueError(f"chunk's initial payer {account} is not the payer {payer}")
        parse_timestamp(valid_start)
        key = (payer, valid_start)
        seen_total, seen = self._chunks.get(key, (total, set()))
        if seen_total != total:
            raise ValueError(f"chunk total {total} differs from {seen_total} of the same message")
        if number in seen:
            raise ValueError(f"chunk {number}/{total} appears twice")
        self._chunks[key] = (total, seen | {number})
        if len(seen) + 1 == total:
            del self._chunks[key]  # complete: forget it, memory stays bounded


def verify_messages(
    messages: Iterable[Mapping[str, Any]],
    prev_running_hash: bytes = ZERO_HASH,
    *,
    prev_sequence: int | None = None,
    topic_id: str | None = None,
) -> VerifyResult:
    """Check ``messages`` (mirror-node message objects in ascending order) as a chain that
    continues from ``prev_running_hash``; the result names the first bad message."""
    verifier = ChainVerifier(prev_running_hash, prev_sequence, topic_id)
    for msg in messages:
        try:
            verifier.check(msg)
        except VerificationError as exc:
            return VerifyResult(
                ok=False,
                checked=verifier.checked,
                running_hash=verifier.prev_running_hash,
                sequence_number=verifier.prev_sequence,
                bad_index=exc.index,
                bad_sequence=exc.sequence,
                reason=exc.reason,
            )
    return VerifyResult(
        ok=True,
        checked=verifier.checked,
        running_hash=verifier.prev_running_hash,
        sequence_number=verifier.prev_sequence,
    )


def verify_page(
    page: Mapping[str, Any],
    prev_running_hash: bytes = ZERO_HASH,
    *,
    prev_sequence: int | None = None,
    topic_id: str | None = None,
) -> VerifyResult:
    """Check one page of mirror-node JSON (``{"messages": [...], "links": {...}}``).

    Pages in ``order=desc`` are accepted too (they are checked in ascending order)."""
    messages = page.get("messages") if isinstance(page, Mapping) else None
    if not isinstance(messages, list):
        raise ValueError("not a mirror-node page: expected an object with a 'messages' list")
    seqs = [m.get("sequence_number") for m in messages if isinstance(m, Mapping)]
    if len(seqs) > 1 and all(isinstance(s, int) for s in seqs) and seqs[0] > seqs[-1]:
        messages = list(reversed(messages))
    return verify_messages(
        messages, prev_running_hash, prev_sequence=prev_sequence, topic_id=topic_id
    )
