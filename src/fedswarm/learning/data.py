"""Training tensors from plaintext chunk files, with the job's preprocessing applied.

Every trainer (and the client re-executing a unit) calls the same code, so the
standardisation and label checks are identical everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedswarm.learning.chunks import MAX_CHUNK_BYTES, ChunkFormatError, Preprocessing, decode_chunk


def load_arrays(paths: Sequence[str | Path], prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Read chunk files in order, check them against ``prep`` and standardise the features.

    Returns ``(x float32 [rows, features], y int64 [rows] or float32 [rows(, k)])``. Raises
    :class:`ChunkFormatError` for a malformed chunk or out-of-range class labels.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for path in paths:
        p = Path(path)
        if p.stat().st_size > MAX_CHUNK_BYTES:
            raise ChunkFormatError(f"chunk {p.name} is over the {MAX_CHUNK_BYTES}-byte cap")
        x, y = decode_chunk(p.read_bytes(), prep.num_features)
        if prep.task == "classification":
            if y.dtype != np.int64:
                raise ChunkFormatError(f"chunk {p.name}: classification labels must be int64")
            if y.size and (y.min() < 0 or y.max() >= prep.num_classes):
                raise ChunkFormatError(f"chunk {p.name}: labels outside 0..{prep.num_classes - 1}")
        xs.append(prep.apply(x))
        ys.append(y)
    if not xs:
        raise ChunkFormatError("no chunks given")
    return np.concatenate(xs), np.concatenate(ys)


def load_tensors(
    paths: Sequence[str | Path], prep: Preprocessing, input_shape: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`load_arrays`, as torch tensors; ``x`` reshaped to ``[rows, *input_shape]``."""
    x, y = load_arrays(paths, prep)
    xt = torch.from_numpy(x)
    if input_shape is not None and list(input_shape) != [x.shape[1]]:
        if int(np.prod(input_shape)) != x.shape[1]:
            raise ChunkFormatError(f"{x.shape[1]} features cannot be shaped as {list(input_shape)}")
        xt = xt.reshape(-1, *input_shape)
    return xt, torch.from_numpy(y)
