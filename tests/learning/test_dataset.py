"""Dataset ingestion: bad inputs, exact row accounting, stratification, streaming memory."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedswarm.learning import dataset as ds
from fedswarm.learning.chunks import decode_chunk


def _write_csv(path: Path, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, 3)), 4)
    y = rng.choice(["cat", "dog", "eel"], size=n, p=[0.6, 0.3, 0.1])
    with open(path, "w") as fh:
        fh.write("id,a,b,c,name,label\n")
        for i in range(n):
            fh.write(f"{i},{x[i, 0]},{x[i, 1]},{x[i, 2]},n{i},{y[i]}\n")
    return x, y


def _all_rows(prep: ds.PreparedDataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in prep.chunks:
        x, y = decode_chunk(c.path.read_bytes(), prep.preprocessing.num_features)
        assert len(x) == c.rows
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def test_csv_rows_land_in_exactly_one_place(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", n=5003)
    prep = ds.prepare_dataset(tmp_path / "d.csv", tmp_path / "out", label="label", num_chunks=7, validation_fraction=0.2, seed=1)
    # "name" is text, so not a feature; "id" is numeric and kept (we use it to count rows).
    assert prep.preprocessing.features == ["id", "a", "b", "c"]
    assert prep.preprocessing.classes == ["cat", "dog", "eel"]
    x, _ = _all_rows(prep)
    vx, vy = ds.load_validation(prep)
    ids = np.concatenate([x[:, 0], vx[:, 0]]).astype(np.int64)
    assert sorted(ids.tolist()) == list(range(5003))  # none lost, none duplicated
    assert prep.train_rows == len(x) and prep.validation_rows == len(vx) == len(vy)
    sizes = [c.rows for c in prep.chunks]
    assert max(sizes) - min(sizes) <= 1  # balanced chunks
    # Shuffled: chunk order is not file order.
    assert not np.all(np.diff(x[:, 0]) > 0)
    # Seeded: same seed, same chunks.
    again = ds.prepare_dataset(tmp_path / "d.csv", tmp_path / "out2", label="label", num_chunks=7, seed=1)
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip(prep.chunks, again.chunks, strict=True))


def test_stratified_split_is_exact(tmp_path: Path) -> None:
    _, y = _write_csv(tmp_path / "d.csv", n=4000)
    prep = ds.prepare_dataset(tmp_path / "d.csv", tmp_path / "o", label="label", features=["a", "b"], num_chunks=3, validation_fraction=0.25)
    _, vy = ds.load_validation(prep)
    counts = {c: int((y == c).sum()) for c in ("cat", "dog", "eel")}
    for k, name in enumerate(prep.preprocessing.classes or []):
        assert int((vy == k).sum()) == round(0.25 * counts[name])
    _, ty = _all_rows(prep)
    assert np.bincount(ty, minlength=3).tolist() == [counts[c] - round(0.25 * counts[c]) for c in ("cat", "dog", "eel")]


def test_preprocessing_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(loc=5, scale=3, size=(200_000, 2))
    target = x @ [1.5, -2.0] + 0.1
    pq.write_table(pa.table({"f1": x[:, 0], "f2": x[:, 1], "t": target}), tmp_path / "d.parquet")
    prep = ds.prepare_dataset(tmp_path / "d.parquet", tmp_path / "o", label="t", num_chunks=4)
    p = prep.preprocessing
    assert p.task == "regression" and p.classes is None
    np.testing.assert_allclose(p.mean, x.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(p.std, x.std(axis=0), rtol=1e-9)
    _, ty = _all_rows(prep)
    assert ty.dtype == np.float32


def test_npz_matrix_and_columns(tmp_path: Path) -> None:
    x = np.arange(300, dtype=np.float32).reshape(100, 3)
    y = (np.arange(100) % 2).astype(np.int64)
    np.savez(tmp_path / "m.npz", x=x, y=y)
    prep = ds.prepare_dataset(tmp_path / "m.npz", tmp_path / "o", label="y", features=["r", "g", "b"], num_chunks=2, validation_fraction=0.1)
    assert prep.preprocessing.features == ["r", "g", "b"] and prep.preprocessing.task == "classification"
    tx, _ = _all_rows(prep)
    vx, _ = ds.load_validation(prep)
    assert sorted(np.concatenate([tx[:, 0], vx[:, 0]]).tolist()) == x[:, 0].tolist()
    np.savez(tmp_path / "c.npz", height=np.arange(50.0), weight=np.arange(50.0) * 2, kind=np.array(["a", "b"] * 25))
    prep = ds.prepare_dataset(tmp_path / "c.npz", tmp_path / "o2", label="kind", num_chunks=1)
    assert prep.preprocessing.features == ["height", "weight"] and prep.preprocessing.classes == ["a", "b"]


def test_peek_and_dry_run(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", n=50)
    cols = {c.name: c.kind for c in ds.peek_columns(tmp_path / "d.csv")}
    assert cols == {"id": "integer", "a": "float", "b": "float", "c": "float", "name": "text", "label": "text"}
    run = ds.dry_run(tmp_path / "d.csv", "label", rows=4)
    assert run.x.shape == (4, 4) and len(run.y) == 4 and run.label_kind == "text"


def _err(tmp_path: Path, name: str, content: bytes | str, label: str | None = "y", **kw: object) -> str:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ds.DatasetError) as err:
        ds.prepare_dataset(p, tmp_path / "out", label=label, **kw)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert not list((tmp_path / "out").glob("chunk-*")) if (tmp_path / "out").exists() else True
    return msg


def test_bad_inputs_one_line_errors(tmp_path: Path) -> None:
    good = "a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(50))
    assert "label column 'z' not found" in _err(tmp_path, "l.csv", good, label="z")
    assert "not numeric" in _err(tmp_path, "f.csv", "a,b,y\n" + "".join(f"{i},x{i},{i % 2}\n" for i in range(50)), features=["a", "b"])
    # A column that looks numeric in the first block but has text further down.
    late_text = good + "5,oops,1\n"
    assert "non-numeric" in _err(tmp_path, "late.csv", late_text, limits=ds.IngestLimits(max_line_bytes=128))
    assert "empty" in _err(tmp_path, "e.csv", "")
    assert "no data rows" in _err(tmp_path, "h.csv", "a,b,y\n")
    assert "malformed CSV row" in _err(tmp_path, "m.csv", good + "1,2\n")
    assert "missing" in _err(tmp_path, "n.csv", good + "1,,1\n")
    assert "unknown dataset format" in _err(tmp_path, "d.xlsx", good)
    limits = ds.IngestLimits(max_columns=2)
    assert "columns is over the cap" in _err(tmp_path, "c.csv", good, limits=limits)
    assert "over the cap of 100" in _err(tmp_path, "b.csv", good, limits=ds.IngestLimits(max_bytes=100))
    assert "more than 20 rows" in _err(tmp_path, "r.csv", good, limits=ds.IngestLimits(max_rows=20))
    assert "single class" in _err(tmp_path, "s.csv", "a,y\n1,k\n2,k\n3,k\n")
    assert "text; regression" in _err(tmp_path, "t.csv", "a,y\n1,k\n2,j\n", task="regression")
    assert "not a valid .npz" in _err(tmp_path, "z.npz", b"PK\x03\x04garbage")
    assert "not a readable Parquet" in _err(tmp_path, "p.parquet", b"PAR1 not really")


def test_two_hundred_mib_line_refused(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    with open(p, "wb") as fh:
        fh.write(b"a,y\n1,0\n2,1\n")
        fh.write(b"9" * (200 << 20))
        fh.write(b",1\n")
    assert "line is longer than" in _err(tmp_path, "long.csv", p.read_bytes())


def test_npz_refuses_pickles_and_bombs(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ds.DatasetError, match="object dtype"):
        ds.prepare_dataset(tmp_path / "o.npz", tmp_path / "out", label="y")
    # 1 GiB of zeros compressed into ~1 MiB: refused from the declared size, before reading.
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (1 << 26, 4)})
        zero = bytes(1 << 22)
        for _ in range(256):
            fh.write(zero)
    with pytest.raises(ds.DatasetError, match="over the cap"):
        ds.prepare_dataset(bomb, tmp_path / "out", label="y", limits=ds.IngestLimits(max_bytes=64 << 20))


_RSS_SCRIPT = r"""
import json, resource, sys, threading, time
from fedswarm.learning.dataset import prepare_dataset
peak = {"anon": 0}
def sample():
    # Peak anonymous (heap) memory: what the process itself holds. ru_maxrss also counts
    # file and tmpfs pages mapped while reading, which the page cache decides, not us.
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak["anon"] = max(peak["anon"], int(line.split()[1]) / 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
t = time.time()
p = prepare_dataset(sys.argv[1], sys.argv[2], label="label", seed=7, validation_fraction=0.1)
print(json.dumps({"rss_mb": peak["anon"], "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train": p.train_rows, "val": p.validation_rows, "chunks": len(p.chunks),
                  "chunk_rows": sum(c.rows for c in p.chunks), "seconds": time.time() - t}))
"""


def write_big_csv(path: Path, target_bytes: int, seed: int = 0) -> int:
    """A CSV of about ``target_bytes``: one formatted block repeated (fast to generate)."""
    rng = np.random.default_rng(seed)
    n = 50_000
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=n)
    lines = "".join(",".join(f"{v:.5f}" for v in row) + f",{c}\n" for row, c in zip(x.tolist(), y.tolist(), strict=True))
    block = lines.encode()
    reps = max(1, target_bytes // len(block))
    with open(path, "wb") as fh:
        fh.write(b",".join(f"f{i}".encode() for i in range(8)) + b",label\n")
        for _ in range(reps):
            fh.write(block)
    return n * reps


@pytest.mark.slow
def test_one_gb_csv_streams_under_300_mb(tmp_path: Path) -> None:
    rows = write_big_csv(tmp_path / "big.csv", 1 << 30)
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "big.csv"), str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(res)
    assert res["train"] + res["val"] == rows and res["chunk_rows"] == res["train"]
    assert res["rss_mb"] < 300, res


# --------------------------------------------------------------------------- hostile files


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _write_zero_npz(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """An .npz of zero arrays written piece by piece (a compression bomb without the RAM)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, (shape, descr) in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                fh.write(_npy_header(shape, descr))
                left = int(np.prod(shape)) * np.dtype(descr).itemsize
                zero = bytes(1 << 20)
                while left:
                    fh.write(zero[: min(left, len(zero))])
                    left -= min(left, len(zero))


def test_npz_bomb_dry_run_reads_one_bounded_batch(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "bomb.npz"
    # 65536 x 512 float64 = 256 MiB of zeros in a file of about 0.3 MiB
    _write_zero_npz(path, {"x": ((65536, 512), "<f8"), "y": ((65536,), "<i8")})
    assert path.stat().st_size < 2 << 20
    limits = ds.IngestLimits(max_batch_bytes=8 << 20)
    tracemalloc.start()
    try:
        run = ds.dry_run(path, "y", limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.x.shape == (8, 512)
    assert peak < 40 << 20, f"dry run peaked at {peak >> 20} MiB"


def test_npz_refuses_object_structured_truncated_and_oversized(tmp_path: Path) -> None:
    cases = {
        "object": {"x": ((4, 2), "|O"), "y": ((4,), "<i8")},
        "structured": {"x": ((4,), "|V8"), "y": ((4,), "<i8")},
    }
    for name, arrays in cases.items():
        p = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(p, "w") as zf:
            for key, (shape, descr) in arrays.items():
                zf.writestr(key + ".npy", _npy_header(shape, descr) + bytes(64))
        with pytest.raises(ds.DatasetError, match="dtype"):
            ds.peek_columns(p)
    p = tmp_path / "short.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", _npy_header((1000, 4)) + bytes(100))
        zf.writestr("y.npy", _npy_header((1000,), "<i8") + bytes(8000))
    with pytest.raises(ds.DatasetError, match="truncated"):
        ds.peek_columns(p)
    p = tmp_path / "big.npz"
    _write_zero_npz(p, {"x": ((1024, 64), "<f8"), "y": ((1024,), "<i8")})
    with pytest.raises(ds.DatasetError, match="decompress"):
        ds.peek_columns(p, ds.IngestLimits(max_bytes=100_000))
    # one row over the per-read cap is refused, not allocated
    with pytest.raises(ds.DatasetError, match="one row"):
        ds.dry_run(p, "y", limits=ds.IngestLimits(max_batch_bytes=256))


def test_csv_with_a_huge_line_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    with p.open("w") as fh:
        fh.write("a,label\n1,0\n")
        fh.write("2" * (3 << 20) + ",1\n")
    with pytest.raises(ds.DatasetError, match="longer than"):
        ds.dry_run(p, "label", rows=100_000)
        list(ds.open_source(p).batches(["a"], "label"))


def test_parquet_row_group_over_the_cap_is_refused_from_metadata(tmp_path: Path) -> None:
    p = tmp_path / "wide.parquet"
    n = 20_000
    pq.write_table(pa.table({"a": np.zeros(n), "s": ["x" * 200] * n, "label": np.zeros(n, dtype=np.int64)}), p,
                   row_group_size=n, compression="zstd", use_dictionary=False)
    assert p.stat().st_size < 200_000
    with pytest.raises(ds.DatasetError, match="row group 0"):
        ds.peek_columns(p, ds.IngestLimits(max_row_group_bytes=1 << 20))
    run = ds.dry_run(p, "label", features=["a"], limits=ds.IngestLimits(max_batch_bytes=64 << 10))
    assert run.x.shape == (8, 1)
    bad = tmp_path / "footer.parquet"
    bad.write_bytes(b"PAR1" + bytes(16) + (1 << 30).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(ds.DatasetError, match="metadata"):
        ds.peek_columns(bad)


_FUZZ_LIMITS = ds.IngestLimits(max_bytes=1 << 20, max_rows=10_000, max_batch_bytes=1 << 20,
                               max_row_group_bytes=4 << 20)


def _fuzz_read(path: Path) -> None:
    try:
        ds.dry_run(path, None, limits=_FUZZ_LIMITS)
    except ds.DatasetError as exc:
        assert "\n" not in str(exc)


def _good_npz(tmp: Path) -> bytes:
    p = tmp / "g.npz"
    np.savez(p, x=np.arange(40, dtype=np.float32).reshape(10, 4), y=np.arange(10) % 2)
    return p.read_bytes()


def _good_parquet(tmp: Path) -> bytes:
    p = tmp / "g.parquet"
    pq.write_table(pa.table({"a": np.arange(10.0), "label": np.arange(10) % 2}), p)
    return p.read_bytes()


def _good_text_parquet(tmp: Path) -> bytes:
    p = tmp / "t.parquet"  # a dictionary-encoded string label: read through _DictionaryBudget
    pq.write_table(pa.table({"a": np.arange(10.0), "label": [["cat", "dog"][i % 2] for i in range(10)]}), p)
    return p.read_bytes()


@pytest.mark.parametrize("fmt", ["npz", "parquet", "parquet-text", "csv"])
def test_fuzzed_dataset_files_fail_with_one_line(tmp_path: Path, fmt: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = {"npz": _good_npz(tmp_path), "parquet": _good_parquet(tmp_path),
             "parquet-text": _good_text_parquet(tmp_path), "csv": b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n"}
    seed = seeds[fmt]
    fmt = fmt.split("-")[0]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cut=st.integers(0, len(seed)), flips=st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)),
                                                         max_size=6), junk=st.binary(max_size=64))
    def run(cut: int, flips: list[tuple[int, int]], junk: bytes) -> None:
        data = bytearray(seed[:cut] + junk)
        for pos, val in flips:
            if pos < len(data):
                data[pos] = val
        p = tmp_path / f"fuzz.{fmt}"
        p.write_bytes(bytes(data))
        _fuzz_read(p)

    run()


def _dictionary_bomb(path: Path, rows: int = 2000, value_bytes: int = 1 << 18) -> None:
    """A Parquet file of a few KB whose dictionary-encoded label decodes to rows x value_bytes."""
    labels = pa.DictionaryArray.from_arrays(pa.array(np.arange(rows) % 2, pa.int32()),
                                            pa.array(["a" * value_bytes, "b" * value_bytes]))
    pq.write_table(pa.table({"x": np.arange(rows, dtype=np.float64), "label": labels.cast(pa.string())}), path,
                   compression="zstd", store_schema=False)


_DICT_RSS_SCRIPT = r"""
import json, sys
import pyarrow as pa
from fedswarm.learning import dataset as ds
run = ds.dry_run(sys.argv[1], "label", features=["x"])
print(json.dumps({"peak": pa.default_memory_pool().max_memory(), "y0": len(run.y[0])}))
"""


def test_parquet_dictionary_label_bomb_decodes_in_bounded_pieces(tmp_path: Path) -> None:
    p = tmp_path / "bomb.parquet"
    _dictionary_bomb(p)  # 500 MiB of label text
    meta = pq.ParquetFile(p).metadata
    assert p.stat().st_size < 20_000 and meta.row_group(0).total_byte_size < (1 << 20)  # metadata says ~0.5 MiB
    # A dry run reads one piece: at most max_batch_bytes (32 MiB) of decoded labels, where
    # pyarrow's own decoding of one batch took ~800 MiB. Fresh process: the pool's peak is ours.
    proc = subprocess.run([sys.executable, "-c", _DICT_RSS_SCRIPT, str(p)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["y0"] == 1 << 18
    assert out["peak"] < 80 << 20, out
    # The whole file's decoded labels count against max_bytes; one value against max_line_bytes.
    with pytest.raises(ds.DatasetError, match="decodes to more than") as exc:
        ds.prepare_dataset(p, tmp_path / "out", label="label", features=["x"], limits=ds.IngestLimits(max_bytes=64 << 20))
    assert "\n" not in str(exc.value)
    with pytest.raises(ds.DatasetError, match="holds a value of 262144 bytes"):
        ds.dry_run(p, "label", features=["x"], limits=ds.IngestLimits(max_line_bytes=1 << 16))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_parquet_dictionary_label_caps_distinct_values(tmp_path: Path) -> None:
    p = tmp_path / "many.parquet"
    pq.write_table(pa.table({"x": np.arange(500.0), "label": [f"c{i % 50}" for i in range(500)]}), p)
    with pytest.raises(ds.DatasetError, match="dictionary of 50 values, over the cap of 10"):
        ds.dry_run(p, "label", features=["x"], limits=ds.IngestLimits(max_classes=10))


def test_parquet_dictionary_label_split_into_pieces_keeps_every_row(tmp_path: Path) -> None:
    p = tmp_path / "text.parquet"
    n = 3000
    rng = np.random.default_rng(3)
    x = rng.normal(size=n)
    y = rng.choice(["cat" * 50, "dog" * 50, "eel" * 50], size=n)
    pq.write_table(pa.table({"x": x, "label": y}), p, row_group_size=1000)
    # ~154 bytes a row: a 64 KiB budget cuts each 1000-row batch into three pieces.
    small = ds.IngestLimits(max_batch_bytes=64 << 10)
    pieces = list(ds.open_source(p, small).batches(["x"], "label"))
    assert len(pieces) > 3 and sum(len(b[1]) for b in pieces) == n
    assert all(not isinstance(b[1], pa.DictionaryArray) for b in pieces)
    assert np.array_equal(np.concatenate([b[0][:, 0] for b in pieces]), x)
    assert sum((b[1].to_pylist() for b in pieces), []) == list(y)
    prep = ds.prepare_dataset(p, tmp_path / "out", label="label", features=["x"], num_chunks=2, seed=1, limits=small)
    assert prep.total_rows == n
    assert prep.class_counts == {c: int((y == c).sum()) for c in sorted(set(y))}
