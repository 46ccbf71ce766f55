"""Phase 4b, review: check a round's delivered updates, then aggregate the accepted ones.

``check_units`` reads each delivered update (receipted and decrypted by :mod:`.exchange`) and,
once every
delivery of the round is in, reviews them together with
:func:`fedswarm.learning.review.review_round`: every update is judged against a unit the client
re-executes itself (the reference, picked only now), on samples of the trainers' own chunks and
of the validation split, against earlier rounds (replays) and against each other (copies), with
more re-executions for new, doubtful and copied trainers' units. A trainer that misreports its
sample count is rejected too (an honest one reports exactly rows x epochs). A rejection's
numbers go to the audit topic as canonical JSON whose keccak256 is the reason hash on chain
(:mod:`.review_state`). ``aggregate_round`` feeds the accepted updates to the job's strategy,
weighted by the rows the client assigned (never by what a trainer reports), evaluates the new
global weights on the held-out split and records the round as ``checked``.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedswarm.learning.checks import Verdict as CheckVerdict
from fedswarm.learning.checks import reason_hash
from fedswarm.learning.reference import aggregation_weight
from fedswarm.learning.review import ReviewReport, UnitInput, review_round
from fedswarm.learning.review_policy import ReexecPolicy, pick_reference_unit
from fedswarm.learning.weights import (
    Layout,
    flatten_state,
    load_weights_bytes,
    load_weights_file,
    save_weights_file,
    unflatten_state,
)
from fedswarm.learning.worker import EvalTask, TrainingWorker, TrainTask
from fedswarm.protocol.preprocessing import Preprocessing
from fedswarm.roles.client.records import JobRecord, JobTerms, RoundRecord, UnitRecord
from fedswarm.roles.client.review_state import (
    CostMeter,
    chunk_key,
    ensure_samples,
    evidence_json,
    load_state,
    save_state,
)
from fedswarm.roles.client.services import ClientServices, in_thread
from fedswarm.roles.client.training import (
    JobStrategies,
    max_update_bytes,
    reexec_task,
    update_files,
)

CLIENT_DEVICE = "cpu"  # the client re-executes on CPU (ClientServices.worker)
log = logging.getLogger("fedswarm.client")


def global_path(job_dir: Path, r: int) -> Path:
    """The global weights trainers start round ``r`` from (``r = rounds``: the result)."""
    return job_dir / f"global-{r}.safetensors"


def unit_weight(job: JobRecord, u: UnitRecord) -> int:
    """A unit's aggregation weight from the client's own records: the rows of the chunk it
    assigned x local epochs (what :func:`review_round` uses; never the trainer's figure)."""
    rows = int(job.chunks[u.slot % len(job.chunks)]["rows"])
    return aggregation_weight(rows, job.terms.local_epochs).weight


def review_policy(terms: JobTerms) -> ReexecPolicy:
    """The job's re-execution policy: ``reexec_fraction`` is the base probability that any unit
    (beyond the reference, new trainers' and doubtful units) is re-executed, and the per-round
    budget's fraction is raised to it when it is higher; the per-round cap on re-executions
    (the client's CPU) stays."""
    base = ReexecPolicy()
    return replace(base, base_probability=terms.reexec_fraction,
                   max_fraction=max(base.max_fraction, terms.reexec_fraction))


def has_dropout(model: dict[str, Any]) -> bool:
    """Whether a model spec has a Dropout layer (re-execution on another device then differs)."""
    layers = model.get("layers", [])
    return any(isinstance(x, dict) and str(x.get("type", "")).startswith("Dropout") for x in layers)


def trainer_device(job: JobRecord, peer: str) -> str:
    """The device a trainer bid with (``cpu`` when unknown)."""
    for bid in [*job.chosen, *job.standby]:
        if bid.get("peer_id") == peer:
            return str((bid.get("capabilities") or {}).get("device", "cpu"))
    return "cpu"


class Review:
    """Checks and aggregates rounds; keeps the update vectors a round's checks loaded."""

    def __init__(self, svc: ClientServices, strategies: JobStrategies) -> None:
        self.svc = svc
        self.strategies = strategies
        # Update vectors loaded (downloaded, hash-checked, decrypted) for a round's checks,
        # reused by aggregation; keyed by (job, round, unit), dropped once the round is aggregated.
        self._vectors: dict[tuple[str, int, int], np.ndarray] = {}
        # Re-executions done while the trainers were still working (see prepare_reference),
        # keyed by (job, round, unit id); used once by the review, dropped at aggregation.
        self._redone: dict[tuple[str, int, str], np.ndarray] = {}

    async def prepare_reference(self, job: JobRecord, r: int) -> str | None:
        """Re-execute, while the trainers work, the unit that will be round ``r``'s reference if
        every assigned unit is delivered; returns its id (None: nothing done).

        The review picks the reference among the delivered units by HMAC(secret, round, unit):
        the minimum draw. When every assigned unit arrives (the usual case) that is the unit
        with the minimum draw among the assigned ones, known as soon as they are assigned, and
        its re-execution needs only the client's own inputs (global weights, chunk, seed), not
        the trainer's delivery. Doing it now takes a whole training run off the round's path
        and changes no decision: the pick is still made by the review over what was delivered
        (a different pick is re-executed then), and no trainer can tell which unit it is.
        """
        svc = self.svc
        if job.terms.mode == "noop":
            return None
        units = [u for u in svc.db.units(job.job_id, r) if u.state in ("assigned", "accepted", "receipted",
                                                                         "delivered")]
        if not units:
            return None
        uid = pick_reference_unit([str(u.unit) for u in units], svc.db.get_secret(job.job_id), r)
        unit = next(u for u in units if str(u.unit) == uid)
        task = reexec_task(job, self.strategies.get(job), global_path(svc.job_dir(job.job_id), r), unit)
        worker = await svc.worker()
        try:
            self._redone[(job.job_id, r, uid)] = await svc.locked(lambda: reexecute_unit(worker, task))
        except Exception as exc:  # the review re-executes it itself then
            log.warning("job %s round %d: early re-execution of unit %s failed: %s", job.job_id, r, uid, exc)
            return None
        return uid

    async def check_units(self, job: JobRecord, r: int) -> ReviewReport | None:
        """Review every delivered, unchecked unit of round ``r`` (call it once all deliveries
        are in: the reference is picked among them) and record each verdict."""
        svc = self.svc
        pending = [u for u in svc.db.units(job.job_id, r) if u.state == "delivered"]
        if not pending:
            return None
        workdir = svc.job_dir(job.job_id)
        gpath = global_path(workdir, r)
        loaded = await in_thread(self._load_updates, job, r, pending)
        layout, gvec = await in_thread(load_flat, gpath)
        for u, vec in loaded:
            if vec is not None:
                self._vectors[(job.job_id, r, u.unit)] = vec
            else:
                await self._reject(job, u, u.reason or "unusable update", "load", {})
        by_id = {str(u.unit): (u, vec) for u, vec in loaded if vec is not None}
        if not by_id:
            return None
        if job.terms.mode == "noop":
            # Benchmark mode: trainers hand back the global weights on purpose, so every
            # statistic against a reference would reject them. Hash, decryption and layout
            # were still checked when the update was loaded.
            for u, _ in by_id.values():
                u.state, u.verdict, u.reason = "checked", "accepted", "noop mode: loaded and verified"
                svc.db.put_unit(u)
            return None
        secret = svc.db.get_secret(job.job_id)
        samples = await in_thread(ensure_samples, job, workdir, secret)
        state = await in_thread(load_state, workdir, secret)
        worker = await svc.worker()
        strategy = self.strategies.get(job)
        inputs = [self._unit_input(job, u, vec) for u, vec in by_id.values()]

        # One weights file per parameter vector, however many samples it is scored on (the
        # review scores the global model on every chunk's sample, each update on two).
        files: dict[int, tuple[np.ndarray, Path]] = {}

        def evaluate(params: np.ndarray, key: str) -> float:
            hit = files.get(id(params))
            if hit is None or hit[0] is not params:
                path = workdir / f"eval-{secrets.token_hex(4)}.safetensors"
                save_flat(path, layout, params)
                files[id(params)] = hit = (params, path)
            return evaluate_file(worker, job, hit[1], samples[key])["loss"]

        def reexecute(unit_id: str) -> np.ndarray:
            early = self._redone.pop((job.job_id, r, unit_id), None)  # same inputs, same result
            if early is not None:
                return early
            return reexecute_unit(worker, reexec_task(job, strategy, gpath, by_id[unit_id][0]))

        def run() -> tuple[ReviewReport, dict[str, float]]:
            meter = CostMeter(worker.pid).start()
            try:
                rep = review_round(gvec, inputs, round_index=r, secret=secret, evaluate=evaluate,
                                   reexecute=reexecute, history=state.history, records=state.records,
                                   dropout=has_dropout(job.model), reject_misreported=True,
                                   policy=review_policy(job.terms))
            finally:
                for _, path in files.values():
                    path.unlink(missing_ok=True)
            save_state(workdir, state)
            return rep, meter.stop().as_dict()

        report, cost = await svc.locked(run)
        for uid, unit_report in report.units.items():
            u = by_id[uid][0]
            verdict = unit_report.verdict
            if unit_report.accepted:
                u.state, u.verdict, u.reason = "checked", "accepted", verdict.reason[:300]
                svc.db.put_unit(u)
            else:
                numbers = report.evidence(uid)
                copy_of = report.copies.get(uid)
                if copy_of is not None and copy_of in by_id:
                    numbers["copy_of_trainer"] = by_id[copy_of][0].trainer_peer
                await self._reject(job, u, verdict.reason, verdict.check, numbers)
        await self._summarise(job, r, report, cost)
        return report

    def _unit_input(self, job: JobRecord, u: UnitRecord, vec: np.ndarray) -> UnitInput:
        chunk = job.chunks[u.slot % len(job.chunks)]
        return UnitInput(
            unit_id=str(u.unit), trainer=u.trainer_peer, chunk=chunk_key(str(chunk["chunk_id"])), params=vec,
            assigned_rows=int(chunk["rows"]), epochs=job.terms.local_epochs,
            # 0: the count was not reported (a commit learned from the chain after a restart).
            reported_samples=u.num_samples or None,
            cross_device=trainer_device(job, u.trainer_peer) != CLIENT_DEVICE)

    async def _reject(self, job: JobRecord, u: UnitRecord, reason: str, check: str,
                      numbers: dict[str, Any]) -> None:
        """Record a rejection whose reason is its canonical evidence JSON (the settlement hashes
        the reason: keccak256 of this JSON goes on chain) and publish it on the audit topic."""
        svc = self.svc
        evidence = evidence_json(job, u.round, u.unit, u.trainer_peer, reason, check, numbers)
        u.state, u.verdict, u.reason = "checked", "rejected", evidence
        svc.db.put_unit(u)
        digest = reason_hash(CheckVerdict(False, evidence, check)).hex()
        svc.event(job, f"round {u.round}: unit {u.unit} from {u.trainer_peer[:16]}… rejected: {reason[:200]}")
        await svc.audit_entry(job, {"state": "rejected", "round": u.round, "unit": u.unit,
                                    "trainer": u.trainer_peer, "reason_hash": "0x" + digest,
                                    "evidence": evidence})

    async def _summarise(self, job: JobRecord, r: int, report: ReviewReport, cost: dict[str, float]) -> None:
        """Add this review to the round's record (a round may be reviewed twice: once for its
        deliveries, once for the units redone after rejections) and to the audit topic."""
        svc = self.svc
        summary = {
            "reference": report.reference, "budget": report.budget, "reexecuted": report.reexecuted,
            "reexec_reasons": report.reexec_reasons, "reexec_skipped": report.reexec_skipped,
            "doubtful": report.doubtful, "copies": report.copies, "weight_flags": report.weight_flags,
            "evaluations": report.evaluations, "accepted": report.accepted, "rejected": report.rejected,
            **cost,
        }
        rnd = svc.db.get_round(job.job_id, r)
        if rnd is not None:
            rnd.review = [*rnd.review, summary]
            svc.db.put_round(rnd)
        await svc.audit_entry(job, {"state": "round_reviewed", "round": r, **summary})

    def _load_updates(self, job: JobRecord, r: int, units: list[UnitRecord]) -> list[tuple[UnitRecord, np.ndarray | None]]:
        """Read each update the exchange opened (hash-checked and receipted copy, decrypted with
        the trainer's key: :mod:`.exchange`) and flatten it."""
        svc = self.svc
        layout, _ = load_flat(global_path(svc.job_dir(job.job_id), r))
        out: list[tuple[UnitRecord, np.ndarray | None]] = []
        for u in units:
            try:
                _, plain_path = update_files(svc.job_dir(job.job_id), r, u.unit)
                if plain_path.stat().st_size > max_update_bytes(job.num_params):
                    raise ValueError("update is larger than the unit allows")
                plain = plain_path.read_bytes()
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
        assert job.validation_path is not None
        metrics = await svc.locked(lambda: evaluate_params(worker, job, layout, new, workdir, job.validation_path))
        all_units = svc.db.units(job.job_id, r)
        rnd = svc.db.get_round(job.job_id, r) or rnd  # the review may have added its summary
        rnd.metrics = metrics
        rnd.accepted = sum(1 for u in all_units if u.verdict == "accepted")
        rnd.rejected = sum(1 for u in all_units if u.verdict == "rejected")
        rnd.state, rnd.finished = "checked", time.time()
        svc.db.put_round(rnd)
        svc.event(job, f"round {r}: {rnd.accepted} accepted, {rnd.rejected} rejected, "
                       f"val accuracy {metrics.get('accuracy', float('nan')):.4f}, loss {metrics.get('loss', float('nan')):.4f}")

    def _load_accepted(self, job: JobRecord, units: list[UnitRecord]) -> list[tuple[np.ndarray, int]]:
        """Accepted updates with their weights from the client's records (the vectors the
        checks already loaded, or, after a restart between check and aggregation, loaded again)."""
        missing = [u for u in units if (job.job_id, u.round, u.unit) not in self._vectors]
        if missing:
            for u, vec in self._load_updates(job, missing[0].round, missing):
                if vec is not None:
                    self._vectors[(job.job_id, u.round, u.unit)] = vec
        out = [(self._vectors[(job.job_id, u.round, u.unit)], unit_weight(job, u))
               for u in units if (job.job_id, u.round, u.unit) in self._vectors]
        for key in [k for k in self._vectors if k[0] == job.job_id]:
            del self._vectors[key]  # the round is aggregated: free the memory
        for early in [k for k in self._redone if k[0] == job.job_id]:
            del self._redone[early]  # an early re-execution the review did not need
        return out


def aggregate_step(strategies: JobStrategies, job: JobRecord, r: int, workdir: Path,
                   updates: list[tuple[np.ndarray, int]]) -> tuple[Layout, np.ndarray]:
    """``global-<r>`` + the strategy state saved with it + the accepted ``(vector, weight)``
    updates (weights from the client's records) -> ``global-<r+1>`` and its strategy state, both
    written to ``workdir``. A pure function of those files and updates: rerun after a restart,
    it gives the same weights."""
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
                    workdir: Path, data_path: str) -> dict[str, float]:
    """Loss and metrics of ``params`` on the chunk file ``data_path`` (the held-out validation
    split, or one of the review's samples)."""
    tmp = workdir / f"eval-{secrets.token_hex(4)}.safetensors"
    save_flat(tmp, layout, params)
    try:
        return evaluate_file(worker, job, tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate_file(worker: TrainingWorker, job: JobRecord, weights: Path, data_path: str) -> dict[str, float]:
    """Loss and metrics of the weights file ``weights`` on the chunk file ``data_path``."""
    return worker.evaluate(EvalTask(model=job.model, weights_path=str(weights), chunk_paths=[data_path],
                                    preprocessing=Preprocessing.model_validate(job.preprocessing)), 300)


def reexecute_unit(worker: TrainingWorker, task: TrainTask) -> np.ndarray:
    """Train a unit ourselves with the trainer's exact inputs (seeded, deterministic on CPU)."""
    result = worker.train(task, 600)
    try:
        vec, _ = flatten_state(load_weights_file(result.update_path))
        return vec
    finally:
        Path(result.update_path).unlink(missing_ok=True)
