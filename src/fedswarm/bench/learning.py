"""`fedswarm bench learning`: the worker against a bare PyTorch loop, and aggregation speed.

Workload (docs/BENCHMARKS.md): MLP 64→256→256→10, 5,000 synthetic samples of a
fixed random teacher (80% used for training), 1 local epoch, SGD lr 0.05 momentum 0.9, batch
64, one CPU thread. Measured interleaved (worker, bare, worker, bare, ...) in one run:

- ``throughput_ratio`` = bare loop time / worker round time (goal ≥ 0.95); the worker round
  includes the request, loading chunks, building the model, saving and re-validating the
  update: everything a trainer pays per round;
- worker cold start and warm noop-round overhead;
- aggregation of each strategy over 4 clients of the wide model (4.35M params) in GB/s of
  client parameters, against a numpy copy of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedswarm.examples import example_spec
from fedswarm.learning.chunks import Preprocessing, encode_chunk
from fedswarm.learning.spec import build_seq_module, make_loss, make_optimizer
from fedswarm.learning.train import initial_state, parse_model_spec, resolve_device
from fedswarm.learning.weights import save_weights_file
from fedswarm.learning.worker import TrainingWorker, TrainTask


def _spec(name: str) -> dict[str, Any]:
    return example_spec(name)


def _data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 64)).astype(np.float32)
    teacher = np.random.default_rng(99).normal(size=(64, 10))
    return x, (x @ teacher).argmax(1).astype(np.int64)


def _bare_loop(spec_obj: dict[str, Any], state: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
               device: torch.device, seed: int) -> float:
    """The reference: a plain PyTorch loop with nothing around it; returns seconds."""
    t0 = time.perf_counter()
    spec = parse_model_spec(spec_obj)
    model = build_seq_module(spec, device)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    opt = make_optimizer(spec.optimizer, model.parameters(), spec.train.lr)
    loss_fn = make_loss(spec.loss)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(xt), generator=gen).to(device)
    bs = spec.train.batch_size
    for start in range(0, len(xt), bs):
        idx = order[start : start + bs]
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _aggregation(quick: bool) -> dict[str, Any]:
    try:
        from fedswarm.learning.strategies import list_strategies, make_strategy
    except ImportError:
        return {"skipped": "fedswarm.learning.strategies is not available"}
    size = 85_002 if quick else 4_351_498  # the bench MLPs' parameter counts
    rng = np.random.default_rng(0)
    glob = rng.normal(size=size).astype(np.float32)
    clients = [glob + 0.01 * rng.normal(size=size).astype(np.float32) for _ in range(4)]
    nbytes = 4 * size * 4
    reps = 3 if quick else 5
    stacked = np.empty((4, size), np.float32)
    copy_t = min(_timed(lambda: [np.copyto(stacked[i], c) for i, c in enumerate(clients)]) for _ in range(reps))
    out: dict[str, Any] = {"client_bytes": nbytes, "numpy_copy_gbps": nbytes / copy_t / 1e9, "strategies": {}}
    for info in list_strategies():
        params: dict[str, Any] = {"f": 0} if "f" in info.params else {}  # n=4 needs n > 2f+2
        try:
            strat = make_strategy(info.name, **params)
            t = min(_timed(lambda s=strat: s.aggregate(glob, clients, [100] * 4)) for _ in range(reps))
        except Exception as exc:  # noqa: BLE001 - one broken strategy must not hide the others
            out["strategies"][info.name] = {"error": str(exc)[:200]}
            continue
        gbps = nbytes / t / 1e9
        out["strategies"][info.name] = {"seconds": t, "gbps": gbps, "vs_numpy_copy": gbps / out["numpy_copy_gbps"]}
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(workdir: Path, quick: bool) -> dict[str, Any]:
    """Run every measurement; returns one JSON-ready dict."""
    device = resolve_device("auto")
    torch.set_num_threads(1)
    spec_obj = _spec("mlp_bench")
    spec = parse_model_spec(spec_obj)
    rows = 1_000 if quick else 4_000  # 80% of 5,000 samples per client
    x, y = _data(rows)
    chunk = workdir / "chunk.safetensors"
    chunk.write_bytes(encode_chunk(x, y))
    state = initial_state(spec, seed=0)
    weights = workdir / "global.safetensors"
    save_weights_file(weights, state)
    prep = Preprocessing(task="classification", features=[f"f{i}" for i in range(64)], label="y",
                         classes=[str(i) for i in range(10)], mean=[0.0] * 64, std=[1.0] * 64)
    task = TrainTask(model=spec_obj, weights_path=str(weights), chunk_paths=[str(chunk)],
                     preprocessing=prep, epochs=1, batch_size=64, lr=0.05, seed=1)
    reps = 3 if quick else 7
    worker = TrainingWorker(workdir / "worker", device="auto")
    try:
        t0 = time.perf_counter()
        worker.start()
        start_s = time.perf_counter() - t0
        worker.train(task, 300)  # warm-up: first-call imports and allocator growth
        _bare_loop(spec_obj, state, x, y, device, 1)
        w_times, b_times, noop_times = [], [], []
        for _ in range(reps):
            res = worker.train(task, 300)
            Path(res.update_path).unlink()
            w_times.append(res.seconds)
            b_times.append(_bare_loop(spec_obj, state, x, y, device, 1))
            noop = worker.train(task.model_copy(update={"mode": "noop"}), 60)
            Path(noop.update_path).unlink()
            noop_times.append(noop.seconds)
        device_name = worker.info.get("device")
    finally:
        worker.close()
    ratios = [b / w for w, b in zip(w_times, b_times, strict=True)]
    return {
        "device": device_name,
        "torch": torch.__version__,
        "samples": rows,
        "worker_start_s": start_s,
        "warm_noop_round_s": {"median": statistics.median(noop_times), "min": min(noop_times), "max": max(noop_times)},
        "worker_round_s": {"median": statistics.median(w_times), "min": min(w_times), "max": max(w_times)},
        "bare_loop_s": {"median": statistics.median(b_times), "min": min(b_times), "max": max(b_times)},
        "worker_samples_per_s": rows / statistics.median(w_times),
        "bare_samples_per_s": rows / statistics.median(b_times),
        "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                             "goal": 0.95},
        "aggregation": _aggregation(quick),
    }


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fedswarm bench learning [--json] [--quick] [--workdir DIR]``."""
    with tempfile.TemporaryDirectory(dir=getattr(args, "workdir", None)) as tmp:
        result = run(Path(tmp), bool(getattr(args, "quick", False)))
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"learning engine ({result['device']}, torch {result['torch']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("worker cold start", f"{result['worker_start_s']:.2f} s")
    table.add_row("warm noop round", f"{result['warm_noop_round_s']['median'] * 1000:.1f} ms")
    table.add_row("worker round (1 epoch)", f"{result['worker_round_s']['median'] * 1000:.1f} ms")
    table.add_row("bare PyTorch loop", f"{result['bare_loop_s']['median'] * 1000:.1f} ms")
    r = result["throughput_ratio"]
    table.add_row("throughput ratio (goal ≥ 0.95)", f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})")
    agg = result["aggregation"]
    if "skipped" in agg:
        table.add_row("aggregation", agg["skipped"])
    else:
        table.add_row("numpy copy", f"{agg['numpy_copy_gbps']:.2f} GB/s")
        for name, s in agg["strategies"].items():
            table.add_row(f"aggregate {name}", s.get("error") or f"{s['gbps']:.2f} GB/s ({s['vs_numpy_copy']:.2f}× copy)")
    Console().print(table)
    return 0
