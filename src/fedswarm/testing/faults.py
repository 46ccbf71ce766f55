"""Trainers that cheat, for tests and the demo: the real :class:`Trainer` with one step changed.

Each double overrides :meth:`~fedswarm.roles.trainer.unit.UnitFlow.make_update` (what the
trainer hands in for a unit) and nothing else: it bids, downloads, encrypts, uploads, commits
and reports exactly like an honest trainer, so what catches it is the client's checks, never a
flag it announces. The normal node, its API and the job terms know nothing of these.
"""

from __future__ import annotations

import os
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
    SYBIL_LAZY = "sybil-lazy"  # never trains: global weights + tiny noise (one of several keys)
    COPY = "copy"  # re-sends the update a colluding trainer made (shared folder)
    COPY_SOURCE = "copy-source"  # trains honestly and shares each update with its copier
    INFLATE_SAMPLES = "inflate-samples"  # trains honestly, reports 10**15 samples
    REVERSE = "reverse"  # trains, then hands in global - 1.5 x its delta (within the norm bounds)


class ClientFault(StrEnum):
    """How a faulty client misbehaves (the double is in :mod:`fedswarm.testing.client`)."""

    NEVER_SETTLE = "never-settle"  # never pays: its trainers must claim after the settle window
    # Funds the job but registers its trainers wrongly on chain: they must refuse to work.
    MISREGISTER_PRICE = "misregister-price"  # each trainer at 1 wei less than it bid
    MISREGISTER_ABSENT = "misregister-absent"  # strangers' addresses instead of the trainers'


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


SYBIL_NOISE = 1e-6  # the sybils' noise: tiny next to one honest step (~1e-2 per weight)
INFLATED_SAMPLES = 10**15
REVERSE_SCALE = -1.5
SHARE_DIR_ENV = "FEDSWARM_FAULT_SHARE_DIR"  # the folder a copier and its source share


class SybilLazyTrainer(FaultyTrainer):
    """One of several identities of one owner, none of which trains: each hands back the global
    weights plus tiny noise of its own (so the copies are not byte-equal) and claims the samples."""

    fault = TrainerFault.SYBIL_LAZY

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The global weights with noise of scale :data:`SYBIL_NOISE`, seeded by our key."""
        seed = int.from_bytes(self.identity.address.encode()[-8:], "big") ^ wu.seed
        data = await trio.to_thread.run_sync(scaled_update, inputs.global_path.read_bytes(),
                                             inputs.global_path, 0.0, seed, SYBIL_NOISE)
        return TrainedUpdate(data, inputs.rows * wu.epochs, None, 0)


class CopySourceTrainer(FaultyTrainer):
    """Trains honestly, and also drops each update (plaintext) into the folder it shares with a
    copier (:data:`SHARE_DIR_ENV`). Its own work is honest and should be paid."""

    fault = TrainerFault.COPY_SOURCE

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The honest update, also written to ``<share>/<job>-r<round>.safetensors``."""
        trained = await super().make_update(wu, inputs, deadline_s)
        path = share_path(wu)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(trained.data)
        tmp.replace(path)
        return trained


class CopyTrainer(FaultyTrainer):
    """Never trains: waits for its colluder's update of the same round in the shared folder and
    hands in the very same bytes (on its own, different chunk), claiming its own samples. If the
    colluder's update does not come in time it hands back the global weights."""

    fault = TrainerFault.COPY

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The colluder's bytes for this round (polled until 5 s before the deadline)."""
        path = share_path(wu)
        give_up = trio.current_time() + max(0.0, deadline_s - 5.0)
        while not path.is_file() and trio.current_time() < give_up:
            await trio.sleep(0.2)
        data = path.read_bytes() if path.is_file() else inputs.global_path.read_bytes()
        return TrainedUpdate(data, inputs.rows * wu.epochs, None, 0)


class InflateSamplesTrainer(FaultyTrainer):
    """Trains honestly but reports :data:`INFLATED_SAMPLES` samples, to take over a
    sample-weighted average."""

    fault = TrainerFault.INFLATE_SAMPLES

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The honest update with a huge sample count."""
        trained = await super().make_update(wu, inputs, deadline_s)
        trained.num_samples = INFLATED_SAMPLES
        return trained


class ReverseTrainer(FaultyTrainer):
    """A poisoning step that stays inside the norm bounds: trains, then hands in
    ``global - 1.5 x delta`` (gradient ascent on its chunk)."""

    fault = TrainerFault.REVERSE

    async def make_update(self, wu: WorkUnit, inputs: UnitInputs, deadline_s: float) -> TrainedUpdate:
        """The honest delta, reversed and scaled by 1.5."""
        trained = await super().make_update(wu, inputs, deadline_s)
        trained.data = await trio.to_thread.run_sync(scaled_update, trained.data, inputs.global_path,
                                                     REVERSE_SCALE, wu.seed, 0.0)
        return trained


TRAINER_FAULTS: dict[TrainerFault, type[FaultyTrainer]] = {
    TrainerFault.POISON: PoisonTrainer,
    TrainerFault.LAZY: LazyTrainer,
    TrainerFault.SYBIL_LAZY: SybilLazyTrainer,
    TrainerFault.COPY: CopyTrainer,
    TrainerFault.COPY_SOURCE: CopySourceTrainer,
    TrainerFault.INFLATE_SAMPLES: InflateSamplesTrainer,
    TrainerFault.REVERSE: ReverseTrainer,
}


def faulty_trainer_class(fault: str) -> type[FaultyTrainer]:
    """The trainer double for ``fault`` (a :class:`TrainerFault` value); ValueError for anything else."""
    return TRAINER_FAULTS[TrainerFault(fault)]


def share_path(wu: WorkUnit) -> Path:
    """Where a copy source leaves its update of ``wu``'s round for its copier."""
    folder = os.environ.get(SHARE_DIR_ENV)
    if not folder:
        raise RuntimeError(f"{SHARE_DIR_ENV} must name the folder a copier and its source share")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder) / f"{wu.job_id}-r{wu.round}.safetensors"


def scaled_update(update: bytes, global_path: Path, scale: float, seed: int, noise: float) -> bytes:
    """``global + scale x (update - global) + N(0, noise)`` per float32 tensor (same layout)."""
    glob = load_weights_file(global_path)
    upd = load_weights_bytes(update)
    rng = np.random.default_rng(seed % (1 << 63))
    out: dict[str, np.ndarray] = {}
    for name, arr in upd.items():
        if arr.dtype != np.float32:
            out[name] = arr
            continue
        moved = glob[name] + scale * (arr - glob[name])
        if noise:
            moved = moved + rng.normal(scale=noise, size=arr.shape)
        out[name] = moved.astype(np.float32)
    return save_weights_bytes(out)


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
