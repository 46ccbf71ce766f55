"""What a work unit trains with, and each job's aggregation strategy with its saved state.

A trainer and the client's re-execution must train a unit with the very same inputs, or an
honest update fails re-execution: :func:`unit_training` is that one set of settings (epochs,
batch size, learning rate, seed, mode and the strategy's own client settings, such as
FedProx's mu from :meth:`~fedswarm.learning.strategies.Strategy.client_config`), used both for
the :class:`~fedswarm.protocol.job.WorkUnit` a trainer gets and for the client's
:class:`~fedswarm.learning.worker.TrainTask`.

Server-side strategies (FedAvgM, FedAdam, FedYogi) carry state from round to round.
:class:`JobStrategies` saves it with every aggregated round as ``strategy-<r>.safetensors``
beside ``global-<r>.safetensors`` (the state that goes with those weights) and loads it before
aggregating round ``r``, so a client that restarts aggregates exactly as one that did not.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from fedswarm.learning.strategies import Strategy, make_strategy
from fedswarm.learning.worker import TrainTask
from fedswarm.protocol.preprocessing import Preprocessing
from fedswarm.roles.client.records import JobRecord, UnitRecord
from fedswarm.roles.client.services import JobFailed

# Keys of Strategy.client_config() -> the WorkUnit / TrainTask field that carries each one.
CLIENT_CONFIG_FIELDS = {"proximal_mu": "fedprox_mu"}


def max_update_bytes(num_params: int) -> int:
    """The upload cap of one encrypted update: float32 weights, 10 % and 2 MiB of slack for
    the safetensors header and the encryption's framing."""
    return int(num_params * 4 * 1.1) + (2 << 20)


def update_files(job_dir: Path, r: int, unit: int) -> tuple[Path, Path]:
    """Where the client keeps a unit's update: ``(ciphertext, plaintext)``. The ciphertext is
    copied from the store when the delivery is receipted (the trainer could overwrite the
    store's object afterwards); the plaintext appears once the trainer's key opened it."""
    base = job_dir / "updates" / f"{r}-{unit}"
    return base.with_suffix(".enc"), base.with_suffix(".safetensors")


def unit_seed(job_seed: int, r: int, slot: int) -> int:
    """The seed of a unit: reproducible by the client for re-execution."""
    return (job_seed * 1_000_003 + r * 10_007 + slot) % (1 << 62)


@dataclass(frozen=True)
class UnitTraining:
    """The training settings of one unit (fields named as in WorkUnit and TrainTask)."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    fedprox_mu: float
    mode: Literal["train", "noop"]

    def fields(self) -> dict[str, object]:
        """The settings as keyword arguments for ``WorkUnit`` or ``TrainTask``."""
        return asdict(self)


def unit_training(job: JobRecord, strategy: Strategy, r: int, slot: int) -> UnitTraining:
    """The settings unit ``slot`` of round ``r`` trains with, the strategy's client settings
    included exactly as :meth:`Strategy.client_config` gives them."""
    config = strategy.client_config()
    unknown = sorted(set(config) - set(CLIENT_CONFIG_FIELDS))
    if unknown:  # a setting trainers would silently not get: re-execution would disagree
        raise JobFailed(f"strategy {strategy.name} needs trainer settings work units cannot carry: {unknown}")
    carried = {CLIENT_CONFIG_FIELDS[k]: float(v) for k, v in config.items()}
    terms = job.terms
    return UnitTraining(epochs=terms.local_epochs, batch_size=terms.batch_size, lr=terms.lr,
                        seed=unit_seed(terms.seed, r, slot), mode=terms.mode,
                        fedprox_mu=carried.get("fedprox_mu", 0.0))


def reexec_task(job: JobRecord, strategy: Strategy, global_path: Path, u: UnitRecord) -> TrainTask:
    """The task that re-trains unit ``u`` as its trainer did (same chunk, weights, settings)."""
    chunk = job.chunks[u.slot % len(job.chunks)]
    return TrainTask(model=job.model, weights_path=str(global_path), chunk_paths=[chunk["path"]],
                     preprocessing=Preprocessing.model_validate(job.preprocessing),
                     **unit_training(job, strategy, u.round, u.slot).fields())  # type: ignore[arg-type]


def strategy_state_path(job_dir: Path, r: int) -> Path:
    """Where the strategy state that goes with ``global-<r>.safetensors`` is saved."""
    return job_dir / f"strategy-{r}.safetensors"


def save_strategy_state(path: Path, strategy: Strategy) -> None:
    """Write ``strategy.state()`` as safetensors, atomically (nothing for stateless ones)."""
    state = strategy.state()
    if not state:
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


class JobStrategies:
    """Each job's strategy, built from its terms, with its state restored round by round."""

    def __init__(self, job_dir: Callable[[str], Path]) -> None:
        self._job_dir = job_dir
        self._strategies: dict[str, Strategy] = {}

    def get(self, job: JobRecord) -> Strategy:
        """The job's strategy (one object per job, so in-memory state carries over)."""
        strategy = self._strategies.get(job.job_id)
        if strategy is None:
            strategy = self._strategies[job.job_id] = make_strategy(job.terms.strategy, **job.terms.strategy_params)
        return strategy

    def for_round(self, job: JobRecord, r: int) -> Strategy:
        """The strategy ready to aggregate round ``r``: fresh for round 0, else with the state
        saved after round ``r - 1`` (after a restart, or a retried aggregation)."""
        strategy = self.get(job)
        if r == 0:
            strategy.reset()
            return strategy
        path = strategy_state_path(self._job_dir(job.job_id), r)
        if path.is_file():
            strategy.load_state(load_file(str(path)))
        return strategy

    def saved(self, job: JobRecord, r_next: int) -> None:
        """Save the strategy's state after aggregating into ``global-<r_next>``."""
        save_strategy_state(strategy_state_path(self._job_dir(job.job_id), r_next), self.get(job))
