"""Server-side optimisers over FedAvg's mean (FedOpt, Reddi et al. 2020): FedAvgM, FedAdam,
FedYogi. These keep state between rounds (momentum, moments); see :meth:`Strategy.state`."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from fedswarm.learning.strategies.base import AggregationResult, Strategy, _blocks, _check_range


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
