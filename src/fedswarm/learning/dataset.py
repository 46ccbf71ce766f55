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

Untrusted-input rules: NPZ members are parsed by hand from their ``.npy`` header (never
``allow_pickle``; object dtypes refused; declared sizes checked before reading, so a zip bomb
is refused), CSV lines are bounded (a 200 MiB line is an error, not an allocation), and caps on
bytes, rows, columns and classes are configurable. Every problem is a one-line
:class:`DatasetError`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from safetensors.numpy import load_file as st_load_file

from fedswarm.learning.chunks import Preprocessing, encode_chunk

Task = Literal["classification", "regression"]
ColumnKind = Literal["integer", "float", "bool", "text", "other"]
Format = Literal["csv", "parquet", "npz"]

AUTO_MAX_CLASSES = 100  # an integer label with at most this many values is a class label
DEFAULT_CHUNK_BYTES = 16 << 20  # target raw float32 size of a chunk when N is not given
_BATCH_ROWS = 65536


class DatasetError(ValueError):
    """The dataset cannot be used; one line saying what and what to do."""


@dataclass(frozen=True)
class IngestLimits:
    """Caps on what ingestion accepts (configurable per node)."""

    max_bytes: int = 64 << 30
    max_rows: int = 500_000_000
    max_columns: int = 10_000
    max_line_bytes: int = 1 << 20  # also the CSV block size: pyarrow keeps many blocks in flight
    max_classes: int = 10_000
    max_chunks: int = 1000
    max_chunk_bytes: int = 256 << 20
    # What one read may allocate: a batch of rows (as float64 features) and one Parquet row
    # group as decompressed. Sizes come from headers and metadata, checked before the read.
    max_batch_bytes: int = 32 << 20
    max_row_group_bytes: int = 512 << 20
    max_parquet_footer: int = 16 << 20


@dataclass(frozen=True)
class ColumnInfo:
    """A column as detected (the UI shows these)."""

    name: str
    kind: ColumnKind

    @property
    def numeric(self) -> bool:
        return self.kind in ("integer", "float", "bool")


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


# ------------------------------------------------------------------------------ sources


def detect_format(path: Path) -> Format:
    """Format by file name: ``.csv`` / ``.parquet`` / ``.pq`` / ``.npz``."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".npz":
        return "npz"
    raise DatasetError(f"{path.name}: unknown dataset format {suffix or '(no suffix)'!r}; use .csv, .parquet or .npz")


def _kind(t: pa.DataType) -> ColumnKind:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "text"
    return "other"


def _np_kind(dt: np.dtype) -> ColumnKind:
    if dt.kind in "iu":
        return "integer"
    if dt.kind == "f":
        return "float"
    if dt.kind == "b":
        return "bool"
    if dt.kind in "US":
        return "text"
    return "other"


Batches = Iterator[tuple[np.ndarray, pa.Array]]


class _Source:
    """A dataset file: its columns and a way to stream (features float64 [n, F], label) batches."""

    name: str
    columns: list[ColumnInfo]

    def batches(self, features: list[str], label: str) -> Batches:  # pragma: no cover
        raise NotImplementedError

    def first_batch(self, features: list[str], label: str) -> tuple[np.ndarray, pa.Array]:
        for b in self.batches(features, label):
            return b
        raise DatasetError(f"{self.name}: no data rows")


def _arrow_msg(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class _CsvSource(_Source):
    def __init__(self, path: Path, limits: IngestLimits) -> None:
        self.path, self.name, self.limits = path, path.name, limits
        reader = self._open(None, None)
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            batch = None
        schema = reader.schema
        reader.close()
        names = schema.names
        if len(names) > limits.max_columns:
            raise DatasetError(f"{self.name}: {len(names)} columns is over the cap of {limits.max_columns}")
        if len(set(names)) != len(names):
            raise DatasetError(f"{self.name}: duplicate column names in the header")
        if batch is None or batch.num_rows == 0:
            raise DatasetError(f"{self.name}: no data rows after the header")
        self.columns = [ColumnInfo(n, _kind(schema.field(n).type)) for n in names]

    def _open(self, include: list[str] | None, types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
        # The block size bounds a line: pyarrow refuses a row that straddles two blocks.
        # One reader thread: pyarrow's parallel decode keeps more blocks in flight (memory) and
        # competes with the rest of the node for cores.
        ro = pacsv.ReadOptions(block_size=self.limits.max_line_bytes, use_threads=False)
        co = pacsv.ConvertOptions(include_columns=include, column_types=types)
        try:
            return pacsv.open_csv(self.path, read_options=ro, convert_options=co)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> DatasetError:
        msg = _arrow_msg(exc)
        low = msg.lower()
        if "empty csv" in low:
            return DatasetError(f"{self.name}: file is empty; give a CSV with a header row and data")
        if "straddl" in low:
            return DatasetError(
                f"{self.name}: a line is longer than {self.limits.max_line_bytes} bytes (the cap); "
                "check the file is a CSV with newline-separated rows"
            )
        if "conversion error" in low:
            return DatasetError(f"{self.name}: non-numeric value in a feature column ({msg}); drop the column or fix the value")
        if "expected" in low and "columns" in low:
            return DatasetError(f"{self.name}: malformed CSV row ({msg[:120]}); every row needs the header's column count")
        return DatasetError(f"{self.name}: cannot parse CSV ({msg})")

    def batches(self, features: list[str], label: str) -> Batches:
        types: dict[str, pa.DataType] = {f: pa.float64() for f in features}
        types[label] = pa.string()  # label text as written; cast later as the task needs
        reader = self._open([*features, label], types)
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise self._error(exc) from None
                if batch.num_rows:
                    yield _table_to_x(batch, features, self.name), batch.column(label)
        finally:
            reader.close()


def _table_to_x(batch: pa.RecordBatch, features: list[str], name: str) -> np.ndarray:
    x = np.empty((batch.num_rows, len(features)), dtype=np.float64)
    for j, f in enumerate(features):
        col = batch.column(f)
        if col.null_count:
            raise DatasetError(f"{name}: missing value in feature column {f!r}; fill or drop those rows")
        if col.type != pa.float64():
            try:
                col = pc.cast(col, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise DatasetError(f"{name}: feature column {f!r} is not numeric") from None
        x[:, j] = col.to_numpy(zero_copy_only=False)
    return x


def batch_rows(row_bytes: int, limits: IngestLimits, name: str) -> int:
    """Rows per read so that one batch stays under ``limits.max_batch_bytes``."""
    if row_bytes > limits.max_batch_bytes:
        raise DatasetError(f"{name}: one row takes {row_bytes} bytes, over the cap of {limits.max_batch_bytes} per read")
    return max(1, min(_BATCH_ROWS, limits.max_batch_bytes // max(1, row_bytes)))


def _parquet_footer_size(path: Path) -> int:
    """The footer (metadata) length from the file's last 8 bytes, read before pyarrow parses it."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 12:
            return -1
        fh.seek(-8, os.SEEK_END)
        tail = fh.read(8)
    if tail[4:] != b"PAR1":
        return -1
    return int.from_bytes(tail[:4], "little")


class _ParquetSource(_Source):
    def __init__(self, path: Path, limits: IngestLimits) -> None:
        self.path, self.name, self.limits = path, path.name, limits
        footer = _parquet_footer_size(path)
        if footer < 0:
            raise DatasetError(f"{self.name}: not a readable Parquet file (no PAR1 footer)")
        if footer > limits.max_parquet_footer:
            raise DatasetError(f"{self.name}: Parquet metadata of {footer} bytes is over the cap of {limits.max_parquet_footer}")
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{self.name}: not a readable Parquet file ({_arrow_msg(exc)})") from None
        schema = self.file.schema_arrow
        if len(schema.names) > limits.max_columns:
            raise DatasetError(f"{self.name}: {len(schema.names)} columns is over the cap of {limits.max_columns}")
        meta = self.file.metadata
        if meta.num_rows == 0:
            raise DatasetError(f"{self.name}: no data rows")
        if meta.num_rows > limits.max_rows:
            raise DatasetError(f"{self.name}: {meta.num_rows} rows is over the cap of {limits.max_rows}")
        # pyarrow decompresses a row group's column chunks whole: check their declared sizes
        # before reading any (and the widest row, which sets how many rows one batch may hold).
        self.row_bytes = len(schema.names) * 8
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if rg.total_byte_size > limits.max_row_group_bytes or rg.total_byte_size < 0:
                raise DatasetError(f"{self.name}: row group {i} decompresses to {rg.total_byte_size} bytes, over the cap of "
                                   f"{limits.max_row_group_bytes}; write it with smaller row groups")
            if rg.num_rows:
                self.row_bytes = max(self.row_bytes, -(-rg.total_byte_size // rg.num_rows))
        self.columns = [ColumnInfo(f.name, _kind(f.type)) for f in schema]

    def batches(self, features: list[str], label: str) -> Batches:
        rows = batch_rows(max(self.row_bytes, (len(features) + 1) * 8), self.limits, self.name)
        try:
            for batch in self.file.iter_batches(batch_size=rows, columns=[*features, label]):
                if batch.num_rows:
                    yield _table_to_x(batch, features, self.name), batch.column(label)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{self.name}: corrupt Parquet data ({_arrow_msg(exc)})") from None


class _NpyMember:
    """Streams rows of one ``.npy`` inside a zip, from its header (no pickle, bounded sizes)."""

    def __init__(self, zf: zipfile.ZipFile, member: str, name: str, limits: IngestLimits) -> None:
        info = zf.getinfo(member)
        if info.file_size > limits.max_bytes:
            raise DatasetError(f"{name}: array {member!r} declares {info.file_size} bytes, over the cap of {limits.max_bytes}")
        self.fh = zf.open(info)
        try:
            version = np.lib.format.read_magic(self.fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.fh)
            else:
                raise ValueError(f"npy version {version}")
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{name}: array {member!r} is not a valid .npy ({str(exc)[:100]})") from None
        if dtype.hasobject:
            raise DatasetError(f"{name}: array {member!r} has object dtype (pickled data); refused")
        if dtype.kind not in "biufcSU" or dtype.itemsize == 0:
            raise DatasetError(f"{name}: array {member!r} has dtype {dtype.str}; use numbers or strings")
        if fortran and len(shape) > 1:
            raise DatasetError(f"{name}: array {member!r} is Fortran-ordered; save it C-ordered")
        if len(shape) not in (1, 2):
            raise DatasetError(f"{name}: array {member!r} has shape {shape}; expected 1-D or 2-D")
        self.shape, self.dtype = shape, dtype
        self.row_items = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        self.row_bytes = self.row_items * dtype.itemsize
        # a batch is read as stored and converted to float64: bound both copies
        self.batch_rows = batch_rows(self.row_items * max(dtype.itemsize, 8), limits, name)
        expected = shape[0] * self.row_bytes
        if expected > info.file_size:
            raise DatasetError(f"{name}: array {member!r} is truncated")
        self.member, self.name = member, name

    def read(self, rows: int) -> np.ndarray:
        want = rows * self.row_bytes
        data = self.fh.read(want)
        if len(data) != want:
            raise DatasetError(f"{self.name}: array {self.member!r} is truncated")
        arr = np.frombuffer(data, dtype=self.dtype)
        return arr.reshape(rows, self.row_items) if len(self.shape) > 1 else arr

    def close(self) -> None:
        self.fh.close()


class _NpzSource(_Source):
    """Either matrix mode (arrays ``x`` [n, F] and ``y`` [n]) or one 1-D array per column."""

    def __init__(self, path: Path, limits: IngestLimits, x_key: str = "x", feature_names: list[str] | None = None) -> None:
        self.path, self.name, self.limits = path, path.name, limits
        try:
            self.zf = zipfile.ZipFile(path)
            names = [n[:-4] for n in self.zf.namelist() if n.endswith(".npy")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{self.name}: not a valid .npz (zip) file ({str(exc)[:100]})") from None
        if not names:
            raise DatasetError(f"{self.name}: no arrays in the .npz file")
        declared = sum(i.file_size for i in self.zf.infolist())
        if declared > limits.max_bytes:
            raise DatasetError(f"{self.name}: arrays decompress to {declared} bytes, over the cap of {limits.max_bytes}")
        if len(names) > limits.max_columns + 1:
            raise DatasetError(f"{self.name}: {len(names)} arrays is over the cap of {limits.max_columns}")
        self.x_key = x_key if x_key in names else None
        headers = {n: self._member(n) for n in names}
        for m in headers.values():
            m.close()
        lengths = {m.shape[0] for m in headers.values()}
        if len(lengths) != 1:
            raise DatasetError(f"{self.name}: arrays have different lengths {sorted(lengths)}; all need one row per sample")
        self.rows = lengths.pop()
        if self.rows == 0:
            raise DatasetError(f"{self.name}: no data rows")
        if self.rows > limits.max_rows:
            raise DatasetError(f"{self.name}: {self.rows} rows is over the cap of {limits.max_rows}")
        self.columns = []
        self.x_names: list[str] = []
        for n, m in headers.items():
            if n == self.x_key:
                if len(m.shape) != 2:
                    raise DatasetError(f"{self.name}: array {n!r} must be 2-D [rows, features]")
                width = m.shape[1]
                if width > limits.max_columns:
                    raise DatasetError(f"{self.name}: {width} features is over the cap of {limits.max_columns}")
                if feature_names and len(feature_names) == width:
                    self.x_names = list(feature_names)
                else:
                    self.x_names = [f"{n}{j}" for j in range(width)]
                self.columns += [ColumnInfo(f, _np_kind(m.dtype)) for f in self.x_names]
            elif len(m.shape) == 1:
                self.columns.append(ColumnInfo(n, _np_kind(m.dtype)))
            else:
                self.columns.append(ColumnInfo(n, "other"))

    def _member(self, n: str) -> _NpyMember:
        return _NpyMember(self.zf, n + ".npy", self.name, self.limits)

    def batches(self, features: list[str], label: str) -> Batches:
        if self.x_key and set(features) <= set(self.x_names):
            idx = [self.x_names.index(f) for f in features]
            members = {"__x__": self._member(self.x_key)}
        else:
            idx = []
            members = {f: self._member(f) for f in features}
        members[label] = self._member(label)
        step = min(m.batch_rows for m in members.values())
        if "__x__" not in members:
            step = min(step, batch_rows(len(features) * 8, self.limits, self.name))
        try:
            done = 0
            while done < self.rows:
                n = min(step, self.rows - done)
                if "__x__" in members:
                    x = members["__x__"].read(n)[:, idx].astype(np.float64)
                else:
                    x = np.empty((n, len(features)), dtype=np.float64)
                    for j, f in enumerate(features):
                        x[:, j] = members[f].read(n)
                y = members[label].read(n)
                done += n
                yield x, pa.array(y)
        finally:
            for m in members.values():
                m.close()


def open_source(path: str | os.PathLike[str], limits: IngestLimits | None = None, *, feature_names: list[str] | None = None) -> _Source:
    """Open a dataset file after checking it exists, is not empty and is within the byte cap."""
    limits = limits or IngestLimits()
    p = Path(path)
    fmt = detect_format(p)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such file") from None
    if size == 0:
        raise DatasetError(f"{p.name}: file is empty")
    if size > limits.max_bytes:
        raise DatasetError(f"{p.name}: {size} bytes is over the cap of {limits.max_bytes}; raise the cap or subsample")
    if fmt == "csv":
        return _CsvSource(p, limits)
    if fmt == "parquet":
        return _ParquetSource(p, limits)
    return _NpzSource(p, limits, feature_names=feature_names)


def peek_columns(path: str | os.PathLike[str], limits: IngestLimits | None = None) -> list[ColumnInfo]:
    """Detected columns and their kinds (reads only the start of the file)."""
    return open_source(path, limits).columns


def _select(src: _Source, label: str | None, features: list[str] | None) -> tuple[list[str], str, ColumnKind]:
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
    if features is None or (isinstance(src, _NpzSource) and src.x_key and features == src.x_names):
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


def _fit(src: _Source, feats: list[str], label: str, kind: ColumnKind, task: Task | None, limits: IngestLimits) -> tuple[Preprocessing, dict[str, int], int]:
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
    src: _Source, feats: list[str], label: str, prep: Preprocessing,
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
        while block := src.read(_BATCH_ROWS * 4 * (f + 1)):
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
