"""Aggregation strategies over flat float32 parameter vectors.

One small interface in the spirit of Flower's ``Strategy``: :class:`Strategy.aggregate` validates
the round's inputs and hands them to one hook, :meth:`Strategy._aggregate`, that each algorithm
overrides. Build strategies by name with :func:`make_strategy`; :func:`list_strategies` describes
them for the CLI and the web UI.

Every strategy works column-block by column-block: a block of ``n`` client rows that fits in the
CPU cache is copied once from the clients' arrays and then reduced with whole-array numpy calls
(matrix products, a vectorised sorting network). So there is no Python loop over parameters, each
client byte is read from memory once per pass, and nothing of size ``n x d`` is ever allocated.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "AggregationResult",
    "ClippedFedAvg",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Krum",
    "Median",
    "MultiKrum",
    "Strategy",
    "StrategyInfo",
    "TrimmedMean",
    "list_strategies",
    "make_strategy",
]

ClientParams = Sequence[np.ndarray] | np.ndarray

# Bytes of one (n, block) float32 working block: small enough for L2, large enough that the
# per-block interpreter overhead (a few dozen numpy calls) is negligible.
_BLOCK_BYTES = 256 * 1024
# Above this many clients the sorting network has too many comparators; use np.sort instead.
_MAX_NETWORK_CLIENTS = 32


@dataclass(frozen=True)
class AggregationResult:
    """The outcome of one aggregation.

    Parameters
    ----------
    params:
        The new global parameters (flat float32).
    flagged:
        Indices (into the round's client list) that a robust strategy considers outliers:
        discarded *and* far from the others. Discarding alone is no evidence (Krum keeps one
        client), so only these should fail the "flagged" update check.
    details:
        Per-client numbers worth logging (e.g. Krum scores, delta norms, which were selected).
    """

    params: np.ndarray
    flagged: tuple[int, ...] = ()
    details: dict[str, list[float]] = field(default_factory=dict)


class Strategy(ABC):
    """Turns the global parameters and the clients' parameters into new global parameters.

    Subclasses override :meth:`_aggregate` (and :meth:`client_config` if the clients need
    settings); :meth:`aggregate` is the template method that validates inputs first.
    """

    name: ClassVar[str] = ""
    #: True when the strategy keeps server-side state between rounds (momentum, moments).
    stateful: ClassVar[bool] = False
    #: True when the strategy can report outliers in ``AggregationResult.flagged``.
    robust: ClassVar[bool] = False

    def __init__(self) -> None:
        self.last_flagged: list[int] = []
        self.last_result: AggregationResult | None = None

    def aggregate(
        self,
        global_params: np.ndarray,
        client_params: ClientParams,
        num_samples: Sequence[int],
    ) -> np.ndarray:
        """Return the new global parameters (flat float32) for one round.

        Parameters
        ----------
        global_params:
            The current global parameters, a 1-D float array of length ``d``.
        client_params:
            One 1-D float array of length ``d`` per client (or an ``(n, d)`` array).
        num_samples:
            Training samples behind each client update (weights for the averaging strategies;
            validated but unused by median, trimmed mean and Krum).

        Returns
        -------
        The new global parameters. Outliers found are in :attr:`last_flagged` and the full
        outcome in :attr:`last_result`.
        """
        return self.aggregate_result(global_params, client_params, num_samples).params

    def aggregate_result(
        self,
        global_params: np.ndarray,
        client_params: ClientParams,
        num_samples: Sequence[int],
    ) -> AggregationResult:
        """Like :meth:`aggregate` but returns the whole :class:`AggregationResult`."""
        g, clients, weights = _validate(global_params, client_params, num_samples)
        result = self._aggregate(g, clients, weights)
        # NaN/Inf in any client propagates into a weighted sum or a median, so one pass over
        # the (small) output catches it without scanning all n x d inputs.
        if not np.isfinite(result.params).all():
            raise ValueError(
                f"{self.name}: the aggregate is not finite; a client update contains NaN/Inf "
                "(run fedswarm.learning.checks.check_round before aggregating)"
            )
        self.last_result = result
        self.last_flagged = list(result.flagged)
        return result

    def client_config(self) -> dict[str, float]:
        """Settings the clients' trainers need for this strategy (e.g. FedProx's mu).

        The coordinator sends trainers exactly these values and re-executes units with them.
        """
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the server-side state carried between rounds (empty for stateless
        strategies); saved with each aggregated round and restored by :meth:`load_state`."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned. A stateless strategy accepts only no state."""
        if state:
            raise ValueError(f"{self.name} keeps no state between rounds, got {sorted(state)}")

    def reset(self) -> None:
        """Forget any server-side state (a new job, or a different model size)."""
        self.last_flagged = []
        self.last_result = None

    @abstractmethod
    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        """Aggregate validated inputs: float32 ``global_params``, float32 client rows, and
        ``weights`` (float64, normalised sample counts summing to 1)."""


# --------------------------------------------------------------------------------------------
# Input validation and the blocked iteration every strategy uses


def _validate(
    global_params: np.ndarray, client_params: ClientParams, num_samples: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    g = np.asarray(global_params)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"global_params must be a non-empty 1-D vector, got shape {g.shape}")
    if not np.issubdtype(g.dtype, np.floating):
        raise ValueError(f"global_params must be floating point, got dtype {g.dtype}")
    g = np.ascontiguousarray(g, dtype=np.float32)

    if isinstance(client_params, np.ndarray):
        if client_params.ndim != 2:
            raise ValueError(
                f"client_params as one array must be 2-D (clients, params), got shape "
                f"{client_params.shape}"
            )
        clients = list(client_params)
    else:
        clients = [np.asarray(c) for c in client_params]
    if not clients:
        raise ValueError("no client updates to aggregate (client_params is empty)")
    for i, c in enumerate(clients):
        if c.shape != g.shape:
            raise ValueError(
                f"client {i} has shape {c.shape}, expected {g.shape} like the global parameters"
            )
        if not np.issubdtype(c.dtype, np.floating):
            raise ValueError(f"client {i} has dtype {c.dtype}, expected floating point")

    counts = np.asarray(num_samples)
    if counts.shape != (len(clients),):
        raise ValueError(
            f"num_samples has {counts.size} entries for {len(clients)} client updates"
        )
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"num_samples must be integers, got dtype {counts.dtype}")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("num_samples must be non-negative with a positive total")
    weights = counts.astype(np.float64) / float(counts.sum())
    return g, clients, weights


def _block_size(num_rows: int) -> int:
    return max(1024, _BLOCK_BYTES // (4 * max(1, num_rows)))


def _blocks(
    clients: Sequence[np.ndarray], size: int, rows: Sequence[int] | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(columns, block)`` with ``block[k] = clients[rows[k]][columns]`` as float32.

    The block is a reused scratch buffer the consumer may modify but must not keep.
    """
    idx = list(range(len(clients))) if rows is None else list(rows)
    width = _block_size(len(idx))
    buf = np.empty((len(idx), width), dtype=np.float32)
    for start in range(0, size, width):
        stop = min(start + width, size)
        block = buf[:, : stop - start]
        for k, i in enumerate(idx):  # a loop over clients, not parameters
            block[k] = clients[i][start:stop]
        yield slice(start, stop), block


def _weighted_mean(
    clients: Sequence[np.ndarray], weights: np.ndarray, size: int
) -> np.ndarray:
    """``sum_i weights[i] * clients[i]`` (weights sum to 1), skipping zero-weight clients."""
    rows = [i for i in range(len(clients)) if weights[i] != 0.0]
    w = weights[rows].astype(np.float32)
    out = np.empty(size, dtype=np.float32)
    for cols, block in _blocks(clients, size, rows):
        np.dot(w, block, out=out[cols])
    return out


def _delta_gram(global_params: np.ndarray, clients: Sequence[np.ndarray]) -> np.ndarray:
    """Gram matrix of the clients' deltas ``x_i - global``, accumulated in float64.

    Working on deltas rather than raw parameters avoids the cancellation in
    ``|a|^2 + |b|^2 - 2ab`` when weights are large and the updates close together.
    """
    n = len(clients)
    gram = np.zeros((n, n), dtype=np.float64)
    for cols, block in _blocks(clients, global_params.size):
        block -= global_params[cols]
        gram += block @ block.T
    return gram


def _delta_norms(global_params: np.ndarray, clients: Sequence[np.ndarray]) -> np.ndarray:
    """L2 norm of each client's delta ``x_i - global`` (float64)."""
    sq = np.zeros(len(clients), dtype=np.float64)
    for cols, block in _blocks(clients, global_params.size):
        block -= global_params[cols]
        sq += np.einsum("ij,ij->i", block, block)
    return np.sqrt(sq)


def _outliers(values: np.ndarray, candidates: Sequence[int], ratio: float | None) -> list[int]:
    """Candidates whose value exceeds ``ratio`` times the median over all clients.

    The median is the round's "typical" distance as long as fewer than half are attackers.
    """
    if ratio is None or len(values) == 0:
        return []
    typical = float(np.median(values))
    # A floor keeps identical honest clients (distance 0) from flagging float round-off.
    floor = 1e-6 * (1.0 + float(np.max(np.abs(values))))
    bound = max(ratio * typical, floor)
    return sorted(i for i in candidates if values[i] > bound)


# --------------------------------------------------------------------------------------------
# Averaging strategies


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): the sample-weighted mean of the client parameters."""

    name = "fedavg"

    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        return AggregationResult(_weighted_mean(clients, weights, global_params.size))


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg aggregation; clients add (mu/2)|w - w_global|^2."""

    name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01) -> None:
        super().__init__()
        _check_range("fedprox", "proximal_mu", proximal_mu, 0.0, 10.0)
        self.proximal_mu = float(proximal_mu)

    def client_config(self) -> dict[str, float]:
        """The proximal term's weight, passed to each trainer."""
        return {"proximal_mu": self.proximal_mu}


class _ServerOptimizer(Strategy):
    """FedAvg's mean treated as a pseudo-gradient for a server-side optimiser (FedOpt).

    Subclasses implement :meth:`_step` on one column block; the state arrays are full-length and
    sliced per block, so the whole update stays in cache.
    """

    stateful = True
    _state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self._state: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """Drop the server optimiser's state."""
        super().reset()
        self._state = {}

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the server state arrays (to save as safetensors between restarts)."""
        return {k: v.copy() for k, v in self._state.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore arrays saved by :meth:`state`."""
        if set(state) != set(self._state_names):
            raise ValueError(
                f"{self.name} state needs keys {sorted(self._state_names)}, got {sorted(state)}"
            )
        sizes = {np.asarray(v).shape for v in state.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"{self.name} state arrays must be 1-D and equally long")
        self._state = {k: np.array(v, dtype=np.float32) for k, v in state.items()}

    def _init_state(self, key: str, size: int) -> np.ndarray:
        """The initial value of state array ``key`` (zeros unless a subclass says otherwise)."""
        return np.zeros(size, dtype=np.float32)

    def _aggregate(
        self, global_params: np.ndarray, clients: list[np.ndarray], weights: np.ndarray
    ) -> AggregationResult:
        size = global_params.size
        if not self._state:
            self._state = {k: self._init_state(k, size) for k in self._state_names}
        have = next(iter(self._state.values())).size
        if have != size:
            raise ValueError(
                f"{self.name} holds server state for {have} parameters but got {size}; "
                "call reset() when the model changes"
            )
        rows = [i for i in range(len(clients)) if weights[i] != 0.0]
        w = weights[rows].astype(np.float32)
        out = np.empty(size, dtype=np.float32)
        for cols, block in _blocks(clients, size, rows):
            mean = w @ block
            state = {k: v[cols] for k, v in self._state.items()}
            out[cols] = self._step(global_params[cols], mean - global_params[cols], state)
        return AggregationResult(out)

    @abstractmethod
    def _step(
        self, global_block: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]
    ) -> np.ndarray:
        """New parameters for one block; ``delta`` = client mean - global; update ``state``
        views in place."""


class FedAvgM(_ServerOptimizer):
    """FedAvgM (Hsu et al. 2019): server SGD with momentum on the pseudo-gradient.

    ``nesterov=True`` is DiLoCo's outer step (Douillard et al. 2023: lr 0.7, momentum 0.9).
    """

    name = "fedavgm"
    _state_names = ("momentum",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, nesterov: bool = False):
        super().__init__()
        _check_range("fedavgm", "server_lr", server_lr, 0.0, 10.0, low_open=True)
        _check_range("fedavgm", "momentum", momentum, 0.0, 1.0, high_open=True)
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _step(
        self, global_block: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]
    ) -> np.ndarray:
        # torch.optim.SGD semantics with the pseudo-gradient g = global - mean = -delta.
        grad = -delta
        buf = state["momentum"]
        buf *= self.momentum
        buf += grad
        step = grad + self.momentum * buf if self.nesterov else buf
        return global_block - self.server_lr * step


class FedAdam(_ServerOptimizer):
    """FedAdam (Reddi et al. 2020, Algorithm 2): Adam on the server, no bias correction.

    m = b1 m + (1-b1) D;  v = b2 v + (1-b2) D^2;  x = x + eta m / (sqrt(v) + tau),
    with D the mean client delta, m_0 = 0 and v_0 = tau^2.
    """

    name = "fedadam"
    _state_names = ("m", "v")

    def __init__(
        self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__()
        _check_range(self.name, "eta", eta, 0.0, 10.0, low_open=True)
        _check_range(self.name, "beta_1", beta_1, 0.0, 1.0, high_open=True)
        _check_range(self.name, "beta_2", beta_2, 0.0, 1.0, high_open=True)
        _check_range(self.name, "tau", tau, 0.0, 1.0, low_open=True)
        self.eta, self.beta_1, self.beta_2, self.tau = (
            float(eta), float(beta_1), float(beta_2), float(tau)
        )

    def _init_state(self, key: str, size: int) -> np.ndarray:
        # The paper starts v at tau^2 (v_{-1} >= tau^2), m at zero.
        fill = self.tau**2 if key == "v" else 0.0
        return np.full(size, fill, dtype=np.float32)

    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> None:
        v *= self.beta_2
        v += (1.0 - self.beta_2) * sq

    def _step(
        self, global_block: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray]
    ) -> np.ndarray:
        m, v = state["m"], state["v"]
        m *= self.beta_1
        m += (1.0 - self.beta_1) * delta
        self._second_moment(v, delta * delta)
        return global_block + self.eta * m / (np.sqrt(v) + self.tau)


class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2020): FedAdam with Yogi's additive second moment,
    v = v - (1-b2) D^2 sign(v - D^2)."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> None:
        v -= (1.0 - self.beta_2) * sq * np.sign(v - sq)


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
# Robust strategies


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


# --------------------------------------------------------------------------------------------
# Registry


_REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, ClippedFedAvg,
        Median, TrimmedMean, Krum, MultiKrum,
    )
}


@dataclass(frozen=True)
class StrategyInfo:
    """What the CLI and UI show about a strategy: its name, summary and parameters."""

    name: str
    summary: str
    params: dict[str, Any]
    robust: bool
    stateful: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "summary": self.summary,
            "params": dict(self.params),
            "robust": self.robust,
            "stateful": self.stateful,
        }


def _params_of(cls: type[Strategy]) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }


def list_strategies() -> list[StrategyInfo]:
    """All strategies :func:`make_strategy` knows, with their parameters and defaults."""
    infos = []
    for name, cls in _REGISTRY.items():
        doc = inspect.getdoc(cls) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        infos.append(StrategyInfo(name, summary, _params_of(cls), cls.robust, cls.stateful))
    return infos


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build the strategy called ``name`` (see :func:`list_strategies`) with ``params``.

    Raises ``ValueError`` with a one-line message for an unknown name, an unknown parameter or
    an out-of-range value.
    """
    cls = _REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(_REGISTRY)}")
    allowed = _params_of(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ValueError(f"strategy {cls.name!r} has no parameter {unknown[0]!r}; it takes: {known}")
    factory: Callable[..., Strategy] = cls
    return factory(**params)


def _check_range(
    strategy: str,
    param: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a one-line ValueError unless ``value`` is a real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{strategy}: {param} must be a number, got {value!r}")
    v = float(value)
    bad = (
        math.isnan(v)
        or v < low
        or v > high
        or (low_open and v == low)
        or (high_open and v == high)
    )
    if bad:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{strategy}: {param}={value!r} is outside {lb}{low}, {high}{hb}")
