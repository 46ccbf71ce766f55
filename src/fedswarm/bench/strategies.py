"""Micro-benchmark of the aggregation strategies against a numpy copy of the same bytes.

``fedswarm bench learning`` calls :func:`bench_strategies`; the throughput is in GB/s of client
parameters (``num_clients * num_params * 4`` bytes per aggregation), and each strategy's ratio is
taken against a plain ``ndarray.copy`` of those bytes measured interleaved in the same run (A B A
B ...), so a loaded machine skews both alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from fedswarm.learning.strategies import list_strategies, make_strategy

# Parameters that make every strategy valid for the default 4 clients (Krum needs n > 2f + 2).
_BENCH_PARAMS: dict[str, dict[str, Any]] = {
    "krum": {"f": 0},
    "multikrum": {"f": 0},
    "trimmed_mean": {"beta": 0.25},
}


def bench_strategies(
    num_clients: int = 4,
    num_params: int = 85_000,
    repeats: int = 5,
    seed: int = 0,
    strategies: list[str] | None = None,
) -> dict[str, Any]:
    """Time each strategy's ``aggregate`` on random float32 clients.

    Parameters
    ----------
    num_clients, num_params:
        The round's shape (the field notes use 4 x 85k and 4 x 4.35M).
    repeats:
        Interleaved repetitions; the median time is reported (and min-max).
    strategies:
        Names to time (default: all of :func:`list_strategies`).

    Returns
    -------
    A JSON-ready dict: ``bytes``, ``copy`` (median seconds, GB/s) and per strategy ``median_s``,
    ``min_s``, ``max_s``, ``gbps`` and ``ratio_vs_copy`` (copy time / strategy time).
    """
    if num_clients < 1 or num_params < 1 or repeats < 1:
        raise ValueError("num_clients, num_params and repeats must all be positive")
    rng = np.random.default_rng(seed)
    global_params = rng.standard_normal(num_params, dtype=np.float32)
    clients = [
        global_params + 0.01 * rng.standard_normal(num_params, dtype=np.float32)
        for _ in range(num_clients)
    ]
    stacked = np.stack(clients)
    samples = [100] * num_clients
    names = strategies or [info.name for info in list_strategies()]
    built = {
        name: make_strategy(name, **_fit_params(name, num_clients)) for name in names
    }
    nbytes = stacked.nbytes

    times: dict[str, list[float]] = {"copy": [], **{n: [] for n in names}}
    for strategy in built.values():  # warm-up: caches, lazily built sorting networks
        strategy.aggregate(global_params, clients, samples)
    for _ in range(repeats):
        t0 = time.perf_counter()
        stacked.copy()
        times["copy"].append(time.perf_counter() - t0)
        for name, strategy in built.items():
            t0 = time.perf_counter()
            strategy.aggregate(global_params, clients, samples)
            times[name].append(time.perf_counter() - t0)

    copy_s = statistics.median(times["copy"])
    result: dict[str, Any] = {
        "num_clients": num_clients,
        "num_params": num_params,
        "bytes": nbytes,
        "repeats": repeats,
        "copy": {"median_s": copy_s, "gbps": nbytes / copy_s / 1e9},
        "strategies": {},
    }
    for name in names:
        med = statistics.median(times[name])
        result["strategies"][name] = {
            "median_s": med,
            "min_s": min(times[name]),
            "max_s": max(times[name]),
            "gbps": nbytes / med / 1e9,
            "ratio_vs_copy": copy_s / med,
        }
    return result


def _fit_params(name: str, num_clients: int) -> dict[str, Any]:
    params = dict(_BENCH_PARAMS.get(name, {}))
    if name in ("krum", "multikrum"):
        # The largest f the round size allows, so the benchmark exercises the real selection.
        params["f"] = max(0, (num_clients - 3) // 2)
    return params


if __name__ == "__main__":  # pragma: no cover - manual use
    import json
    import sys

    n_params = int(sys.argv[1]) if len(sys.argv) > 1 else 85_000
    print(json.dumps(bench_strategies(num_params=n_params), indent=2))
