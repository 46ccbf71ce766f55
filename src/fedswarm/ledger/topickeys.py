"""Topic keys as the Hedera Consensus Service applies them (pure logic, no I/O).

A topic may carry an **admin key** (may update or delete the topic; without one the topic is
immutable) and a **submit key** (every message must be signed by it; without one anyone may
submit). A key is one Ed25519 public key, a key list (every member must sign) or a threshold
key (at least ``threshold`` members must sign); lists nest. The devnet topic log writes keys as
JSON::

    {"ed25519": "<64 hex digits>"}
    {"key_list": [KEY, ...]}
    {"threshold": N, "keys": [KEY, ...]}

The rules enforced (Hedera's ``ConsensusCreateTopic``/``SubmitMessage``/``UpdateTopic``/
``DeleteTopic`` handlers): creating a topic with an admin key needs the admin key's signature;
a message to a topic with a submit key needs the submit key's signature (else
``INVALID_SIGNATURE``); update and delete need the admin key (``UNAUTHORIZED`` when the topic
has none); a new admin key must sign the update that sets it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

MAX_KEYS = 10  # members of one list: plenty for co-signers, bounded for hostile input
MAX_KEY_DEPTH = 3

KeySpec = dict[str, Any]


class TopicKeyError(ValueError):
    """A key spec is malformed (the network answers ``BAD_ENCODING``)."""


def ed25519_key(public_key: bytes) -> KeySpec:
    """The key spec of one raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise TopicKeyError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return {"ed25519": public_key.hex()}


def key_list(keys: Iterable[KeySpec]) -> KeySpec:
    """A key every member of which must sign."""
    return {"key_list": list(keys)}


def threshold_key(threshold: int, keys: Iterable[KeySpec]) -> KeySpec:
    """A key at least ``threshold`` members of which must sign."""
    return {"threshold": threshold, "keys": list(keys)}


def validate_key(spec: Any, depth: int = 0) -> KeySpec:
    """``spec`` checked (shape, hex, counts, nesting); raises :class:`TopicKeyError`."""
    if depth > MAX_KEY_DEPTH:
        raise TopicKeyError(f"key nested deeper than {MAX_KEY_DEPTH} levels")
    if not isinstance(spec, Mapping):
        raise TopicKeyError("a key must be an object: {ed25519}, {key_list} or {threshold, keys}")
    if set(spec) == {"ed25519"}:
        value = spec["ed25519"]
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise TopicKeyError("ed25519 key must be 64 hex digits")
        return {"ed25519": raw.hex()}
    if set(spec) == {"key_list"}:
        members = _members(spec["key_list"], depth)
        if not members:
            raise TopicKeyError("empty key_list: it would need no signature at all")
        return {"key_list": members}
    if set(spec) == {"threshold", "keys"}:
        members = _members(spec["keys"], depth)
        n = spec["threshold"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(members):
            raise TopicKeyError(f"threshold must be within 1..{len(members)} (the number of keys)")
        return {"threshold": n, "keys": members}
    raise TopicKeyError("a key must be {ed25519}, {key_list} or {threshold, keys}")


def _members(value: Any, depth: int) -> list[KeySpec]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise TopicKeyError(f"a key list must be a list of at most {MAX_KEYS} keys")
    return [validate_key(v, depth + 1) for v in value]


def is_satisfied(spec: KeySpec, signers: set[bytes]) -> bool:
    """Whether the verified Ed25519 ``signers`` (raw public keys) satisfy ``spec``."""
    if "ed25519" in spec:
        return bytes.fromhex(spec["ed25519"]) in signers
    if "key_list" in spec:
        return all(is_satisfied(k, signers) for k in spec["key_list"])
    return sum(is_satisfied(k, signers) for k in spec["keys"]) >= int(spec["threshold"])


def encode_key(spec: KeySpec | None) -> str | None:
    """Canonical JSON of a (validated) key, for storage and signing; None stays None."""
    return None if spec is None else json.dumps(spec, sort_keys=True, separators=(",", ":"))


def decode_key(text: str | None) -> KeySpec | None:
    """The stored form back (trusted: written by :func:`encode_key`)."""
    return None if text is None else dict(json.loads(text))
