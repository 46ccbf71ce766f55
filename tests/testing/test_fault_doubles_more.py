"""The cheating trainers the review must catch: Sybils, a copier and its source, an inflater and
a reverser (fast: make_update only, no node processes)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedswarm.learning.weights import load_weights_bytes, save_weights_bytes, save_weights_file
from fedswarm.roles.trainer import TrainedUpdate, UnitInputs
from fedswarm.testing.faults import (
    INFLATED_SAMPLES,
    SHARE_DIR_ENV,
    SYBIL_NOISE,
    CopySourceTrainer,
    CopyTrainer,
    InflateSamplesTrainer,
    ReverseTrainer,
    SybilLazyTrainer,
)

HONEST_W = np.arange(12, dtype=np.float32).reshape(4, 3) / 100


def _inputs(tmp_path: Path) -> UnitInputs:
    glob = {"w": np.ones((4, 3), np.float32), "n": np.array(5, np.int64)}
    save_weights_file(tmp_path / "g.safetensors", glob)
    return UnitInputs(tmp_path / "g.safetensors", [], rows=40)


def _unit(round_: int = 0) -> Any:
    return SimpleNamespace(job_id="job-1", round=round_, epochs=2, seed=7)


def _honest(cls: type) -> Any:
    """A double whose honest training step returns ones + HONEST_W (no worker needed)."""
    trainer = object.__new__(cls)

    async def train(wu: Any, inp: UnitInputs, deadline_s: float) -> TrainedUpdate:
        data = save_weights_bytes({"w": (1 + HONEST_W).astype(np.float32), "n": np.array(5, np.int64)})
        return TrainedUpdate(data, 80, 0.5, 3)

    trainer._train = train
    return trainer


async def test_sybils_send_the_global_weights_plus_tiny_noise_each_their_own(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    outs = []
    for addr in ("0x" + "11" * 20, "0x" + "22" * 20):
        sybil = object.__new__(SybilLazyTrainer)
        sybil.identity = SimpleNamespace(address=addr)
        outs.append(await sybil.make_update(_unit(), inputs, deadline_s=30))
    deltas = [load_weights_bytes(o.data)["w"] - 1.0 for o in outs]
    for d, o in zip(deltas, outs, strict=True):
        assert 0 < np.abs(d).max() < 10 * SYBIL_NOISE
        assert (o.num_samples, o.batches) == (80, 0)  # claims the work it did not do
    assert not np.array_equal(deltas[0], deltas[1])
    assert load_weights_bytes(outs[0].data)["n"] == 5  # non-float tensors untouched


async def test_copier_hands_in_its_sources_exact_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SHARE_DIR_ENV, str(tmp_path / "share"))
    inputs = _inputs(tmp_path)
    source = await _honest(CopySourceTrainer).make_update(_unit(3), inputs, deadline_s=30)
    copy = await object.__new__(CopyTrainer).make_update(_unit(3), inputs, deadline_s=30)
    assert copy.data == source.data and copy.num_samples == 80
    # Nothing shared for another round: the copier gives up before the deadline with the global weights.
    late = await object.__new__(CopyTrainer).make_update(_unit(4), inputs, deadline_s=5.3)
    assert late.data == inputs.global_path.read_bytes()


async def test_copy_source_needs_the_shared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHARE_DIR_ENV, raising=False)
    with pytest.raises(RuntimeError, match=SHARE_DIR_ENV):
        await _honest(CopySourceTrainer).make_update(_unit(), _inputs(tmp_path), deadline_s=30)


async def test_inflater_trains_honestly_and_claims_a_huge_sample_count(tmp_path: Path) -> None:
    out = await _honest(InflateSamplesTrainer).make_update(_unit(), _inputs(tmp_path), deadline_s=30)
    assert out.num_samples == INFLATED_SAMPLES
    np.testing.assert_array_equal(load_weights_bytes(out.data)["w"], 1 + HONEST_W)


async def test_reverser_steps_back_one_and_a_half_honest_steps(tmp_path: Path) -> None:
    out = await _honest(ReverseTrainer).make_update(_unit(), _inputs(tmp_path), deadline_s=30)
    np.testing.assert_allclose(load_weights_bytes(out.data)["w"] - 1.0, -1.5 * HONEST_W, atol=1e-6)
    assert out.num_samples == 80
