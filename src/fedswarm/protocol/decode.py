"""The one bounded JSON decoder for every byte that comes from outside.

CPython's C JSON decoder recurses once per nesting level, and once py_ecc (imported through
eth_account) has raised the recursion limit to 100,000, ~75,000 levels of ``[`` overflow the C
stack and kill the process with SIGSEGV instead of raising. So nothing from the network, a
peer's file or a mirror node reaches ``json.loads`` before :func:`decode_json` has

1. checked its size against the caller's cap (before anything else is done with it), and
2. measured its nesting depth with a scan that runs at C speed and never recurses.

Every failure is one :class:`DecodeError` (a ``ValueError``) with a one-line message.
The caps of each surface live here too, so one module says how much any input may be.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

# --- caps of each surface (bytes) -------------------------------------------------------------
MAX_DEPTH = 32  # real messages nest at most ~6 levels; 32 leaves room and stays far from the C stack
MAX_RPC_FRAME = 1 << 20  # an RPC envelope (the blob travels apart, in its own frames)
MAX_GOSSIP_MESSAGE = 512 * 1024  # gossipsub drops > 1 MiB itself; we publish under this
MAX_SAFETENSORS_HEADER = 16 << 20  # tensor names, dtypes, shapes, offsets: ~100 B per tensor
MAX_MANIFEST = 32 << 20  # a chunk manifest: ~250 B per chunk, up to 100,000 chunks
MAX_AUDIT_MESSAGE = 64 * 1024  # one audit record (HCS caps a message at 1 KiB a chunk, 20 chunks)
MAX_MIRROR_JSON = 4 << 20  # one mirror-node page (at most 100 messages, base64)
MAX_FILE_JSON = 16 << 20  # JSON files a user or the devnet hands us (specs, logs)

# Keep only quotes and brackets, with every opener made "[" and every closer "]": depth is all
# we need (a mismatched pair is json.loads's business, and it cannot recurse past a checked depth).
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


class DecodeError(ValueError):
    """Input that is too large, nested too deep, not JSON, or not the expected shape."""


def nesting_depth_ok(data: bytes, max_depth: int) -> bool:
    """True if ``data`` (JSON text) nests at most ``max_depth`` levels and its brackets balance.

    No recursion, no regex, every step a C-speed bytes operation: escaped backslashes and then
    escaped quotes are dropped (left to right, as JSON pairs them), everything but quotes and
    brackets is deleted, the insides of strings are cut out (every other piece between quotes),
    then each ``replace("[]", "")`` pass removes exactly the innermost level, so a balanced text
    of depth d is empty after d passes. An unbalanced text never empties (it is refused;
    ``json.loads`` would refuse it too). On text that is not JSON the answer is still safe:
    the part json.loads would parse before failing is lexed exactly as JSON lexes it.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return True  # cannot nest deeper than it has openers: the common case for small messages
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    pieces = unescaped.translate(_BRACKETS, _NOT_STRUCTURE).split(b'"')
    brackets = b"".join(pieces[0::2])  # odd pieces are inside strings (an unterminated one too)
    for _ in range(max_depth):
        if not brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # no innermost pair left: unbalanced
        brackets = shorter
    return not brackets


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a JSON number")


def decode_json(data: bytes | bytearray | memoryview | str, *, max_bytes: int, max_depth: int = MAX_DEPTH,
                what: str = "message") -> Any:
    """Parse JSON from outside: size cap first, then a depth scan, then ``json.loads``.

    ``what`` names the input in the error (``"RPC frame"``, ``"manifest"``...).
    Raises :class:`DecodeError` (one line) on anything but a JSON value within the caps.
    """
    size = len(data)
    if size > max_bytes:
        raise DecodeError(f"{what} of {size} bytes is over the {max_bytes}-byte cap")
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError(f"{what} is not valid UTF-8 text") from None
    else:
        raw = bytes(data)
    if not nesting_depth_ok(raw, max_depth):
        raise DecodeError(f"{what} nests deeper than {max_depth} levels (or its brackets do not balance)")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except DecodeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and int strings over sys.get_int_max_str_digits.
        raise DecodeError(f"{what} is not JSON: {_one_line(str(exc))}") from None


M = TypeVar("M", bound=BaseModel)


def validation_summary(exc: ValidationError) -> str:
    """One line from a pydantic error: the first failing field and why (and how many more)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return _one_line(f"{loc}: {first.get('msg', 'invalid')}{more}")


def validate_model(model: type[M], obj: Any, *, what: str | None = None) -> M:
    """``model.model_validate(obj)`` with a one-line :class:`DecodeError` on failure."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise DecodeError(f"invalid {what or model.__name__}: {validation_summary(exc)}") from None


def decode_model(model: type[M], data: bytes | bytearray | memoryview | str, *, max_bytes: int,
                 max_depth: int = MAX_DEPTH, what: str | None = None) -> M:
    """Decode a pydantic model from outside bytes through :func:`decode_json`'s caps."""
    label = what or model.__name__
    return validate_model(model, decode_json(data, max_bytes=max_bytes, max_depth=max_depth, what=label),
                          what=label)


def decode_object(data: bytes | bytearray | memoryview | str, *, max_bytes: int, max_depth: int = MAX_DEPTH,
                  what: str = "message") -> dict[str, Any]:
    """:func:`decode_json` that also requires a JSON object (the shape of every message)."""
    obj = decode_json(data, max_bytes=max_bytes, max_depth=max_depth, what=what)
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = [
    "MAX_AUDIT_MESSAGE",
    "MAX_DEPTH",
    "MAX_FILE_JSON",
    "MAX_GOSSIP_MESSAGE",
    "MAX_MANIFEST",
    "MAX_MIRROR_JSON",
    "MAX_RPC_FRAME",
    "MAX_SAFETENSORS_HEADER",
    "DecodeError",
    "decode_json",
    "decode_model",
    "decode_object",
    "nesting_depth_ok",
    "validate_model",
    "validation_summary",
]
