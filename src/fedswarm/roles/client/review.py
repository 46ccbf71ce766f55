"""Phase 4b, review: check a round's delivered updates, then aggregate the accepted ones.

``check_units`` downloads each delivered update, checks it against the hash its trainer
committed on chain, decrypts it (:func:`fedswarm.storage.sealed.open_stored`) and runs the
round's checks (:func:`fedswarm.learning.checks.check_round`: layout, norms, validation loss,
and re-execution of a seeded sample of units with the trainer's exact inputs).
``aggregate_round`` feeds the accepted updates to the job's strategy (its server state restored
first, saved after), evaluates the new global weights on the held-out split and records the
round as ``checked``.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import numpy as np

from fedswarm.learning.checks import CheckConfig, RoundReport, check_round
from fedswarm.learning.weights import (
    Layout,
    flatten_state,
    load_weights_bytes,
    load_weights_file,
    save_weights_file,
    unflatten_state,
)
from fedswarm.learning.worker import EvalTask, TrainingWorker, TrainTask
from fedswarm.ledger.evm import job_id_from
from fedswarm.protocol.preprocessing import Preprocessing
from fedswarm.roles.client.records import JobRecord, RoundRecord, UnitRecord
from fedswarm.roles.client.services import ClientServices, in_thread
from fedswarm.roles.client.training import JobStrategies, max_update_bytes, reexec_task
from fedswarm.storage.sealed import JobObjects, open_stored


def global_path(job_dir: Path, r: int) -> Path:
    """The global weights trainers start round ``r`` from (``r = rounds``: the result)."""
    return job_dir / f"global-{r}.safetensors"


class Review:
    """Checks and aggregates rounds; keeps the update vectors a round's checks loaded."""

    def __init__(self, svc: ClientServices, strategies: JobStrategies) -> None:
        self.svc = svc
        self.strategies = strategies
        # Update vectors loaded (downloaded, hash-checked, decrypted) for a round's checks,
        # reused by aggregation; keyed by (job, round, unit), dropped once the round is aggregated.
        self._vectors: dict[tuple[str, int, int], np.ndarray] = {}

    async def check_units(self, job: JobRecord, r: int) -> RoundReport | None:
        """Check every delivered, unchecked unit of round ``r`` and record its verdict."""
        svc = self.svc
        gpath = global_path(svc.job_dir(job.job_id), r)
        pending = [u for u in svc.db.units(job.job_id, r) if u.state == "delivered"]
        if not pending:
            return None
        loaded = await in_thread(self._load_updates, job, r, pending)
        layout, gvec = await in_thread(load_flat, gpath)
        updates = {str(u.unit): vec for u, vec in loaded if vec is not None}
        for u, vec in loaded:
            if vec is not None:
                self._vectors[(job.job_id, r, u.unit)] = vec
            else:
                u.state, u.verdict = "checked", "rejected"
                svc.db.put_unit(u)
        if not updates:
            return None
        by_id = {str(u.unit): u for u, _ in loaded}
        if job.terms.mode == "noop":
            # Benchmark mode: trainers hand back the global weights on purpose, so the
            # unchanged-weights check would reject everyone. Hash, decryption and layout
            # were still checked when the update was loaded.
            for uid in updates:
                u = by_id[uid]
                u.state, u.verdict, u.reason = "checked", "accepted", "noop mode: loaded and verified"
                svc.db.put_unit(u)
            return None
        secret = svc.db.get_secret(job.job_id)
        worker = await svc.worker()
        strategy = self.strategies.get(job)
        workdir = svc.job_dir(job.job_id)

        def evaluate(params: np.ndarray) -> float:
            return evaluate_params(worker, job, layout, params, workdir)["loss"]

        def reexecute(unit_id: str) -> np.ndarray:
            return reexecute_unit(worker, reexec_task(job, strategy, gpath, by_id[unit_id]))

        train = job.terms.mode == "train"
        config = CheckConfig(reexec_fraction=job.terms.reexec_fraction if train else 0.0,
                             loss_rel_tolerance=job.terms.loss_tolerance, loss_abs_tolerance=0.01)
        report = await svc.locked(lambda: check_round(
            gvec, updates, round_index=r, secret=secret, config=config,
            evaluate=evaluate if train else None, reexecute=reexecute,
            num_samples={k: max(1, by_id[k].num_samples) for k in updates},
        ))
        for uid, unit_report in report.units.items():
            u = by_id[uid]
            verdict = unit_report.verdict
            u.state, u.verdict = "checked", "accepted" if verdict.accepted else "rejected"
            u.reason = verdict.reason[:300]
            svc.db.put_unit(u)
            if not verdict.accepted:
                svc.event(job, f"round {r}: unit {u.unit} from {u.trainer_peer[:16]}… rejected: {verdict.reason}")
                await svc.audit_entry(job, {"state": "rejected", "round": r, "unit": u.unit, "reason": verdict.reason})
        return report

    def _load_updates(self, job: JobRecord, r: int, units: list[UnitRecord]) -> list[tuple[UnitRecord, np.ndarray | None]]:
        """Download, check against the on-chain hash, decrypt and flatten each update."""
        svc = self.svc
        jid = job_id_from(job.job_id)
        objects = JobObjects(job.job_id)
        layout, _ = load_flat(global_path(svc.job_dir(job.job_id), r))
        out: list[tuple[UnitRecord, np.ndarray | None]] = []
        for u in units:
            try:
                onchain = svc.ledger.unit(jid, r, u.unit).update_hash.hex()
                plain = open_stored(svc.store, objects.update(r, u.unit), sha256=onchain,
                                    max_bytes=max_update_bytes(job.num_params), box_private=svc.identity.box_key)
                vec, _ = flatten_state(load_weights_bytes(plain, expected=layout))
                out.append((u, vec))
            except Exception as exc:
                u.reason = f"unusable update: {exc}"[:300]
                out.append((u, None))
        return out

    async def aggregate_round(self, job: JobRecord, r: int, rnd: RoundRecord) -> None:
        """Aggregate round ``r``'s accepted units into ``global-<r+1>``, evaluate it and record
        the round as checked."""
        svc = self.svc
        workdir = svc.job_dir(job.job_id)
        units = [u for u in svc.db.units(job.job_id, r) if u.verdict == "accepted"]
        vecs = await in_thread(self._load_accepted, job, units)
        layout, new = await in_thread(aggregate_step, self.strategies, job, r, workdir, vecs)
        worker = await svc.worker()
        metrics = await svc.locked(lambda: evaluate_params(worker, job, layout, new, workdir))
        all_units = svc.db.units(job.job_id, r)
        rnd.metrics = metrics
        rnd.accepted = sum(1 for u in all_units if u.verdict == "accepted")
        rnd.rejected = sum(1 for u in all_units if u.verdict == "rejected")
        rnd.state, rnd.finished = "checked", time.time()
        svc.db.put_round(rnd)
        svc.event(job, f"round {r}: {rnd.accepted} accepted, {rnd.rejected} rejected, "
                       f"val accuracy {metrics.get('accuracy', float('nan')):.4f}, loss {metrics.get('loss', float('nan')):.4f}")

    def _load_accepted(self, job: JobRecord, units: list[UnitRecord]) -> list[tuple[np.ndarray, int]]:
        """Accepted updates with their sample counts: the vectors the checks already loaded,
        or (after a client restart between check and aggregation) loaded again."""
        missing = [u for u in units if (job.job_id, u.round, u.unit) not in self._vectors]
        if missing:
            for u, vec in self._load_updates(job, missing[0].round, missing):
                if vec is not None:
                    self._vectors[(job.job_id, u.round, u.unit)] = vec
        out = [(self._vectors[(job.job_id, u.round, u.unit)], max(1, u.num_samples))
               for u in units if (job.job_id, u.round, u.unit) in self._vectors]
        for key in [k for k in self._vectors if k[0] == job.job_id]:
            del self._vectors[key]  # the round is aggregated: free the memory
        return out


def aggregate_step(strategies: JobStrategies, job: JobRecord, r: int, workdir: Path,
                   updates: list[tuple[np.ndarray, int]]) -> tuple[Layout, np.ndarray]:
    """``global-<r>`` + the strategy state saved with it + the accepted ``(vector, samples)``
    updates -> ``global-<r+1>`` and its strategy state, both written to ``workdir``. A pure
    function of those files and updates: rerun after a restart, it gives the same weights."""
    strategy = strategies.for_round(job, r)
    layout, gvec = load_flat(global_path(workdir, r))
    new = strategy.aggregate(gvec, [v for v, _ in updates], [n for _, n in updates]) if updates else gvec
    save_flat(global_path(workdir, r + 1), layout, new)
    strategies.saved(job, r + 1)
    return layout, new


def load_flat(path: Path) -> tuple[Layout, np.ndarray]:
    """A weights file as ``(layout, flat float32 vector)``."""
    vec, layout = flatten_state(load_weights_file(path))
    return layout, vec


def save_flat(path: Path, layout: Layout, vec: np.ndarray) -> None:
    """Write a flat vector as a weights file with ``layout``, atomically."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(3)}.safetensors")
    save_weights_file(tmp, unflatten_state(np.asarray(vec, dtype=np.float32), layout))
    tmp.replace(path)


def evaluate_params(worker: TrainingWorker, job: JobRecord, layout: Layout, params: np.ndarray,
                    workdir: Path) -> dict[str, float]:
    """Loss and metrics of ``params`` on the job's held-out validation split."""
    assert job.validation_path is not None
    tmp = workdir / f"eval-{secrets.token_hex(4)}.safetensors"
    save_flat(tmp, layout, params)
    try:
        return worker.evaluate(EvalTask(model=job.model, weights_path=str(tmp), chunk_paths=[job.validation_path],
                                        preprocessing=Preprocessing.model_validate(job.preprocessing)), 300)
    finally:
        tmp.unlink(missing_ok=True)


def reexecute_unit(worker: TrainingWorker, task: TrainTask) -> np.ndarray:
    """Train a unit ourselves with the trainer's exact inputs (seeded, deterministic on CPU)."""
    result = worker.train(task, 600)
    try:
        vec, _ = flatten_state(load_weights_file(result.update_path))
        return vec
    finally:
        Path(result.update_path).unlink(missing_ok=True)
