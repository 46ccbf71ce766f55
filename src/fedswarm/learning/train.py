"""The pure training function (seeded, deterministic on CPU) and evaluation.

Same seed, data and starting weights give a bit-identical update on CPU: deterministic
algorithms, a fixed thread count, one generator for shuffling and the global seed for
dropout. That is what lets a client re-execute a unit to check a trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedswarm.learning.graph import GRAPH_FORMAT, GraphSpec, build_graph_module, parse_graph_spec
from fedswarm.learning.spec import (
    SEQ_FORMAT,
    SeqSpec,
    SpecError,
    _load_json,
    build_seq_module,
    make_loss,
    make_optimizer,
    parse_seq_spec,
)
from fedswarm.learning.weights import torch_state_to_numpy

ModelSpec = SeqSpec | GraphSpec
ProgressFn = Callable[[int, float], None]


def parse_model_spec(data: str | bytes | dict[str, Any]) -> ModelSpec:
    """Parse either model format by its ``format`` field; raises :class:`SpecError`."""
    obj = _load_json(data)
    fmt = obj.get("format")
    if fmt == SEQ_FORMAT:
        return parse_seq_spec(obj)
    if fmt == GRAPH_FORMAT:
        return parse_graph_spec(obj)
    raise SpecError(f"unknown model format {str(fmt)[:40]!r}; expected {SEQ_FORMAT} or {GRAPH_FORMAT}")


def build_model(
    spec: ModelSpec, state: Mapping[str, np.ndarray] | None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the model for ``spec`` and load ``state`` (strict: names, shapes and dtypes)."""
    if isinstance(spec, GraphSpec):
        return build_graph_module(spec, state, device)
    model = build_seq_module(spec, device)
    if state is not None:
        own = model.state_dict()
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"weights do not fit the spec (missing {missing[:5]}, unexpected {extra[:5]})")
        for name, value in state.items():
            if tuple(own[name].shape) != tuple(value.shape):
                raise ValueError(f"weights tensor {name!r} has shape {tuple(value.shape)}, spec needs {tuple(own[name].shape)}")
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
    return model


def initial_state(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded initial weights for a seq spec (graph specs ship their own)."""
    if isinstance(spec, GraphSpec):
        raise SpecError("graph models ship their initial weights with the export")
    torch.manual_seed(seed)
    return torch_state_to_numpy(build_seq_module(spec, "cpu").state_dict())


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no GPU is available")
    return torch.device(device)


def _prepare_batch(spec: ModelSpec, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.input_dtype == "int64":
        x = x.long()
    if spec.loss in ("mse", "bce_with_logits"):
        y = y.float()
    return x, y


def _loss_target(spec: ModelSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # regression / BCE targets may be [rows]; match the model's [rows, 1] output
    if spec.loss != "cross_entropy" and y.dim() == 1 and out.dim() == 2 and out.shape[1] == 1:
        return y.unsqueeze(1)
    return y


@dataclass
class TrainOutput:
    """Result of :func:`train`: the new weights (numpy state dict) and statistics."""

    state: dict[str, np.ndarray]
    num_samples: int
    train_loss: float
    batches: int
    seconds: float


def set_determinism(threads: int = 1) -> None:
    """Deterministic kernels and a fixed CPU thread count (results depend on both)."""
    # torch.use_deterministic_algorithms also sets a flag in torch._inductor's config, and
    # importing that pulls in the whole compiler stack: +2.3 s and +72 MB in every worker.
    # We never compile, so set the kernel flag alone when this torch exposes it.
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is not None:
        set_flag(True, warn_only=False)
    else:
        torch.use_deterministic_algorithms(True, warn_only=False)
    torch.set_num_threads(threads)


def train(
    spec: ModelSpec,
    state: Mapping[str, np.ndarray],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    fedprox_mu: float = 0.0,
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    on_progress: ProgressFn | None = None,
    progress_every: int = 10,
) -> TrainOutput:
    """Train from ``state`` on ``(x, y)`` for ``epochs`` and return the new weights.

    ``fedprox_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - w_global||^2``.
    ``max_batches`` caps the optimizer steps (for benchmarks and quick checks).
    ``on_progress(batches_done, running_loss)`` is called every ``progress_every`` batches
    and at the end.
    """
    t0 = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)  # dropout masks
    gen = torch.Generator().manual_seed(seed)  # shuffling, independent of model RNG use
    model = build_model(spec, state, dev)
    model.train()
    loss_fn = make_loss(spec.loss)
    opt = make_optimizer(spec.optimizer, [p for p in model.parameters() if p.requires_grad], lr)
    anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad] if fedprox_mu > 0 else []
    x, y = _prepare_batch(spec, x, y)
    n = x.shape[0]
    x, y = x.to(dev), y.to(dev)
    batches, total_loss, seen = 0, 0.0, 0
    done = False
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, _loss_target(spec, out, yb))
            if fedprox_mu > 0:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(
                    (p for p in model.parameters() if p.requires_grad), anchor, strict=True))
                loss_total = loss + 0.5 * fedprox_mu * prox
            else:
                loss_total = loss
            loss_total.backward()
            opt.step()
            batches += 1
            total_loss += float(loss.detach()) * xb.shape[0]
            seen += xb.shape[0]
            if on_progress and batches % progress_every == 0:
                on_progress(batches, total_loss / seen)
            if max_batches is not None and batches >= max_batches:
                done = True
                break
        if done:
            break
    train_loss = total_loss / max(seen, 1)
    if on_progress:
        on_progress(batches, train_loss)
    return TrainOutput(state=torch_state_to_numpy(model.state_dict()), num_samples=seen,
                       train_loss=train_loss, batches=batches, seconds=time.perf_counter() - t0)


def evaluate(
    spec: ModelSpec,
    state: Mapping[str, np.ndarray],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Metrics of the model with weights ``state`` on ``(x, y)`` (eval mode, no grad).

    Always includes ``loss``; classification adds ``accuracy`` and ``f1_macro``, regression
    ``mse`` and ``mae``.
    """
    dev = torch.device(device)
    model = build_model(spec, state, dev)
    model.eval()
    loss_fn = make_loss(spec.loss)
    x, y = _prepare_batch(spec, x, y)
    outs: list[torch.Tensor] = []
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
            out = model(xb)
            total += float(loss_fn(out, _loss_target(spec, out, yb))) * xb.shape[0]
            outs.append(out.cpu())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0,))
    return {"loss": total / max(x.shape[0], 1), **_metrics(spec, logits, y.cpu().numpy())}


def _metrics(spec: ModelSpec, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if spec.task == "classification":
        if spec.loss == "bce_with_logits":
            pred = (out > 0).astype(np.int64).reshape(y.shape)
        else:
            pred = out.argmax(axis=1)
        y = y.astype(np.int64)
        acc = float((pred == y).mean()) if y.size else 0.0
        classes = np.union1d(np.unique(y), np.unique(pred))
        f1s = []
        for c in classes:  # a handful of classes: the loop is over labels, not samples
            tp = float(((pred == c) & (y == c)).sum())
            denom = float((pred == c).sum() + (y == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        return {"accuracy": acc, "f1_macro": float(np.mean(f1s)) if f1s else 0.0}
    diff = out.reshape(y.shape) - y if out.size == y.size else out - y
    return {"mse": float((diff**2).mean()), "mae": float(np.abs(diff).mean())}
