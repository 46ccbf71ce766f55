"""Dataset ingestion on the client: CSV, Parquet or NPZ in, plaintext chunks + validation out.

Two streaming passes, memory independent of the dataset size (apart from 3 bytes per row of
split bookkeeping and one chunk at a time):

1. **Fit.** Read batches of the feature and label columns; check every value; accumulate
   per-feature mean/variance (Chan's parallel update, float64), the row count and the label
   classes with their counts (classification) — giving the :class:`Preprocessing`.
2. **Split and write.** A seeded RNG fixes, before the pass, exactly which rows of each class go
   to validation (``round(fraction * count)`` per class: an exact stratified split) and which
   chunk each training row goes to (balanced: chunk sizes differ by at most one row). Rows
   are appended as raw float32 to one temp file per chunk; afterwards each chunk is loaded,
   shuffled with the same RNG and written with :func:`fedswarm.learning.chunks.encode_chunk`.
   The validation rows stay with the client in ``validation.safetensors``.

The files are read by :mod:`fedswarm.learning.readers` (bounded batches, caps from
:class:`IngestLimits`; its public names are re-exported here). Every problem is a one-line
:class:`DatasetError`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from safetensors.numpy import load_file as st_load_file

from fedswarm.learning.chunks import Preprocessing, encode_chunk
from fedswarm.learning.readers import (
    BATCH_ROWS,
    Batches,
    ColumnInfo,
    ColumnKind,
    DatasetError,
    Format,
    IngestLimits,
    NpzSource,
    Source,
    batch_rows,
    detect_format,
    open_source,
    peek_columns,
)

__all__ = [
    "AUTO_MAX_CLASSES", "DEFAULT_CHUNK_BYTES", "Batches", "ChunkFile", "ColumnInfo", "ColumnKind",
    "DatasetError", "DryRun", "Format", "IngestLimits", "PreparedDataset", "Task", "batch_rows",
    "detect_format", "dry_run", "load_validation", "open_source", "peek_columns", "prepare_dataset",
]

Task = Literal["classification", "regression"]

AUTO_MAX_CLASSES = 100  # an integer label with at most this many values is a class label
DEFAULT_CHUNK_BYTES = 16 << 20  # target raw float32 size of a chunk when N is not given


@dataclass(frozen=True)
class ChunkFile:
    """One plaintext chunk written by :func:`prepare_dataset`."""

    chunk_id: str
    path: Path
    rows: int
    size: int


@dataclass(frozen=True)
class PreparedDataset:
    """What ingestion produced: chunks for trainers, validation for the client."""

    preprocessing: Preprocessing
    chunks: list[ChunkFile]
    validation_path: Path
    train_rows: int
    validation_rows: int
    seed: int
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return self.train_rows + self.validation_rows


@dataclass(frozen=True)
class DryRun:
    """The first rows as training would see them (raw features, label text)."""

    features: list[str]
    label: str
    label_kind: ColumnKind
    x: np.ndarray
    y: list[str]


def _select(src: Source, label: str | None, features: list[str] | None) -> tuple[list[str], str, ColumnKind]:
    by_name = {c.name: c for c in src.columns}
    if label is None:
        if "y" in by_name:
            label = "y"
        else:
            raise DatasetError(f"{src.name}: name the label column (columns: {', '.join(list(by_name)[:20])})")
    if label not in by_name:
        raise DatasetError(
            f"{src.name}: label column {label!r} not found (columns: {', '.join(list(by_name)[:20])})"
        )
    if features is None or (isinstance(src, NpzSource) and src.x_key and features == src.x_names):
        feats = [c.name for c in src.columns if c.name != label and c.numeric] if features is None else list(features)
        if not feats:
            raise DatasetError(f"{src.name}: no numeric feature columns besides the label {label!r}")
    else:
        feats = list(features)
        if not feats:
            raise DatasetError(f"{src.name}: the feature list is empty")
        if len(set(feats)) != len(feats):
            raise DatasetError(f"{src.name}: duplicate feature names")
        for f in feats:
            if f == label:
                raise DatasetError(f"{src.name}: column {f!r} cannot be both a feature and the label")
            if f not in by_name:
                raise DatasetError(f"{src.name}: feature column {f!r} not found")
            if not by_name[f].numeric:
                raise DatasetError(f"{src.name}: feature column {f!r} is not numeric ({by_name[f].kind}); drop it or encode it")
    if by_name[label].kind == "other":
        raise DatasetError(f"{src.name}: label column {label!r} has an unsupported type")
    return feats, label, by_name[label].kind


def dry_run(
    path: str | os.PathLike[str],
    label: str | None,
    features: list[str] | None = None,
    rows: int = 8,
    limits: IngestLimits | None = None,
) -> DryRun:
    """Read the first ``rows`` rows exactly as ingestion would (same checks, same errors)."""
    src = open_source(path, limits, feature_names=features)
    feats, label, kind = _select(src, label, features)
    x, y = src.first_batch(feats, label)
    _check_finite(x[:rows], feats, src.name)
    return DryRun(feats, label, kind, x[:rows].astype(np.float32), [str(v) for v in pc.cast(y[:rows], pa.string()).to_pylist()])


# --------------------------------------------------------------------------- fit (pass 1)


def _check_finite(x: np.ndarray, feats: list[str], name: str) -> None:
    ok = np.isfinite(x)
    if not ok.all():
        j = int(np.nonzero(~ok.all(axis=0))[0][0])
        raise DatasetError(f"{name}: missing, NaN or infinite value in feature column {feats[j]!r}; fill or drop those rows")


def _label_text(y: pa.Array) -> pa.Array:
    if y.null_count:
        raise DatasetError("the label column has missing values; fill or drop those rows")
    return y if pa.types.is_string(y.type) else pc.cast(y, pa.string())


def _label_float(y: pa.Array, name: str, label: str) -> np.ndarray:
    try:
        v = pc.cast(y, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DatasetError(f"{name}: label {label!r} has non-numeric values; a regression label must be numeric (or set task=classification)") from None
    if not np.isfinite(v).all():
        raise DatasetError(f"{name}: label {label!r} has NaN or infinite values")
    return v


@dataclass
class _Fit:
    rows: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)
    too_many_classes: bool = False

    def add(self, x: np.ndarray) -> None:
        n = x.shape[0]
        bm = x.mean(axis=0)
        bm2 = ((x - bm) ** 2).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = bm, bm2
        else:  # Chan et al.: merge two (count, mean, M2) summaries without losing precision
            total = self.rows + n
            delta = bm - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + bm2 + delta**2 * (self.rows * n / total)
        self.rows += n


def _sorted_classes(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _fit(src: Source, feats: list[str], label: str, kind: ColumnKind, task: Task | None, limits: IngestLimits) -> tuple[Preprocessing, dict[str, int], int]:
    fit = _Fit()
    numeric_label = kind in ("integer", "float")
    want_classes = task == "classification" or (task is None and kind != "float")
    cap = limits.max_classes if (task == "classification" or kind in ("text", "bool")) else AUTO_MAX_CLASSES
    for x, y in src.batches(feats, label):
        _check_finite(x, feats, src.name)
        fit.add(x)
        if fit.rows > limits.max_rows:
            raise DatasetError(f"{src.name}: more than {limits.max_rows} rows (the cap)")
        if numeric_label and task != "classification":
            _label_float(y, src.name, label)
        if want_classes and not fit.too_many_classes:
            vc = pc.value_counts(_label_text(y))
            for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True):
                fit.counts[v] = fit.counts.get(v, 0) + c
            if len(fit.counts) > cap:
                fit.too_many_classes = True
                fit.counts.clear()
    if fit.rows == 0:
        raise DatasetError(f"{src.name}: no data rows")
    if task is None:
        task = "classification" if want_classes and not fit.too_many_classes else "regression"
    if task == "classification":
        if fit.too_many_classes:
            raise DatasetError(f"{src.name}: label {label!r} has more than {cap} distinct values; too many classes (or use task=regression)")
        if len(fit.counts) < 2:
            raise DatasetError(f"{src.name}: label {label!r} has a single class; classification needs at least two")
    elif not numeric_label:
        raise DatasetError(f"{src.name}: label {label!r} is text; regression needs a numeric label")
    assert fit.mean is not None and fit.m2 is not None
    std = np.sqrt(fit.m2 / fit.rows)
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)  # constant feature: leave unscaled
    classes = _sorted_classes(list(fit.counts)) if task == "classification" else None
    prep = Preprocessing(
        task=task, features=feats, label=label, classes=classes,
        mean=[float(v) for v in fit.mean], std=[float(v) for v in std],
    )
    counts = {c: fit.counts[c] for c in classes} if classes else {}
    return prep, counts, fit.rows


# ------------------------------------------------------------------------ split (pass 2)


def _plan(rng: np.random.Generator, group_counts: list[int], fraction: float, num_chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation mask per group (flat, 1 byte/row) and balanced chunk ids (2 bytes/train row)."""
    total = sum(group_counts)
    flat = np.zeros(total, dtype=bool)
    offsets = np.zeros(len(group_counts), dtype=np.int64)
    pos = 0
    for k, n_k in enumerate(group_counts):
        offsets[k] = pos
        view = flat[pos : pos + n_k]
        view[: int(round(fraction * n_k))] = True
        rng.shuffle(view)  # in place: exactly round(f * n_k) validation rows in class k
        pos += n_k
    n_train = total - int(flat.sum())
    reps = -(-n_train // num_chunks) if n_train else 0
    assign = np.tile(np.arange(num_chunks, dtype=np.uint16), reps)[:n_train]
    rng.shuffle(assign)
    return flat, offsets, assign


def prepare_dataset(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    label: str | None,
    features: list[str] | None = None,
    task: Task | None = None,
    num_chunks: int | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
    limits: IngestLimits | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> PreparedDataset:
    """Validate, fit preprocessing, split and chunk a dataset file (see the module doc).

    Parameters: ``label`` names the label column (NPZ: the label array; default ``y``);
    ``features`` names feature columns (default: every other numeric column; NPZ matrix mode:
    names for the columns of ``x``); ``task`` is detected when None; ``num_chunks`` defaults to
    chunks of about 16 MiB. Writes ``chunk-NNNNN.safetensors`` and ``validation.safetensors`` to
    ``out_dir``. Returns a :class:`PreparedDataset`; raises :class:`DatasetError`.
    """
    limits = limits or IngestLimits()
    if not 0.0 <= validation_fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    src = open_source(path, limits, feature_names=features)
    feats, label, kind = _select(src, label, features)
    prep, counts, rows = _fit(src, feats, label, kind, task, limits)
    if progress:
        progress("fit", rows)
    f = len(feats)
    classes = prep.classes or []
    group_counts = [counts[c] for c in classes] if classes else [rows]
    n_val_planned = sum(int(round(validation_fraction * n)) for n in group_counts)
    n_train = rows - n_val_planned
    if n_train <= 0:
        raise DatasetError(f"{src.name}: no training rows left after the validation split; lower the fraction")
    row_bytes = 4 * (f + 1)
    if num_chunks is None:
        num_chunks = max(1, min(limits.max_chunks, n_train, math.ceil(n_train * row_bytes / DEFAULT_CHUNK_BYTES)))
    if not 1 <= num_chunks <= min(limits.max_chunks, n_train):
        raise DatasetError(f"{num_chunks} chunks requested; need 1..{min(limits.max_chunks, n_train)} for {n_train} training rows")
    if math.ceil(n_train / num_chunks) * row_bytes > limits.max_chunk_bytes:
        raise DatasetError(f"{num_chunks} chunks would be over {limits.max_chunk_bytes} bytes each; use more chunks")

    rng = np.random.default_rng(seed)
    flat, offsets, assign = _plan(rng, group_counts, validation_fraction, num_chunks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".ingest-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        chunk_fhs = [open(tmp / f"{i:05d}.f32", "wb", buffering=1 << 18) for i in range(num_chunks)]  # noqa: SIM115
        val_fh = open(tmp / "validation.f32", "wb", buffering=1 << 18)  # noqa: SIM115
        try:
            _split_pass(src, feats, label, prep, flat, offsets, assign, chunk_fhs, val_fh)
        finally:
            for fh in [*chunk_fhs, val_fh]:
                fh.close()
        del flat, assign
        y_int = prep.task == "classification"
        chunks = []
        for i in range(num_chunks):
            raw_path = tmp / f"{i:05d}.f32"
            raw = np.fromfile(raw_path, dtype=np.float32).reshape(-1, f + 1)
            raw_path.unlink()
            raw = raw[rng.permutation(raw.shape[0])]  # seeded shuffle within the chunk
            y = raw[:, f].astype(np.int64) if y_int else raw[:, f].copy()
            data = encode_chunk(raw[:, :f], y)
            del raw, y
            chunk_id = f"chunk-{i:05d}"
            dest = out / f"{chunk_id}.safetensors"
            dest.write_bytes(data)
            chunks.append(ChunkFile(chunk_id, dest, (len(data) and _rows_of(data)), len(data)))
            del data
            if progress:
                progress("chunk", i + 1)
        val_path = out / "validation.safetensors"
        n_val = _write_rows_safetensors(tmp / "validation.f32", val_path, f, y_int)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    train_rows = sum(c.rows for c in chunks)
    return PreparedDataset(prep, chunks, val_path, train_rows, n_val, seed, counts)


def _rows_of(data: bytes) -> int:
    (hlen,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + hlen])
    return int(header["x"]["shape"][0])


def _split_pass(
    src: Source, feats: list[str], label: str, prep: Preprocessing,
    flat: np.ndarray, offsets: np.ndarray, assign: np.ndarray,
    chunk_fhs: list, val_fh,  # noqa: ANN001
) -> None:
    f = len(feats)
    classes = pa.array(prep.classes) if prep.classes else None
    seen = np.zeros(len(offsets), dtype=np.int64)
    t0 = 0
    n_chunks = len(chunk_fhs)
    for x, y in src.batches(feats, label):
        n = x.shape[0]
        rows = np.empty((n, f + 1), dtype=np.float32)
        rows[:, :f] = x
        if classes is not None:
            idx = pc.index_in(_label_text(y), value_set=classes).to_numpy(zero_copy_only=False)
            g = idx.astype(np.int64)
            rows[:, f] = g
            # Ordinal of each row within its class, to look up the precomputed validation mask.
            order = np.argsort(g, kind="stable")
            gs = g[order]
            cnt = np.bincount(gs, minlength=len(offsets))
            starts = np.cumsum(cnt) - cnt
            pos = offsets[gs] + seen[gs] + (np.arange(n) - starts[gs])
            is_val = np.empty(n, dtype=bool)
            is_val[order] = flat[pos]
            seen += cnt
        else:
            rows[:, f] = _label_float(y, src.name, label)
            is_val = flat[seen[0] : seen[0] + n]
            seen[0] += n
        val_fh.write(rows[is_val].tobytes())
        train = rows[~is_val]
        c = assign[t0 : t0 + train.shape[0]]
        t0 += train.shape[0]
        order = np.argsort(c, kind="stable")
        train = train[order]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(c, minlength=n_chunks))])
        for i in range(n_chunks):
            if bounds[i + 1] > bounds[i]:
                chunk_fhs[i].write(train[bounds[i] : bounds[i + 1]].tobytes())


def _write_rows_safetensors(raw_path: Path, dest: Path, f: int, y_int: bool) -> int:
    """Stream interleaved float32 rows into a safetensors file with ``x`` and ``y`` (no full load)."""
    n = raw_path.stat().st_size // (4 * (f + 1))
    y_size = 8 if y_int else 4
    x_bytes, y_bytes = n * f * 4, n * y_size
    header = {
        "x": {"dtype": "F32", "shape": [n, f], "data_offsets": [0, x_bytes]},
        "y": {"dtype": "I64" if y_int else "F32", "shape": [n], "data_offsets": [x_bytes, x_bytes + y_bytes]},
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    y_tmp = raw_path.with_suffix(".y")
    with open(raw_path, "rb") as src, open(dest, "wb") as out, open(y_tmp, "wb") as yout:
        out.write(struct.pack("<Q", len(hb)) + hb)
        while block := src.read(BATCH_ROWS * 4 * (f + 1)):
            rows = np.frombuffer(block, dtype=np.float32).reshape(-1, f + 1)
            out.write(np.ascontiguousarray(rows[:, :f]).tobytes())
            yout.write((rows[:, f].astype(np.int64) if y_int else rows[:, f].copy()).tobytes())
    with open(y_tmp, "rb") as yin, open(dest, "ab") as out:
        shutil.copyfileobj(yin, out, 1 << 20)
    y_tmp.unlink()
    return n


def load_validation(source: PreparedDataset | str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The held-out validation arrays ``(x float32 [n, F], y)`` written by :func:`prepare_dataset`."""
    path = source.validation_path if isinstance(source, PreparedDataset) else Path(source)
    try:
        t = st_load_file(str(path))
    except Exception as exc:  # safetensors raises several types for malformed files
        raise DatasetError(f"{path}: not a valid validation file ({str(exc)[:100]})") from None
    return t["x"], t["y"]
