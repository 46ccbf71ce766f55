"""The bounded decoder: size cap first, depth scan before json.loads, one DecodeError."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from fedswarm.protocol.decode import (
    DecodeError,
    decode_json,
    decode_model,
    decode_object,
    nesting_depth_ok,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=30,
)


def _depth(obj: object) -> int:
    if isinstance(obj, list):
        return 1 + max((_depth(x) for x in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((_depth(x) for x in obj.values()), default=0)
    return 0


@given(json_values)
def test_valid_json_round_trips_and_depth_is_exact(value: object) -> None:
    text = json.dumps(value).encode()
    depth = _depth(value)
    assert nesting_depth_ok(text, depth)
    if depth > 0:
        assert not nesting_depth_ok(text, depth - 1)
    assert decode_json(text, max_bytes=len(text), max_depth=max(depth, 1)) == value


@given(st.binary(max_size=2048))
@settings(max_examples=300)
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        decode_json(data, max_bytes=4096)
    except DecodeError as exc:
        assert "\n" not in str(exc)


@given(st.text(alphabet='[]{}",:\\ 0a', max_size=400))
@settings(max_examples=300)
def test_bracket_soup_only_ever_raises_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        decode_json(text, max_bytes=4096, max_depth=8)


def test_brackets_inside_strings_do_not_count() -> None:
    data = json.dumps({"a": "[[[[[[[[[[{{{{{{", "b": ["]]]]\\\"[[["]}).encode()
    assert decode_json(data, max_bytes=1000, max_depth=2)["a"].startswith("[[[")


@pytest.mark.parametrize("opener", [b"[", b"{\"a\":"])
def test_deep_nesting_refused_without_recursing(opener: bytes) -> None:
    data = opener * 100_000
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="nests deeper than 32"):
        decode_json(data, max_bytes=1 << 20)
    assert time.perf_counter() - t0 < 1.0


def test_depth_at_the_limit_is_accepted_and_one_more_refused() -> None:
    ok = b"[" * 32 + b"]" * 32
    assert decode_json(ok, max_bytes=100) is not None
    with pytest.raises(DecodeError):
        decode_json(b"[" + ok + b"]", max_bytes=100)


def test_size_checked_before_anything_else() -> None:
    with pytest.raises(DecodeError, match="over the 10-byte cap"):
        decode_json(b"[" * 11, max_bytes=10)
    with pytest.raises(DecodeError, match="over the 10-byte cap"):
        decode_json("x" * 11, max_bytes=10)


def test_quote_and_backslash_soup_is_linear() -> None:
    # An unterminated string made of escaped quotes: a naive string regex retries from every
    # quote (quadratic); this one must stay fast.
    for data in (b'"\\"' * 200_000, b'["' + b'\\"' * 300_000, b'"\\' * 300_000):
        t0 = time.perf_counter()
        with pytest.raises(DecodeError):
            decode_json(data, max_bytes=1 << 20)
        assert time.perf_counter() - t0 < 1.0


def test_nan_and_huge_ints_are_refused() -> None:
    for bad in (b"[NaN]", b"Infinity", b"-Infinity"):
        with pytest.raises(DecodeError):
            decode_json(bad, max_bytes=100)
    with pytest.raises(DecodeError):
        decode_json(b"1" * 10_000, max_bytes=20_000)


class _Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    n: int


def test_decode_model_gives_one_line_errors() -> None:
    assert decode_model(_Thing, b'{"name":"a","n":1}', max_bytes=100).n == 1
    with pytest.raises(DecodeError, match=r"invalid _Thing: name: Field required \(\+2 more\)"):
        decode_model(_Thing, b'{"n":"x","extra":1}', max_bytes=100)
    with pytest.raises(DecodeError, match="must be a JSON object"):
        decode_object(b"[1]", max_bytes=100)


def test_deep_json_would_crash_an_unguarded_decoder_in_this_environment() -> None:
    # Why the decoder exists: with py_ecc's recursion limit, json.loads of 100 KB of "[" would
    # overflow the C stack. In a child process (so a crash does not take pytest down) the
    # guarded path must raise cleanly with the limit that py_ecc sets.
    code = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from fedswarm.protocol.decode import decode_json, DecodeError\n"
        "try:\n    decode_json(b'[' * 100_000, max_bytes=1 << 20)\n"
        "except DecodeError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused")


@pytest.mark.parametrize("value", [
    ["\\", "[", ["\\\"]", "\\\\[[["]],
    {"k\\": ["\"[{", {"x": "\\\\\\\"]]]"}]},
    [[[["]]]]"]]]],  # closers inside a string must not hide real openers
])
def test_escapes_and_brackets_in_strings_are_lexed_like_json(value: object) -> None:
    text = json.dumps(value).encode()
    depth = _depth(value)
    assert nesting_depth_ok(text, depth) and not nesting_depth_ok(text, depth - 1)


def test_string_closers_cannot_hide_deep_openers() -> None:
    evil = b'["' + b"]" * 50_000 + b'",' + b"[" * 50_000
    assert not nesting_depth_ok(evil, 32)
