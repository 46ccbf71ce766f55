"""Strategies that bound or resist bad client updates: ClippedFedAvg (norm clipping), the
coordinate-wise median and trimmed mean (sorted with a vectorised sorting network), and
Krum / Multi-Krum. The coordinate and Krum strategies also flag outlying clients."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from fedswarm.learning.strategies.base import (
    AggregationResult,
    Strategy,
    _block_size,
    _blocks,
    _check_range,
    _delta_gram,
    _delta_norms,
    _outliers,
    _weighted_mean,
)

# Above this many clients the sorting network has too many comparators; use np.sort instead.
_MAX_NETWORK_CLIENTS = 32


class ClippedFedAvg(Strategy):
    """FedAvg over client deltas clipped to L2 norm ``clip_norm`` (bounds any one client's pull;
    the aggregation half of DP-FedAvg, without noise)."""

    name = "clipped_fedavg"

    def __init__(self, clip_norm: float = 1.0) -> None:
        super().__init__()
        _check_range(self.name, "clip_norm", clip_norm, 0.0, math.inf, low_open=True)
        self.clip_norm = float(clip_norm)

    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        norms = _delta_norms(global_params, clients)
        scale = np.minimum(1.0, self.clip_norm / np.maximum(norms, 1e-30))
        # g + sum_i w_i s_i (x_i - g) = (1 - sum_i w_i s_i) g + sum_i (w_i s_i) x_i: one gemv
        # per block, no delta array.
        coef = weights * scale
        mean = _weighted_mean(clients, coef / coef.sum(), global_params.size)
        total = float(coef.sum())
        out = total * mean + (1.0 - total) * global_params
        return AggregationResult(
            out.astype(np.float32, copy=False),
            details={"delta_norms": norms.tolist(), "clip_scale": scale.tolist()},
        )


# --------------------------------------------------------------------------------------------
# Coordinate-wise median and trimmed mean


@lru_cache(maxsize=64)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparator pairs of Batcher's odd-even merge sort for ``n`` inputs.

    Built for the next power of two and pruned: comparators touching a padding index are no-ops
    when the padding is +inf, so the pruned network still sorts ``n`` inputs.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sort_rows(block: np.ndarray, scratch: np.ndarray) -> None:
    """Sort each column of ``block`` in place (rows = clients)."""
    n = block.shape[0]
    if n > _MAX_NETWORK_CLIENTS:
        block[...] = np.sort(block, axis=0)
        return
    tmp = scratch[: block.shape[1]]
    for a, b in _sorting_network(n):
        # Vectorised compare-exchange over the whole block row.
        np.minimum(block[a], block[b], out=tmp)
        np.maximum(block[a], block[b], out=block[b])
        block[a] = tmp


class _CoordinateStrategy(Strategy):
    """Shared body of median and trimmed mean: sort each coordinate across clients, reduce the
    middle rows, and flag clients far from the result."""

    robust = True

    def __init__(self, flag_ratio: float | None = 3.0) -> None:
        super().__init__()
        if flag_ratio is not None:
            _check_range(self.name, "flag_ratio", flag_ratio, 1.0, math.inf)
        self.flag_ratio = None if flag_ratio is None else float(flag_ratio)

    def _middle(self, n: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of the sorted block to average."""
        raise NotImplementedError

    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        n, size = len(clients), global_params.size
        lo, hi = self._middle(n)
        out = np.empty(size, dtype=np.float32)
        scratch = np.empty(_block_size(n), dtype=np.float32)
        # An unsorted copy of each block (still in cache) gives every client's distance to the
        # aggregate without a second pass over memory.
        keep = np.empty((n, _block_size(n)), dtype=np.float32) if self.flag_ratio else None
        inv = np.float32(1.0 / (hi - lo))
        sq = np.zeros(n, dtype=np.float64)
        for cols, block in _blocks(clients, size):
            if keep is not None:
                orig = keep[:, : block.shape[1]]
                orig[...] = block
            _sort_rows(block, scratch)
            np.multiply(block[lo:hi].sum(axis=0), inv, out=out[cols])
            if keep is not None:
                orig -= out[cols]
                sq += np.einsum("ij,ij->i", orig, orig)
        dist = np.sqrt(sq)
        flagged = _outliers(dist, range(n), self.flag_ratio)
        details = {"distance_to_aggregate": dist.tolist()} if keep is not None else {}
        return AggregationResult(out, tuple(flagged), details)


class Median(_CoordinateStrategy):
    """Coordinate-wise median (Yin et al. 2018); unweighted. Even n: mean of the middle two."""

    name = "median"

    def _middle(self, n: int) -> tuple[int, int]:
        return ((n - 1) // 2, n // 2 + 1)


class TrimmedMean(_CoordinateStrategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``floor(beta*n)`` largest and
    smallest values of each coordinate and average the rest (unweighted)."""

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.1, flag_ratio: float | None = 3.0) -> None:
        super().__init__(flag_ratio)
        _check_range(self.name, "beta", beta, 0.0, 0.5, high_open=True)
        self.beta = float(beta)

    def _middle(self, n: int) -> tuple[int, int]:
        k = int(math.floor(self.beta * n))
        return (k, n - k)


# --------------------------------------------------------------------------------------------
# Krum and Multi-Krum


class Krum(Strategy):
    """Krum (Blanchard et al. 2017): pick the client whose summed squared distance to its
    ``n - f - 2`` nearest others is smallest; needs ``n > 2f + 2``."""

    name = "krum"
    robust = True

    def __init__(self, f: int = 1, flag_ratio: float | None = 3.0) -> None:
        super().__init__()
        if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
            raise ValueError(f"{self.name}: f must be a non-negative integer, got {f!r}")
        if flag_ratio is not None:
            _check_range(self.name, "flag_ratio", flag_ratio, 1.0, math.inf)
        self.f = int(f)
        self.flag_ratio = None if flag_ratio is None else float(flag_ratio)

    def _num_selected(self, n: int) -> int:
        return 1

    def scores(self, global_params: np.ndarray, clients: Sequence[np.ndarray]) -> np.ndarray:
        """Krum score of each client (float64), from one Gram-matrix pass."""
        n = len(clients)
        if n <= 2 * self.f + 2:
            raise ValueError(
                f"{self.name} with f={self.f} needs more than 2f+2 = {2 * self.f + 2} client "
                f"updates, got {n}; lower f or wait for more trainers"
            )
        gram = _delta_gram(global_params, clients)
        sq = np.diag(gram)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
        np.fill_diagonal(dist, np.inf)  # a client is not its own neighbour
        nearest = np.sort(dist, axis=1)[:, : n - self.f - 2]
        return nearest.sum(axis=1)

    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        n = len(clients)
        scores = self.scores(global_params, clients)
        m = self._num_selected(n)
        # Stable sort: ties go to the lower index, so the choice is reproducible.
        selected = sorted(np.argsort(scores, kind="stable")[:m].tolist())
        uniform = np.zeros(n, dtype=np.float64)
        uniform[selected] = 1.0 / m
        out = _weighted_mean(clients, uniform, global_params.size)
        rejected = [i for i in range(n) if i not in selected]
        flagged = _outliers(scores, rejected, self.flag_ratio)
        return AggregationResult(
            out,
            tuple(flagged),
            {"scores": scores.tolist(), "selected": [float(i) for i in selected]},
        )


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): the plain mean of the ``m`` clients with the best
    Krum scores (default ``m = n - f``)."""

    name = "multikrum"

    def __init__(self, f: int = 1, m: int | None = None, flag_ratio: float | None = 3.0):
        super().__init__(f, flag_ratio)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1):
            raise ValueError(f"multikrum: m must be a positive integer or None, got {m!r}")
        self.m = None if m is None else int(m)

    def _num_selected(self, n: int) -> int:
        m = n - self.f if self.m is None else self.m
        if m > n - self.f:
            raise ValueError(
                f"multikrum: m={m} exceeds n - f = {n - self.f}; it would average attackers"
            )
        return m
