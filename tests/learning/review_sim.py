"""Honest federated runs in-process, for measuring and testing the reference-based review.

The data goes through the client's own ingestion (:func:`prepare_dataset`: stratified validation
split, balanced random chunks, one per trainer), training through :func:`train.train` with the
example specs, evaluation through :func:`train.evaluate` on bounded samples, aggregation by
FedAvg with the client's weights (rows x epochs). Nothing here is mocked.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from fedswarm.learning.data import load_arrays
from fedswarm.learning.dataset import prepare_dataset
from fedswarm.learning.train import evaluate, initial_state, parse_model_spec, train
from fedswarm.learning.weights import Layout, flatten_state, unflatten_state

_ROOT = Path(__file__).resolve().parents[2]


def example_spec_path(name: str) -> Path:
    """The bundled example spec (package data; an older checkout kept them in ``examples/``)."""
    for folder in (_ROOT / "src" / "fedswarm" / "examples", _ROOT / "examples"):
        if (folder / f"{name}.seq.json").exists():
            return folder / f"{name}.seq.json"
    raise FileNotFoundError(f"no example spec {name!r}")

SAMPLE_ROWS = 256
VALIDATION = "validation"


def write_sklearn_csv(name: str, dest: Path) -> Path:
    """breast_cancer or digits (both ship with scikit-learn) as a CSV with a ``label`` column."""
    from sklearn import datasets

    loader = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}[name]
    bunch = loader()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    path = dest / f"{name}.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"f{i}" for i in range(x.shape[1])] + ["label"])
        for row, lab in zip(x, y, strict=True):
            w.writerow([*(f"{v:.6g}" for v in row), int(lab)])
    return path


@dataclass
class SimJob:
    """One prepared job: spec, data per chunk, samples, the global weights and training terms."""

    name: str
    spec_json: dict[str, object]
    chunks: dict[str, tuple[torch.Tensor, torch.Tensor]]
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]]
    layout: Layout
    global_params: np.ndarray
    epochs: int
    batch_size: int
    lr: float
    seed: int
    eval_calls: int = 0
    _cache: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def spec(self):  # noqa: ANN201 - the parsed spec type is a union from train.py
        return parse_model_spec(self.spec_json)

    def rows(self, chunk: str) -> int:
        """Rows the client assigned with this chunk."""
        return int(self.chunks[chunk][0].shape[0])

    def train_unit(self, global_params: np.ndarray, chunk: str, seed: int) -> np.ndarray:
        """One honest unit: the trainer's run (and, identically, the client's re-execution)."""
        x, y = self.chunks[chunk]
        out = train(self.spec, unflatten_state(global_params, self.layout), x, y, epochs=self.epochs,
                    batch_size=self.batch_size, lr=self.lr, seed=seed)
        vec, _ = flatten_state(out.state)
        return vec

    def evaluate(self, params: np.ndarray, key: str) -> float:
        """Loss of ``params`` on the sample ``key`` (a chunk id or ``validation``)."""
        ck = (id(params), key)
        if ck in self._cache:
            return self._cache[ck]
        x, y = self.samples[key]
        self.eval_calls += 1
        loss = float(evaluate(self.spec, unflatten_state(params, self.layout), x, y)["loss"])
        self._cache[ck] = loss
        return loss

    def clear_cache(self) -> None:
        """Forget cached losses (ids may be reused once arrays are freed)."""
        self._cache.clear()


def _sample(x: np.ndarray, y: np.ndarray, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.random.default_rng(seed).permutation(x.shape[0])[:rows]
    idx.sort()
    return torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(np.ascontiguousarray(y[idx]))


def make_job(name: str, workdir: Path, trainers: int, seed: int, sample_rows: int = SAMPLE_ROWS) -> SimJob:
    """Ingest ``name`` like the client does (``trainers`` chunks) and set up samples."""
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / f"{name}.csv"
    if not csv_path.exists():
        write_sklearn_csv(name, workdir)
    prepared = prepare_dataset(csv_path, workdir / f"chunks-{trainers}-{seed}", label="label",
                               num_chunks=trainers, validation_fraction=0.2, seed=seed)
    spec_json = json.loads(example_spec_path(name).read_text())
    terms = spec_json["train"]
    prep = prepared.preprocessing
    chunks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, c in enumerate(prepared.chunks):
        x, y = load_arrays([c.path], prep)
        chunks[c.chunk_id] = (torch.from_numpy(x), torch.from_numpy(y))
        samples[c.chunk_id] = _sample(x, y, sample_rows, seed * 1000 + i)
    vx, vy = load_arrays([prepared.validation_path], prep)
    samples[VALIDATION] = _sample(vx, vy, sample_rows, seed * 1000 + 999)
    state = initial_state(parse_model_spec(spec_json), seed=seed)
    vec, layout = flatten_state(state)
    return SimJob(name, spec_json, chunks, samples, layout, vec, int(terms["epochs"]),
                  int(terms["batch_size"]), float(terms["lr"]), seed)


def fedavg(global_params: np.ndarray, updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """Sample-weighted average of the updates (float64 accumulation)."""
    w = np.asarray(weights, dtype=np.float64)
    acc = sum(wi * u.astype(np.float64) for wi, u in zip(w, updates, strict=True))
    return (acc / w.sum()).astype(np.float32)


def unit_seed(job_seed: int, round_index: int, slot: int) -> int:
    """A per-unit training seed (the client derives its own the same way: job, round, slot)."""
    return (job_seed * 1_000_003 + round_index * 1009 + slot) % (2**31)


@contextmanager
def other_dropout_masks(offset: int = 7919) -> Iterator[None]:
    """Train with the same shuffling but other dropout masks: what a CUDA run of the same unit
    does (the GPU's generator draws other masks from the same seed)."""
    real = torch.manual_seed

    def shifted(seed: int):  # noqa: ANN202
        return real(int(seed) + offset)

    with mock.patch.object(torch, "manual_seed", shifted):
        yield


def ulp_perturbed(params: np.ndarray, seed: int) -> np.ndarray:
    """``params`` with each value moved by about one float32 rounding step: the size of the
    difference another summation order makes in one operation."""
    rng = np.random.default_rng(seed)
    eps = np.spacing(np.abs(params).astype(np.float32))
    return (params + rng.choice([-1.0, 0.0, 1.0], params.size).astype(np.float32) * eps).astype(np.float32)
