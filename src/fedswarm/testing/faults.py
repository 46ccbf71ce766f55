"""Trainers that cheat, for tests and the demo: the real :class:`Trainer` with one step changed.

Each double overrides :meth:`~fedswarm.roles.trainer.unit.UnitFlow.make_update` (what the
trainer hands in for a unit) and nothing else: it bids, downloads, encrypts, uploads, commits
and reports exactly like an honest trainer, so what catches it is the client's checks, never a
flag it announces. The normal node, its API and the job terms know nothing of these.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import trio

from fedswarm.learning.weights import load_weights_bytes, load_weights_file, save_weights_bytes
from fedswarm.protocol.job import WorkUnit
from fedswarm.roles.trainer import TrainedUpdate, Trainer, UnitInputs

POISON_SCALE = 50.0


class TrainerFault(StrEnum):
    """How a faulty trainer cheats (``--fault`` of ``python -m fedswarm.testing.node trainer``)."""

    POISON = "poison"  # trains, then scales its delta by 50 and adds noise
    LAZY = "lazy"  # never trains: hands back the global weights, claims the samples


class ClientFault(StrEnum):
    """How a faulty client misbehaves (the double is in :mod:`fedswarm.testing.client`)."""

    NEVER_SETTLE = "never-settle"  # never pays: its trainers must claim after the settle window


class FaultyTrainer(Trainer):
    """Base of the cheating trainers: ``/status`` names the fault (the API does not know it)."""

    fault: TrainerFault

    def status(self) -> dict[str, Any]:
        """The trainer's status plus ``fault`` (so a test or the demo can tell the cheater)."""
        out = super().status()
        out["trainer"]["fault"] = self.fault.value
        return out


class PoisonTrainer(FaultyTrainer):
    """Trains honestly, then poisons the update (:func:`poison_update`)."""

    fault = TrainerFault.POISON

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The honest update with its delta from the global weights blown up."""
        trained = await super().make_update(wu, inputs, deadline_s)
        trained.data = await trio.to_thread.run_sync(poison_update, trained.data, inputs.global_path, wu.seed)
        return trained


class LazyTrainer(FaultyTrainer):
    """Skips training: hands back the global weights unchanged, and claims the samples a real
    run would have seen (the worker counts rows x epochs)."""

    fault = TrainerFault.LAZY

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The global weights as they came, with no loss and no batches."""
        return TrainedUpdate(inputs.global_path.read_bytes(), inputs.rows * wu.epochs, None, 0)


TRAINER_FAULTS: dict[TrainerFault, type[FaultyTrainer]] = {
    TrainerFault.POISON: PoisonTrainer,
    TrainerFault.LAZY: LazyTrainer,
}


def faulty_trainer_class(fault: str) -> type[FaultyTrainer]:
    """The trainer double for ``fault`` (``poison`` or ``lazy``); ValueError for anything else."""
    return TRAINER_FAULTS[TrainerFault(fault)]


def poison_update(update: bytes, global_path: Path, seed: int) -> bytes:
    """Scale the update's delta from the global weights by 50 and add noise (same layout)."""
    glob = load_weights_file(global_path)
    upd = load_weights_bytes(update)
    rng = np.random.default_rng(seed ^ 0x5EED)
    out: dict[str, np.ndarray] = {}
    for name, arr in upd.items():
        if arr.dtype != np.float32:
            out[name] = arr
            continue
        delta = arr - glob[name]
        noise = rng.normal(scale=float(np.std(delta)) * 5 + 1e-2, size=arr.shape)
        out[name] = (glob[name] + POISON_SCALE * delta + noise).astype(np.float32)
    return save_weights_bytes(out)
