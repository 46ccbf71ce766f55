"""Weights only as safetensors: pickle, zip (.pt/.pt2) and malformed headers are refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedswarm.learning.weights import (
    WeightsError,
    flatten_state,
    layout_of,
    load_weights_bytes,
    load_weights_file,
    save_weights_bytes,
    save_weights_file,
    unflatten_state,
)


def _state() -> dict[str, np.ndarray]:
    return {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def test_flat_roundtrip_keeps_names_shapes_and_dtypes() -> None:
    vec, layout = flatten_state(_state())
    assert vec.dtype == np.float32 and vec.shape == (7,)
    back = unflatten_state(vec, layout)
    assert back["bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(back["a.weight"], _state()["a.weight"])
    with pytest.raises(WeightsError):
        unflatten_state(vec[:-1], layout)


def test_save_load_and_layout_check(tmp_path: Path) -> None:
    p = save_weights_file(tmp_path / "w.safetensors", _state())
    assert set(load_weights_file(p, layout_of(_state()))) == set(_state())
    reshaped = {"a.weight": np.zeros((3, 2), np.float32), "bn.num_batches_tracked": np.array(1)}
    with pytest.raises(WeightsError, match="shape"):
        load_weights_bytes(save_weights_bytes(reshaped), layout_of(_state()))
    with pytest.raises(WeightsError, match="names differ"):
        load_weights_bytes(save_weights_bytes({"a.weight": _state()["a.weight"]}), layout_of(_state()))


def test_non_finite_values_refused() -> None:
    from safetensors.numpy import save

    for bad in (np.nan, np.inf, -np.inf):
        data = save({"w": np.array([1.0, bad], dtype=np.float32)})
        with pytest.raises(WeightsError, match="NaN or Inf"):
            load_weights_bytes(data)
    with pytest.raises(WeightsError):
        save_weights_bytes({"w": np.array([np.nan], dtype=np.float32)})


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pt2", ".pkl", ".ckpt", ".npz"])
def test_pickle_suffixes_refused_without_reading(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"model{suffix}"
    p.write_bytes(b"irrelevant")
    with pytest.raises(WeightsError, match="refusing"):
        load_weights_file(p)


def test_pickle_inside_pt_refused_by_content(tmp_path: Path) -> None:
    # torch.save writes a zip holding a pickle; renamed to .safetensors it must still be refused
    p = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(2)}, p)
    with pytest.raises(WeightsError, match="zip archive"):
        load_weights_file(p)
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="pickle"):
        load_weights_file(legacy)


def test_pt2_archive_refused(tmp_path: Path) -> None:
    ep = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    p = tmp_path / "m.pt2"
    torch.export.save(ep, p)
    with pytest.raises(WeightsError, match="torch.export"):
        load_weights_file(p)
    with pytest.raises(WeightsError, match="zip"):
        load_weights_bytes(p.read_bytes())


def _header(obj: object, n: int | None = None, body: bytes = b"") -> bytes:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return struct.pack("<Q", len(raw) if n is None else n) + raw + body


@pytest.mark.parametrize("data", [
    b"",
    b"\x00" * 4,
    _header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, n=1 << 40),
    _header(b"not json at all"),
    _header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, body=b"\x00" * 8),
    _header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}, body=b"\x00" * 8),
    _header({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, body=b"\x00" * 8),
    _header([1, 2, 3]),
])
def test_bad_safetensors_headers_refused(data: bytes) -> None:
    with pytest.raises(WeightsError):
        load_weights_bytes(data)


def test_valid_header_with_pickle_like_first_byte_accepted() -> None:
    # a header of length 0x80 starts with the pickle PROTO byte: must not be misread as pickle
    for target in (0x80, ord("}"), ord("c")):
        for pad in range(0, 200):
            data = save_weights_bytes({"w" + "x" * pad: np.zeros(1, np.float32)})
            if data[0] == target:
                assert "w" + "x" * pad in load_weights_bytes(data)
                break


def test_bytearray_and_memoryview_load_like_bytes() -> None:
    """Decryption returns large payloads as bytearray (the 4.35M-parameter bench model)."""
    from nacl.public import PrivateKey

    from fedswarm.crypto import decrypt_from_box, encrypt_to_box
    from fedswarm.learning.chunks import decode_chunk, encode_chunk

    data = save_weights_bytes(_state())
    for view in (bytearray(data), memoryview(data)):
        out = load_weights_bytes(view, layout_of(_state()))
        assert all(np.array_equal(out[k], v) for k, v in _state().items())
    x, y = np.ones((3, 2), np.float32), np.arange(3)
    assert np.array_equal(decode_chunk(bytearray(encode_chunk(x, y)))[0], x)
    key = PrivateKey.generate()
    big = save_weights_bytes({"w": np.ones((4096, 1100), np.float32)})  # 18 MB, several segments
    plain = decrypt_from_box(encrypt_to_box(big, key.public_key.encode().hex(), "job", "u"), key, "job", "u")
    assert load_weights_bytes(plain)["w"].shape == (4096, 1100)
