"""Every decoder of outside bytes, fuzzed: wire messages, bids, safetensors headers, manifests,
audit messages and mirror pages. Each may only refuse with its own one-line error; deep nesting
is refused; sizes are refused before the bytes are parsed."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedswarm.learning.weights import (
    WeightsError,
    load_weights_bytes,
    read_layout,
    save_weights_bytes,
)
from fedswarm.ledger.audit import AuditMessage, ChunkAssembler
from fedswarm.protocol.decode import DecodeError
from fedswarm.protocol.messages import WireError, decode, encode, registry
from fedswarm.storage.manifest import ManifestError, SignedManifest

DEEP = b"[" * 100_000
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.text(max_size=30),
                    st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda k: st.lists(k, max_size=3) | st.dictionaries(st.text(max_size=8), k, max_size=3),
                      max_leaves=12)


def _fields_of(type_name: str) -> list[str]:
    return [*registry()[type_name].model_fields, "type", "version", "extra"]


@st.composite
def wire_dicts(draw: st.DrawFn) -> bytes:
    """A JSON object with a registered (or junk) type and that type's field names, random values."""
    type_name = draw(st.sampled_from([*registry(), "nope", ""]))
    names = _fields_of(type_name) if type_name in registry() else ["x"]
    body = draw(st.dictionaries(st.sampled_from(names), values, max_size=len(names)))
    body["type"] = type_name
    return json.dumps(body).encode()


@given(wire_dicts())
@SETTINGS
def test_wire_messages_only_raise_wire_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except WireError as exc:
        assert "\n" not in str(exc)
    else:
        assert decode(encode(msg)) == msg  # whatever is accepted round-trips


@given(st.binary(max_size=600), st.integers(0, 200))
@SETTINGS
def test_mutated_bid_only_raises_wire_error(junk: bytes, at: int) -> None:
    bid = json.dumps({"type": "bid", "job_id": "j1", "peer_id": "12D3KooW" + "a" * 44}).encode()
    with pytest.raises(WireError):
        decode(bid[:at] + junk + bid[at:] if junk else bid)  # (incomplete bid: always refused)


@pytest.mark.parametrize("wrapper", [b"%s", b'{"type":"chat","text":"x","extra":%s}'])
def test_deep_wire_message_refused(wrapper: bytes) -> None:
    with pytest.raises(WireError, match="nests deeper"):
        decode(wrapper % DEEP, max_bytes=1 << 20)


def test_wire_size_refused_before_parsing() -> None:
    with pytest.raises(WireError, match="over the 1000-byte cap"):
        decode(b" " * 1001, max_bytes=1000)


# --- safetensors headers ------------------------------------------------------------------


def _st_bytes(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


@given(st.binary(max_size=400), st.binary(max_size=64))
@SETTINGS
def test_safetensors_headers_only_raise_weights_error(header: bytes, body: bytes) -> None:
    for data in (_st_bytes(b"{" + header, body), header):
        try:
            load_weights_bytes(data)  # "{}" and no body is a valid, empty file
        except WeightsError as exc:
            assert "\n" not in str(exc)


@given(values)
@SETTINGS
def test_safetensors_json_headers_only_raise_weights_error(header: object) -> None:
    try:
        load_weights_bytes(_st_bytes(json.dumps({"w": header}).encode(), b"\0" * 16))
    except WeightsError as exc:
        assert "\n" not in str(exc)


def test_deep_safetensors_header_refused(tmp_path: Path) -> None:
    header = b'{"a":' + DEEP
    with pytest.raises(WeightsError, match="nests deeper"):
        load_weights_bytes(_st_bytes(header, b"\0" * 8))
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_st_bytes(header))
    with pytest.raises(WeightsError, match="nests deeper"):
        read_layout(path)


def test_safetensors_header_length_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(WeightsError, match="header length"):
        read_layout(path)


def test_real_weights_still_load() -> None:
    import numpy as np

    state = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    assert set(load_weights_bytes(save_weights_bytes(state))) == {"w", "b"}


# --- manifests ----------------------------------------------------------------------------


@given(values)
@SETTINGS
def test_manifests_only_raise_manifest_error(body: object) -> None:
    data = json.dumps({"manifest": body, "signer_public_key": "00", "signature": "00"})
    with pytest.raises(ManifestError):
        SignedManifest.from_json(data)


def test_deep_and_huge_manifests_refused() -> None:
    with pytest.raises(ManifestError, match="nests deeper"):
        SignedManifest.from_json(b'{"manifest":' + DEEP)
    t0 = time.perf_counter()
    with pytest.raises(ManifestError, match="cap"):
        SignedManifest.from_json(b" " * (33 << 20))
    assert time.perf_counter() - t0 < 1.0


# --- audit messages and mirror pages ------------------------------------------------------


def _mirror_msg(seq: int, payload: bytes, chunk: dict | None = None) -> dict:
    return {"topic_id": "0.0.5", "sequence_number": seq, "payer_account_id": "0.0.9",
            "consensus_timestamp": f"{1700000000 + seq}.000000000", "chunk_info": chunk,
            "message": base64.b64encode(payload).decode()}


def test_a_100_chunk_deep_audit_message_is_refused() -> None:
    # The devnet attack: 100 chunks of "[" crashed the node that rendered the job's audit page.
    initial = {"account_id": "0.0.9", "transaction_valid_start": "1.1"}
    asm = ChunkAssembler()
    done = [asm.add(_mirror_msg(i + 1, DEEP[:1024], {"initial_transaction_id": initial, "number": i + 1,
                                                     "total": 100})) for i in range(100)]
    assert done == [None] * 100 and asm.skipped == 100
    # and a whole deep payload (if one got assembled) is refused by the decoder
    with pytest.raises(DecodeError):
        AuditMessage("0.0.5", DEEP[:20_000], "0.0.9", 1, 20, "1.0", chunks=20).json()


@given(st.dictionaries(st.sampled_from(["topic_id", "sequence_number", "payer_account_id", "consensus_timestamp",
                                        "chunk_info", "message"]), values, max_size=6))
@SETTINGS
def test_chunk_assembler_never_raises(msg: dict) -> None:
    asm = ChunkAssembler()
    whole = asm.add(msg)
    if whole is not None:
        with contextlib.suppress(DecodeError):
            whole.json()


def test_mirror_answers_are_bounded() -> None:
    from fedswarm.ledger.audit import AuditError, _decode_body

    with pytest.raises(AuditError, match="nests deeper"):
        _decode_body(b'{"messages":' + DEEP, "mirror")
    assert _decode_body(b'{"messages":[]}', "mirror") == {"messages": []}
