"""Model weights as safetensors only, and flat float32 parameter vectors.

Weights cross machines as safetensors (a JSON header + raw little-endian bytes): nothing in
them can run code. Everything pickle-based (``.pt``, ``.pth``, ``.pt2``, ``np.load`` with
``allow_pickle``) is refused with a clear error, by suffix *and* by magic bytes, because an
attacker controls both the name and the content.

Aggregation works on one flat float32 vector per model; :class:`Layout` records the names,
shapes and dtypes needed to go back to a state dict (integer buffers such as BatchNorm's
``num_batches_tracked`` round-trip through float32 exactly for any realistic count).

This module needs only numpy + safetensors (no torch), so a client node can validate updates
without importing torch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedswarm.protocol.decode import MAX_SAFETENSORS_HEADER, DecodeError, decode_object

MAX_WEIGHTS_BYTES = 4 << 30  # 4 GiB: far above any model a trainer accepts by budget
MAX_HEADER_BYTES = MAX_SAFETENSORS_HEADER
ALLOWED_DTYPES = {"float32": np.float32, "int64": np.int64}
REFUSED_SUFFIXES = {
    ".pt": "a PyTorch pickle archive",
    ".pth": "a PyTorch pickle archive",
    ".pt2": "a torch.export archive (loading one can run code)",
    ".pkl": "a pickle",
    ".pickle": "a pickle",
    ".ckpt": "a pickle-based checkpoint",
    ".npy": "a numpy array file (may hold pickled objects)",
    ".npz": "a numpy archive (may hold pickled objects)",
    ".bin": "a PyTorch pickle archive",
}


class WeightsError(ValueError):
    """Weights bytes or a file that must not (or cannot) be used; the message says why."""


class TensorLayout(BaseModel):
    """Name, shape and dtype of one tensor in a flat parameter vector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=300)
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Layout(BaseModel):
    """The ordered tensors making up a flat parameter vector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensors: tuple[TensorLayout, ...]

    @property
    def size(self) -> int:
        """Number of float32 elements in the flat vector."""
        return sum(t.numel for t in self.tensors)

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


def layout_of(state: Mapping[str, np.ndarray]) -> Layout:
    """The layout of a state dict (numpy arrays), in canonical (sorted-name) order.

    Canonical because the same weights arrive in different orders: a model's ``state_dict``
    order, a safetensors file's header order. Flat vectors of two parties must line up."""
    return Layout(
        tensors=tuple(
            TensorLayout(name=k, shape=tuple(state[k].shape), dtype=str(state[k].dtype)) for k in sorted(state)
        )
    )


def flatten_state(state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Concatenate every tensor of ``state`` into one float32 vector, plus its layout."""
    layout = layout_of(state)
    if not state:
        return np.zeros(0, dtype=np.float32), layout
    vec = np.concatenate([np.asarray(state[t.name], dtype=np.float32).reshape(-1) for t in layout.tensors])
    return vec, layout


def unflatten_state(vec: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into named arrays with the layout's shapes and dtypes."""
    vec = np.asarray(vec)
    if vec.ndim != 1 or vec.shape[0] != layout.size:
        raise WeightsError(f"flat vector has shape {vec.shape}, the layout needs ({layout.size},)")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in layout.tensors:
        part = vec[offset : offset + t.numel].reshape(t.shape)
        if t.dtype == "int64":
            part = np.rint(part).astype(np.int64)
        else:
            part = part.astype(ALLOWED_DTYPES.get(t.dtype, np.float32), copy=True)
        out[t.name] = part
        offset += t.numel
    return out


def refuse_unsafe_bytes(data: bytes, what: str = "weights") -> None:
    """Raise :class:`WeightsError` if ``data`` looks like pickle or a zip (``.pt``/``.pt2``).

    Only meaningful for bytes that failed the safetensors structure check: a valid header
    length can itself start with bytes such as 0x80 or ``}``.
    """
    if data[:2] == b"PK":
        raise WeightsError(
            f"{what} is a zip archive (a .pt/.pt2 file): refused, since loading one can run "
            "code; re-export the weights as safetensors with `fedswarm model export`"
        )
    if data[:1] == b"\x80" or data[:1] in (b"(", b"c", b"]", b"}"):
        # Pickle protocol 2+ starts with PROTO (0x80); protocol 0/1 with MARK, GLOBAL, lists.
        raise WeightsError(
            f"{what} looks like a pickle: refused, since unpickling runs code; "
            "send weights as safetensors"
        )
    if data[:6] == b"\x93NUMPY":
        raise WeightsError(f"{what} is a .npy file: refused; send weights as safetensors")


def _check_header(data: bytes, what: str) -> None:
    """Cheap structural checks before handing bytes to the safetensors parser."""
    if len(data) < 10:
        raise WeightsError(f"{what} is {len(data)} bytes: too short to be safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise WeightsError(f"{what} has a safetensors header length of {n}: corrupt or hostile")
    if data[8:9] != b"{":
        raise WeightsError(f"{what} does not start with a safetensors JSON header")
    _parse_header(data[8 : 8 + n], what)


def _parse_header(raw: bytes, what: str) -> dict[str, object]:
    """The safetensors JSON header through the bounded decoder (size and depth capped before
    json.loads: a deeply nested header would otherwise crash the process, not raise)."""
    try:
        return decode_object(raw, max_bytes=MAX_HEADER_BYTES, what=f"{what}'s safetensors header")
    except DecodeError as exc:
        raise WeightsError(str(exc)) from None


def load_weights_bytes(
    data: bytes,
    expected: Layout | None = None,
    *,
    max_bytes: int = MAX_WEIGHTS_BYTES,
    what: str = "weights",
) -> dict[str, np.ndarray]:
    """Parse and validate safetensors bytes into numpy arrays.

    Checks: size cap, no pickle/zip, well-formed header, dtypes float32/int64, float tensors
    finite, and (when ``expected`` is given) exactly the expected names, shapes and dtypes.
    Raises :class:`WeightsError` with a one-line reason.
    """
    if not isinstance(data, bytes):  # decryption hands large payloads back as bytearray
        data = bytes(data)
    if len(data) > max_bytes:
        raise WeightsError(f"{what} is {len(data)} bytes, over the {max_bytes}-byte cap")
    try:
        _check_header(data, what)
    except WeightsError:
        refuse_unsafe_bytes(data, what)  # a more precise reason when it is pickle/zip/npy
        raise
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several exception types on bad input
        # one line: the parser's message quotes the offending bytes, which may hold newlines
        reason = " ".join(str(exc).split())[:300]
        raise WeightsError(f"{what} is not valid safetensors: {reason}") from None
    for name, arr in tensors.items():
        if arr.dtype not in (np.float32, np.int64):
            raise WeightsError(f"{what}: tensor {name!r} has dtype {arr.dtype}; need float32/int64")
        if arr.dtype == np.float32 and not np.isfinite(arr).all():
            raise WeightsError(f"{what}: tensor {name!r} holds NaN or Inf values")
    if expected is not None:
        check_layout(tensors, expected, what)
        tensors = {t.name: tensors[t.name] for t in expected.tensors}
    return tensors


def check_layout(tensors: Mapping[str, np.ndarray], expected: Layout, what: str = "weights") -> None:
    """Raise :class:`WeightsError` unless ``tensors`` has exactly the expected names/shapes/dtypes."""
    want = {t.name: t for t in expected.tensors}
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise WeightsError(f"{what}: tensor names differ (missing {missing[:5]}, unexpected {extra[:5]})")
    for name, t in want.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(t.shape):
            raise WeightsError(f"{what}: tensor {name!r} has shape {tuple(arr.shape)}, expected {t.shape}")
        if str(arr.dtype) != t.dtype:
            raise WeightsError(f"{what}: tensor {name!r} has dtype {arr.dtype}, expected {t.dtype}")


def refuse_unsafe_path(path: str | Path) -> Path:
    """Refuse pickle-based weight files by suffix; returns the path as :class:`Path`."""
    p = Path(path)
    reason = REFUSED_SUFFIXES.get(p.suffix.lower())
    if reason:
        raise WeightsError(
            f"refusing {p.name}: it is {reason}; weights are accepted only as .safetensors"
        )
    return p


def load_weights_file(
    path: str | Path, expected: Layout | None = None, *, max_bytes: int = MAX_WEIGHTS_BYTES
) -> dict[str, np.ndarray]:
    """Read and validate a ``.safetensors`` file (see :func:`load_weights_bytes`)."""
    p = refuse_unsafe_path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise WeightsError(f"{p.name} is {size} bytes, over the {max_bytes}-byte cap")
    return load_weights_bytes(p.read_bytes(), expected, max_bytes=max_bytes, what=p.name)


def save_weights_bytes(state: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a state dict (numpy arrays) to safetensors bytes, checking dtypes and values."""
    clean: dict[str, np.ndarray] = {}
    for name, arr in state.items():
        # not np.ascontiguousarray: it turns 0-d tensors (num_batches_tracked) into shape (1,)
        arr = np.require(arr, requirements="C")
        if arr.dtype not in (np.float32, np.int64):
            raise WeightsError(f"tensor {name!r} has dtype {arr.dtype}; need float32/int64")
        if arr.dtype == np.float32 and not np.isfinite(arr).all():
            raise WeightsError(f"tensor {name!r} holds NaN or Inf values")
        clean[name] = arr
    return st_save(clean)


def save_weights_file(path: str | Path, state: Mapping[str, np.ndarray]) -> Path:
    """Write a state dict to a ``.safetensors`` file atomically (temp file + rename)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise WeightsError(f"weights files must end in .safetensors, got {p.name}")
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(save_weights_bytes(state))
    tmp.replace(p)
    return p


def torch_state_to_numpy(state: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Convert a torch state dict to numpy arrays (float → float32, ints → int64)."""
    out: dict[str, np.ndarray] = {}
    for name, t in state.items():
        arr = t.detach().cpu().numpy()  # type: ignore[attr-defined]
        out[name] = arr.astype(np.int64) if arr.dtype.kind in "iub" else arr.astype(np.float32)
    return out


def read_layout(path: str | Path) -> Layout:
    """The layout (names, shapes, dtypes) of a safetensors file, from its header alone."""
    p = refuse_unsafe_path(path)
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{p.name} is too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise WeightsError(f"{p.name} has a safetensors header length of {n}: corrupt or hostile")
        raw = f.read(n)
    header = _parse_header(raw, p.name)
    names = {"F32": "float32", "I64": "int64"}
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in names:
            raise WeightsError(f"{p.name}: tensor {name!r} has an unsupported dtype")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WeightsError(f"{p.name}: tensor {name!r} has no valid shape")
        tensors.append(TensorLayout(name=name, shape=tuple(shape), dtype=names[info["dtype"]]))
    return Layout(tensors=tuple(tensors))
