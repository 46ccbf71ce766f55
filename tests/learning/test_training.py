"""The pure training function: determinism on CPU, FedProx, evaluation, data loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedswarm.learning.chunks import ChunkFormatError, encode_chunk
from fedswarm.learning.data import load_tensors
from fedswarm.learning.train import (
    evaluate,
    initial_state,
    parse_model_spec,
    set_determinism,
    train,
)

from .engine_helpers import mlp_spec, preprocessing, teacher_data


@pytest.fixture(scope="module")
def job() -> tuple:
    set_determinism(1)
    spec = parse_model_spec(mlp_spec())
    x, y = teacher_data(400)
    return spec, initial_state(spec, seed=3), torch.from_numpy(x), torch.from_numpy(y)


def _run(job: tuple, **kw: object) -> dict[str, np.ndarray]:
    spec, state, x, y = job
    args = {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 11} | kw
    return train(spec, state, x, y, **args).state  # type: ignore[arg-type]


def test_same_seed_gives_bit_identical_update(job: tuple) -> None:
    a, b = _run(job), _run(job)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = _run(job, seed=12)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_fedprox_changes_the_update_and_pulls_towards_global(job: tuple) -> None:
    spec, state, _, _ = job
    plain, prox = _run(job), _run(job, fedprox_mu=1.0)
    assert any(not np.array_equal(plain[k], prox[k]) for k in plain)

    def dist(s: dict[str, np.ndarray]) -> float:
        return float(sum(((s[k] - state[k]) ** 2).sum() for k in state))

    assert dist(prox) < dist(plain)


def test_progress_max_batches_and_learning(job: tuple) -> None:
    spec, state, x, y = job
    seen: list[tuple[int, float]] = []
    out = train(spec, state, x, y, epochs=5, batch_size=16, lr=0.05, seed=0, max_batches=30,
                on_progress=lambda b, loss: seen.append((b, loss)))
    assert out.batches == 30 and out.num_samples == 480 and seen[-1][0] == 30
    before = evaluate(spec, state, x, y)
    after = evaluate(spec, _run(job, epochs=10), x, y)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8
    assert set(after) >= {"loss", "accuracy", "f1_macro"}


def test_chunks_load_with_preprocessing(tmp_path: Path) -> None:
    x, y = teacher_data(10)
    p = tmp_path / "c.safetensors"
    p.write_bytes(encode_chunk(x, y))
    prep = preprocessing().model_copy(update={"mean": [1.0] * 16, "std": [2.0] * 16})
    xt, yt = load_tensors([p], prep, [4, 4])
    assert xt.shape == (10, 4, 4) and torch.allclose(xt.reshape(10, 16), torch.from_numpy((x - 1) / 2))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(encode_chunk(x, y + 10))
    with pytest.raises(ChunkFormatError, match="labels outside"):
        load_tensors([bad], prep)
