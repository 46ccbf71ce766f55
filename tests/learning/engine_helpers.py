"""Shared data and specs for the learning-engine tests (small, so the tests stay fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedswarm.learning.chunks import Preprocessing, encode_chunk
from fedswarm.learning.train import initial_state, parse_model_spec
from fedswarm.learning.weights import save_weights_file


def mlp_spec(features: int = 16, hidden: int = 32, classes: int = 4, **extra: Any) -> dict[str, Any]:
    """A small fedswarm-seq/1 MLP with dropout (so the seeded RNG matters)."""
    return {
        "format": "fedswarm-seq/1",
        "input_shape": [features],
        "layers": [
            {"type": "Linear", "in_features": features, "out_features": hidden},
            {"type": "ReLU"},
            {"type": "Dropout", "p": 0.1},
            {"type": "Linear", "in_features": hidden, "out_features": classes},
        ],
        "optimizer": {"name": "sgd", "momentum": 0.9},
        **extra,
    }


def teacher_data(rows: int, features: int = 16, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a fixed random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = np.random.default_rng(1234).normal(size=(features, classes))
    return x, (x @ w).argmax(1).astype(np.int64)


def preprocessing(features: int = 16, classes: int = 4) -> Preprocessing:
    return Preprocessing(task="classification", features=[f"f{i}" for i in range(features)],
                         label="y", classes=[str(c) for c in range(classes)],
                         mean=[0.0] * features, std=[1.0] * features)


def write_job(tmp: Path, spec: dict[str, Any], rows: int = 512, features: int = 16,
              classes: int = 4) -> tuple[Path, list[Path]]:
    """Global weights + one chunk file for ``spec``; returns (weights path, chunk paths)."""
    tmp.mkdir(parents=True, exist_ok=True)
    x, y = teacher_data(rows, features, classes)
    chunk = tmp / "chunk-0.safetensors"
    chunk.write_bytes(encode_chunk(x, y))
    weights = tmp / "global.safetensors"
    save_weights_file(weights, initial_state(parse_model_spec(spec), seed=0))
    return weights, [chunk]
