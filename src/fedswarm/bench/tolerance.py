"""How far a unit trained elsewhere lands from the client's CPU re-execution of it.

The client re-executes units on CPU in float32 with deterministic kernels and one thread
(:func:`fedswarm.learning.train.set_determinism`); a trainer with a GPU trains the same unit on
CUDA, where matrix products may use TF32 (inputs rounded to a 10-bit mantissa), reductions run
in another order, and dropout masks come from another generator. The review therefore compares
a re-executed unit statistically (:func:`fedswarm.learning.reference.reexecution_matches`:
relative difference of the whole delta and its cosine), with the bounds of
:class:`fedswarm.learning.reference.Thresholds`.

This module measures those two numbers for the example workloads, one unit each at an early and
a late global model, for each *variant* of the trainer's arithmetic:

- ``threads2``: CPU float32 with two threads (another reduction order);
- ``float64``: every linear layer computed in float64 (exact products, one rounding);
- ``tf32``: every linear layer's three products (forward, both gradients) with inputs rounded to
  TF32's 10-bit mantissa, accumulated in float32: what cuBLAS does with TF32 on;
- ``bf16``: the same with bfloat16's 7-bit mantissa (a harsher bound than TF32);
- ``dropout-masks``: CPU float32 with other dropout masks (what another device's generator
  gives), only for models with dropout;
- ``cuda`` (with ``device="cuda"``): the unit really trained on the GPU, TF32 allowed and
  non-deterministic kernels allowed, as a trainer's node runs it.

``python scripts/gpu_tolerance.py --device cuda`` prints the table on a GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedswarm.learning.reference import Thresholds, delta, reexecution_matches
from fedswarm.learning.train import (
    evaluate,
    initial_state,
    parse_model_spec,
    set_determinism,
    train,
)
from fedswarm.learning.weights import flatten_state

__all__ = ["VARIANTS", "Row", "measure", "main"]

VARIANTS = ("threads2", "float64", "tf32", "bf16", "dropout-masks")


@dataclass(frozen=True)
class Row:
    """One unit trained by a variant and compared with the client's CPU re-execution."""

    workload: str
    stage: str  # "early" (from initial weights) or "late" (from weights trained a while)
    variant: str
    dropout: bool
    rel_diff: float  # ||u - redo|| / ||redo - g||
    cosine: float  # cos(u - g, redo - g)
    val_effect: float  # |L_val(u) - L_val(redo)| / L_val(g)
    rtol: float  # the bound the review applies to this pair
    min_cosine: float | None
    passes: bool


# -- arithmetic variants -----------------------------------------------------------------------


def round_mantissa(t: torch.Tensor, bits: int) -> torch.Tensor:
    """``t`` (float32) rounded to nearest with a ``bits``-bit mantissa (TF32: 10, bfloat16: 7)."""
    drop = 23 - bits
    i = t.contiguous().view(torch.int32)
    i = (i + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return i.view(torch.float32)


class _RoundedLinear(torch.autograd.Function):
    """``x @ w.T + b`` with the inputs of all three products rounded, float32 accumulation."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bits: int) -> torch.Tensor:
        xr, wr = round_mantissa(x, bits), round_mantissa(w, bits)
        ctx.save_for_backward(xr, wr)
        ctx.bits, ctx.has_bias = bits, b is not None
        out = xr @ wr.T
        return out + b if b is not None else out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xr, wr = ctx.saved_tensors
        gr = round_mantissa(g, ctx.bits)
        gx = gr @ wr
        gw = gr.T @ xr
        gb = g.sum(0) if ctx.has_bias else None
        return gx, gw, gb, None


@contextlib.contextmanager
def _patched_linear(fn: Callable[..., torch.Tensor]) -> Iterator[None]:
    original = F.linear
    F.linear = fn  # nn.Linear.forward looks F.linear up at call time
    try:
        yield
    finally:
        F.linear = original


def _variant(name: str) -> contextlib.AbstractContextManager[None]:
    if name == "float64":
        def f64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            out = x.double() @ w.double().T + (b.double() if b is not None else 0.0)
            return out.float()
        return _patched_linear(f64)
    if name in ("tf32", "bf16"):
        bits = 10 if name == "tf32" else 7

        def rounded(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            if x.dim() != 2:
                raise ValueError("the rounded-product proxy handles 2-D inputs (MLPs)")
            return _RoundedLinear.apply(x, w, b, bits)
        return _patched_linear(rounded)
    return contextlib.nullcontext()


# -- workloads ---------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    spec: Any
    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    lr: float
    batch_size: int
    epochs: int

    @property
    def dropout(self) -> bool:
        return any(str(getattr(layer, "type", "")).startswith("Dropout") for layer in self.spec.layers)


def _example(name: str) -> dict[str, Any]:
    from importlib.resources import files

    return json.loads(files("fedswarm.examples").joinpath(f"{name}.seq.json").read_text())


def workloads(quick: bool = False) -> list[Workload]:
    """breast-cancer and digits (scikit-learn data, standardised), and the benchmark's 85k MLP on
    its synthetic teacher data; one trainer's chunk each, the rest as validation."""
    from sklearn import datasets

    out = []
    for name, loader, rows in (("breast_cancer", datasets.load_breast_cancer, 150),
                               ("digits", datasets.load_digits, 450)):
        bunch = loader()
        x = np.asarray(bunch.data, dtype=np.float64)
        x = ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype(np.float32)
        y = np.asarray(bunch.target, dtype=np.int64)
        perm = np.random.default_rng(0).permutation(len(y))
        x, y = x[perm], y[perm]
        raw = _example(name)
        t = raw.get("train", {})
        out.append(Workload(name, parse_model_spec(raw), torch.from_numpy(x[:rows]), torch.from_numpy(y[:rows]),
                            torch.from_numpy(x[rows:rows + 256]), torch.from_numpy(y[rows:rows + 256]),
                            float(t.get("lr", 0.01)), int(t.get("batch_size", 32)), int(t.get("epochs", 1))))
    rows = 1000 if quick else 5000
    rng = np.random.default_rng(0)
    teacher = np.random.default_rng(1234).normal(size=(64, 10))
    x = rng.normal(size=(rows + 256, 64)).astype(np.float32)
    y = (x @ teacher).argmax(axis=1).astype(np.int64)
    out.append(Workload("mlp85k", parse_model_spec(_example("mlp_bench")), torch.from_numpy(x[:rows]),
                        torch.from_numpy(y[:rows]), torch.from_numpy(x[rows:]), torch.from_numpy(y[rows:]),
                        0.05, 64, 1))
    return out


def _train(w: Workload, state: dict[str, np.ndarray], *, seed: int, device: str = "cpu") -> dict[str, np.ndarray]:
    return train(w.spec, state, w.x, w.y, epochs=w.epochs, batch_size=w.batch_size, lr=w.lr, seed=seed,
                 device=device).state


def _val_loss(w: Workload, state: dict[str, np.ndarray]) -> float:
    return float(evaluate(w.spec, state, w.xv, w.yv)["loss"])


def _flat(state: dict[str, np.ndarray]) -> np.ndarray:
    return flatten_state(state)[0]


def _client_run(w: Workload, g: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    set_determinism(1)
    return _train(w, g, seed=seed)


def _variant_run(w: Workload, g: dict[str, np.ndarray], seed: int, variant: str) -> dict[str, np.ndarray]:
    if variant == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.use_deterministic_algorithms(False)
        try:
            return _train(w, g, seed=seed, device="cuda")
        finally:
            set_determinism(1)
    if variant == "threads2":
        set_determinism(2)
        try:
            return _train(w, g, seed=seed)
        finally:
            set_determinism(1)
    if variant == "dropout-masks":
        # Same shuffling (its generator is seeded apart), other dropout masks: train() seeds the
        # global generator with `seed` for the masks, so draw them from a shifted seed and
        # restore the order by seeding the shuffling generator as before.
        original = torch.manual_seed

        def shifted(s: int) -> Any:
            return original(s + 7919)

        torch.manual_seed = shifted  # type: ignore[assignment]
        try:
            return _train(w, g, seed=seed)
        finally:
            torch.manual_seed = original  # type: ignore[assignment]
    with _variant(variant):
        set_determinism(1)
        return _train(w, g, seed=seed)


def measure(device: str = "cpu", quick: bool = False, seeds: int = 2,
            variants: tuple[str, ...] = VARIANTS) -> list[Row]:
    """Every workload x stage x variant x seed, compared with the client's re-execution."""
    t = Thresholds()
    names = [*variants, *(["cuda"] if device.startswith("cuda") else [])]
    rows: list[Row] = []
    for w in workloads(quick):
        g0 = initial_state(w.spec, seed=0)
        late = g0
        for s in range(3 if quick else 6):  # a global model some units into the job
            late = _client_run(w, late, 100 + s)
        for stage, g in (("early", g0), ("late", late)):
            gv, lg = _flat(g), _val_loss(w, g)
            for seed in range(seeds):
                redo = _client_run(w, g, seed)
                d_redo, l_redo = delta(_flat(redo), gv), _val_loss(w, redo)
                for variant in names:
                    if variant == "dropout-masks" and not w.dropout:
                        continue
                    u = _variant_run(w, g, seed, variant)
                    # threads2 is another CPU trainer (judged as the same device); the rest
                    # stand for, or are, another device's arithmetic
                    cross = variant != "threads2"
                    if cross:
                        rtol = t.reexec_rtol_cross_device_dropout if w.dropout else t.reexec_rtol_cross_device
                        mcos = (t.reexec_min_cosine_cross_device_dropout if w.dropout
                                else t.reexec_min_cosine_cross_device)
                    else:
                        rtol, mcos = t.reexec_rtol_same_device, None
                    ok, rel, cos = reexecution_matches(delta(_flat(u), gv), d_redo, rtol=rtol, min_cosine=mcos)
                    rows.append(Row(w.name, stage, variant, w.dropout, rel, cos,
                                    abs(_val_loss(w, u) - l_redo) / (lg if lg > 0 else 1.0), rtol, mcos, ok))
    return rows


def summarise(rows: list[Row]) -> list[dict[str, Any]]:
    """Worst case per workload x variant (over stages and seeds)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        k = (r.workload, r.variant)
        s = out.setdefault(k, {"workload": r.workload, "variant": r.variant, "dropout": r.dropout, "units": 0,
                               "max_rel_diff": 0.0, "min_cosine": 1.0, "max_val_effect": 0.0,
                               "rtol": r.rtol, "cosine_bound": r.min_cosine, "all_pass": True})
        s["units"] += 1
        s["max_rel_diff"] = max(s["max_rel_diff"], r.rel_diff)
        s["min_cosine"] = min(s["min_cosine"], r.cosine)
        s["max_val_effect"] = max(s["max_val_effect"], r.val_effect)
        s["all_pass"] = s["all_pass"] and r.passes
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    """``scripts/gpu_tolerance.py [--device cuda] [--quick] [--json]``: print the table; exit 1 when
    a unit falls outside the review's bounds (an honest GPU trainer would be rejected)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--device", default="cpu", help="cpu (proxies only) or cuda (also a real GPU run)")
    ap.add_argument("--quick", action="store_true", help="1,000 rows for the 85k MLP, fewer global steps")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for the proxies only")
        return 2
    rows = measure(args.device, args.quick, args.seeds)
    summary = summarise(rows)
    if args.json:
        print(json.dumps({"device": args.device, "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                          "summary": summary, "units": [asdict(r) for r in rows]}))
    else:
        print(f"{'workload':14} {'variant':14} {'units':>5} {'max rel diff':>12} {'min cosine':>10} "
              f"{'val effect':>10} {'bound':>14} ok")
        for s in summary:
            bound = f"{s['rtol']:g}" + (f"/{s['cosine_bound']:g}" if s["cosine_bound"] is not None else "")
            print(f"{s['workload']:14} {s['variant']:14} {s['units']:>5} {s['max_rel_diff']:>12.3g} "
                  f"{s['min_cosine']:>10.5f} {s['max_val_effect']:>10.3g} {bound:>14} {'yes' if s['all_pass'] else 'NO'}")
    return 0 if all(r.passes for r in rows) else 1
