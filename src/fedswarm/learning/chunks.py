"""The plaintext format of one dataset chunk, shared by ingestion (client) and training (trainer).

A chunk is a safetensors file (never pickle) with two tensors:
- ``x``: float32 ``[rows, features]``, raw numeric features (before standardisation);
- ``y``: int64 ``[rows]`` class indices (classification) or float32 ``[rows]`` / ``[rows, k]``
  targets (regression).

The client fits a :class:`~fedswarm.protocol.preprocessing.Preprocessing` on the whole dataset and ships it in the job spec, so
every trainer (and the client's own re-execution) standardises identically.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

# The preprocessing travels in the job's wire messages and manifest, so it is defined in the
# protocol layer; re-exported here because ingestion and training use it with the chunk format.
from fedswarm.protocol.preprocessing import Preprocessing

__all__ = ["MAX_CHUNK_BYTES", "ChunkFormatError", "Preprocessing", "decode_chunk", "encode_chunk"]

MAX_CHUNK_BYTES = 1 << 30


class ChunkFormatError(ValueError):
    """The bytes are not a valid chunk (bad header, wrong tensors, wrong dtypes or shapes)."""


def encode_chunk(x: np.ndarray, y: np.ndarray) -> bytes:
    """Serialise one chunk to safetensors bytes."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if y.dtype.kind in "iu":
        y = np.ascontiguousarray(y, dtype=np.int64)
    else:
        y = np.ascontiguousarray(y, dtype=np.float32)
    if x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ChunkFormatError(f"chunk shapes disagree: x {x.shape}, y {y.shape}")
    return st_save({"x": x, "y": y})


def decode_chunk(data: bytes, num_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse chunk bytes, checking tensors, dtypes and shapes; raises :class:`ChunkFormatError`."""
    if not isinstance(data, bytes):  # decryption hands large payloads back as bytearray
        data = bytes(data)
    if len(data) > MAX_CHUNK_BYTES:
        raise ChunkFormatError(f"chunk of {len(data)} bytes is over the {MAX_CHUNK_BYTES} cap")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several types for malformed headers
        raise ChunkFormatError(f"chunk is not valid safetensors: {exc}") from None
    if set(tensors) != {"x", "y"}:
        raise ChunkFormatError(f"chunk must hold exactly x and y, found {sorted(tensors)}")
    x, y = tensors["x"], tensors["y"]
    if x.dtype != np.float32 or x.ndim != 2:
        raise ChunkFormatError(f"x must be float32 [rows, features], got {x.dtype} {x.shape}")
    if y.dtype not in (np.int64, np.float32) or y.shape[0] != x.shape[0] or y.ndim > 2:
        raise ChunkFormatError(f"y must be int64/float32 with {x.shape[0]} rows, got {y.dtype} {y.shape}")
    if num_features is not None and x.shape[1] != num_features:
        raise ChunkFormatError(f"chunk has {x.shape[1]} features, the job has {num_features}")
    return x, y
