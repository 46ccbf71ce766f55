"""Dataset readers: CSV, Parquet and NPZ files streamed as bounded batches of (features, label).

Every read is sized before it allocates. NPZ members are parsed by hand from their ``.npy``
header (never ``allow_pickle``; object and structured dtypes refused; declared sizes checked
before reading, so a zip bomb is refused); CSV lines are bounded by the block size (a 200 MiB
line is an error, not an allocation); a Parquet file's footer and each row group's declared
size are checked from metadata, and a dictionary-encoded label column is read as a dictionary
so that what it expands to is measured, and capped, before it is decoded. Caps on bytes, rows,
columns and classes are configurable (:class:`IngestLimits`). Every problem is a one-line
:class:`DatasetError`.

:mod:`fedswarm.learning.dataset` prepares chunks from what these readers yield.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ColumnKind = Literal["integer", "float", "bool", "text", "other"]
Format = Literal["csv", "parquet", "npz"]

BATCH_ROWS = 65536


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


class Source:
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


class CsvSource(Source):
    """A CSV file with a header row, read in blocks of ``max_line_bytes``."""

    def __init__(self, path: Path, limits: IngestLimits) -> None:
        self.path, self.name, self.limits = path, path.name, limits
        reader = self._open(None, None)
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            batch = None
        schema = reader.schema
        reader.close()
        try:
            names = schema.names
        except UnicodeDecodeError:  # pyarrow keeps header bytes as they are; names decode here
            raise DatasetError(f"{self.name}: the header row is not UTF-8 text; save the CSV as UTF-8") from None
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
    return max(1, min(BATCH_ROWS, limits.max_batch_bytes // max(1, row_bytes)))


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


class ParquetSource(Source):
    """A Parquet file, its footer and row-group sizes checked from metadata before any read."""

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
        # A dictionary-encoded string column declares (in metadata, and on disk) only its
        # dictionary and indices: two distinct 256 KiB labels over 2000 rows are a 5 KB file
        # that decodes to 500 MB. Read a text label as a dictionary, never expanded by
        # pyarrow, and decode it ourselves in pieces measured beforehand (_DictionaryBudget).
        reader = self.file
        if _kind(self.file.schema_arrow.field(label).type) == "text":
            try:
                reader = pq.ParquetFile(self.path, read_dictionary=[label])
            except (pa.ArrowInvalid, OSError) as exc:
                raise DatasetError(f"{self.name}: not a readable Parquet file ({_arrow_msg(exc)})") from None
        budget = _DictionaryBudget(self.limits, self.name, label)
        try:
            for batch in reader.iter_batches(batch_size=rows, columns=[*features, label]):
                if batch.num_rows:
                    x = _table_to_x(batch, features, self.name)
                    for lo, hi, y in budget.decode(batch.column(label)):
                        yield x[lo:hi], y
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{self.name}: corrupt Parquet data ({_arrow_msg(exc)})") from None


class _DictionaryBudget:
    """Decodes dictionary-encoded label batches in pieces of at most ``max_batch_bytes``.

    What a piece expands to is computed from the dictionary's value lengths and the indices
    before anything is decoded. Over the whole file the decoded labels may not exceed
    ``max_bytes`` (the cap on a file: what a CSV of them would take), one value may not exceed
    ``max_line_bytes`` (a CSV line), and a dictionary may not hold more than ``max_classes``
    values (a text label is a class label, with at most that many classes).
    """

    def __init__(self, limits: IngestLimits, name: str, label: str) -> None:
        self.limits, self.name, self.label = limits, name, label
        self.total = 0

    def decode(self, col: pa.Array) -> Iterator[tuple[int, int, pa.Array]]:
        """``(start, stop, decoded labels)`` pieces covering ``col``; other arrays pass whole."""
        if not isinstance(col, pa.DictionaryArray):
            yield 0, len(col), col
            return
        lim, where = self.limits, f"{self.name}: label column {self.label!r}"
        values = col.dictionary
        if len(values) > lim.max_classes:
            raise DatasetError(f"{where} has a dictionary of {len(values)} values, over the cap of {lim.max_classes} classes")
        if values.nbytes > lim.max_batch_bytes:
            raise DatasetError(f"{where} has a dictionary of {values.nbytes} bytes, over the cap of {lim.max_batch_bytes} per read")
        lengths = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64) if len(values) else np.zeros(1, np.int64)
        idx = pc.fill_null(col.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        per_row = lengths[idx] + 4  # each decoded string also takes a 4-byte offset
        self.total += int(per_row.sum())
        if self.total > lim.max_bytes:
            raise DatasetError(f"{where} decodes to more than {lim.max_bytes} bytes (the cap); its values are too long")
        longest = int(lengths.max())
        if longest > lim.max_line_bytes:  # a CSV could not carry it either
            raise DatasetError(f"{where} holds a value of {longest} bytes, over the cap of {lim.max_line_bytes} per value")
        ends = np.cumsum(per_row)
        lo = 0
        while lo < len(col):
            base = int(ends[lo - 1]) if lo else 0
            hi = int(np.searchsorted(ends, base + lim.max_batch_bytes, side="right"))
            yield lo, hi, col.slice(lo, hi - lo).cast(values.type)
            lo = hi


class _NpyMember:
    """Streams rows of one ``.npy`` inside a zip, from its header (no pickle, bounded sizes)."""

    def __init__(self, zf: zipfile.ZipFile, member: str, name: str, limits: IngestLimits) -> None:
        info = zf.getinfo(member)
        if info.file_size > limits.max_bytes:
            raise DatasetError(f"{name}: array {member!r} declares {info.file_size} bytes, over the cap of {limits.max_bytes}")
        try:
            # opening reads the member's local header, which may be corrupt even when the
            # central directory parsed
            self.fh = zf.open(info)
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
        try:
            data = self.fh.read(want)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # corrupt stream or CRC
            raise DatasetError(f"{self.name}: array {self.member!r} is corrupt ({str(exc)[:100]})") from None
        if len(data) != want:
            raise DatasetError(f"{self.name}: array {self.member!r} is truncated")
        arr = np.frombuffer(data, dtype=self.dtype)
        return arr.reshape(rows, self.row_items) if len(self.shape) > 1 else arr

    def close(self) -> None:
        self.fh.close()


class NpzSource(Source):
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


def open_source(path: str | os.PathLike[str], limits: IngestLimits | None = None, *, feature_names: list[str] | None = None) -> Source:
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
        return CsvSource(p, limits)
    if fmt == "parquet":
        return ParquetSource(p, limits)
    return NpzSource(p, limits, feature_names=feature_names)


def peek_columns(path: str | os.PathLike[str], limits: IngestLimits | None = None) -> list[ColumnInfo]:
    """Detected columns and their kinds (reads only the start of the file)."""
    return open_source(path, limits).columns
