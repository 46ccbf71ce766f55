"""Aggregation strategies over flat float32 parameter vectors: the interface and the averages.

One small interface in the spirit of Flower's ``Strategy``: :class:`Strategy.aggregate` validates
the round's inputs and hands them to one hook, :meth:`Strategy._aggregate`, that each algorithm
overrides. This module holds that interface, the input validation, the blocked iteration every
strategy shares, and the plain averages (FedAvg, FedProx). The server optimisers live in
:mod:`.server`, the robust strategies in :mod:`.robust`, and the by-name registry
(:func:`~fedswarm.learning.strategies.make_strategy`) in :mod:`.registry`.

Every strategy works column-block by column-block: a block of ``n`` client rows that fits in the
CPU cache is copied once from the clients' arrays and then reduced with whole-array numpy calls
(matrix products, a vectorised sorting network). So there is no Python loop over parameters, each
client byte is read from memory once per pass, and nothing of size ``n x d`` is ever allocated.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

ClientParams = Sequence[np.ndarray] | np.ndarray

# Bytes of one (n, block) float32 working block: small enough for L2, large enough that the
# per-block interpreter overhead (a few dozen numpy calls) is negligible.
_BLOCK_BYTES = 256 * 1024


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
                "(review the round with fedswarm.learning.review.review_round before aggregating)"
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
# Averaging strategies (the server optimisers are in .server, the robust ones in .robust)


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


# --------------------------------------------------------------------------------------------
# Parameter checks shared by every strategy's constructor


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
