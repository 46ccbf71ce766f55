"""Phase 1, submission: validate a job before anything is spent, then prepare it.

``submit`` dry-runs the dataset (a few rows, the same checks as ingestion), the strategy and the
model (built on the meta device in a child process, so torch stays out of the node) and records
the job as ``submitted``. ``prepare`` splits the dataset into chunks, encrypts and uploads them
(:mod:`fedswarm.storage.sealed`), makes the seeded initial weights, opens the job's audit topic
and uploads the signed manifest: the job is then ``prepared``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from fedswarm import crypto
from fedswarm.learning.dataset import (
    ChunkFile,
    DatasetError,
    PreparedDataset,
    dry_run,
    prepare_dataset,
)
from fedswarm.learning.strategies import make_strategy
from fedswarm.roles.client.records import JobRecord, JobTerms
from fedswarm.roles.client.services import (
    ClientServices,
    JobFailed,
    SubmitError,
    in_thread,
    new_job_id,
)
from fedswarm.storage.manifest import ChunkEntry, DatasetSchema, Manifest, sign_manifest
from fedswarm.storage.sealed import JobObjects, seal

INITIAL_WEIGHTS = "global-0.safetensors"


class Submission:
    """Validates submissions and prepares jobs (dataset, initial weights, manifest)."""

    def __init__(self, svc: ClientServices) -> None:
        self.svc = svc

    async def submit(self, dataset_path: Path, model: dict[str, Any], terms: JobTerms,
                     name: str = "", initial_weights: Path | None = None) -> JobRecord:
        """Validate a job and return its new record (the caller saves and starts it). Nothing
        is spent; errors raise :class:`SubmitError` with a one-line reason and leave nothing."""
        job_id = new_job_id()
        workdir = self.svc.job_dir(job_id)
        num_features = await in_thread(validate_submission, dataset_path, terms)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            num_params = await check_model(model, num_features, terms.batch_size, initial_weights, workdir)
        except SubmitError:
            shutil.rmtree(workdir, ignore_errors=True)  # a refused submission leaves nothing behind
            raise
        if initial_weights is not None:
            (workdir / INITIAL_WEIGHTS).write_bytes(Path(initial_weights).read_bytes())
        job = JobRecord(job_id=job_id, terms=terms, model=model, dataset_path=str(dataset_path),
                        dataset_name=name or Path(dataset_path).name, num_params=num_params)
        self.svc.event(job, f"submitted: {terms.trainers} trainers, {terms.rounds} rounds, strategy {terms.strategy}")
        return job

    async def prepare(self, job: JobRecord) -> None:
        """Split, encrypt and upload the dataset; make the initial weights; open the audit topic."""
        svc = self.svc
        workdir = svc.job_dir(job.job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        secret = crypto.new_job_secret()
        svc.db.put_secret(job.job_id, secret)
        prepared = await in_thread(_prepare_dataset, job, workdir)
        job.preprocessing = prepared.preprocessing.model_dump(mode="json")
        job.validation_path = str(prepared.validation_path)
        job.train_rows = prepared.train_rows
        job.chunks = await in_thread(self._upload_chunks, job, secret, prepared.chunks)
        if not (workdir / INITIAL_WEIGHTS).exists():
            await write_initial_weights(job.model, job.terms.seed, workdir)
        job.audit_topic = await in_thread(svc.audit.create_topic, f"fedswarm job {job.job_id}")
        await in_thread(self._upload_manifest, job, prepared)
        job.state = "prepared"
        svc.event(job, f"prepared: {prepared.train_rows} training rows in {len(job.chunks)} encrypted chunks, "
                       f"{prepared.validation_rows} validation rows kept")
        svc.db.put_job(job)
        await svc.audit_entry(job, {"state": "prepared", "chunks": len(job.chunks)})

    def _upload_chunks(self, job: JobRecord, secret: bytes, chunks: list[ChunkFile]) -> list[dict[str, Any]]:
        out = []
        objects = JobObjects(job.job_id)
        for c in chunks:
            obj = objects.chunk(c.chunk_id)
            ref = seal(self.svc.store, obj, Path(c.path).read_bytes(), key=obj.derive_key(secret))
            out.append({"chunk_id": c.chunk_id, "key": ref.key, "sha256": ref.sha256,
                        "size": ref.size, "rows": c.rows, "path": str(c.path), "plain_size": c.size})
        return out

    def _upload_manifest(self, job: JobRecord, prepared: PreparedDataset) -> None:
        pre = prepared.preprocessing
        manifest = Manifest(
            job_id=job.job_id,
            chunks=[ChunkEntry(chunk_id=c["chunk_id"], object_key=c["key"], rows=c["rows"], plaintext_size=c["plain_size"],
                               ciphertext_size=c["size"], ciphertext_sha256=c["sha256"]) for c in job.chunks],
            data_schema=DatasetSchema(features=pre.features, label=pre.label, task=pre.task,
                                      num_classes=pre.num_classes),
            preprocessing=pre, train_rows=prepared.train_rows, validation_rows=prepared.validation_rows,
        )
        signed = sign_manifest(manifest, self.svc.identity.key_pair())
        self.svc.store.put(JobObjects(job.job_id).manifest_key, signed.to_json().encode())


def validate_submission(dataset: Path, terms: JobTerms) -> int:
    """Dry-run the dataset (a few rows, same checks as ingestion) and the strategy before
    anything is spent; returns the number of features."""
    if not Path(dataset).is_file():
        raise SubmitError(f"dataset {dataset} does not exist")
    try:
        dry = dry_run(dataset, terms.label, terms.features)
    except DatasetError as exc:
        raise SubmitError(str(exc)) from None
    try:
        make_strategy(terms.strategy, **terms.strategy_params)
    except (TypeError, ValueError) as exc:
        raise SubmitError(f"strategy: {exc}") from None
    return len(dry.features)


async def _model_tool(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``fedswarm.learning.modeltool`` in a child process (torch never loads in the node)."""
    return await trio.run_process([sys.executable, "-m", "fedswarm.learning.modeltool", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)


async def check_model(model: dict[str, Any], num_features: int, batch_size: int,
                      initial_weights: Path | None, workdir: Path) -> int:
    """Validate the model and dry-run it on the meta device (in a child process); returns
    its parameter count or raises :class:`SubmitError`."""
    spec_path = workdir / "model.json"
    spec_path.write_text(json.dumps(model))
    result = await _model_tool("check", str(spec_path), str(batch_size))
    try:
        report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SubmitError("the model could not be checked (its checker crashed)") from None
    if "error" in report:
        raise SubmitError(f"model rejected: {report['error']}")
    shape = report.get("input_shape") or []
    if len(shape) == 1 and shape[0] != num_features:
        raise SubmitError(f"model expects {shape[0]} input features, the dataset has {num_features}")
    if report.get("format") == "fedswarm-graph/1" and initial_weights is None:
        raise SubmitError("a fedswarm-graph/1 model needs its exported weights (weights.safetensors)")
    return int(report["params"])


def _prepare_dataset(job: JobRecord, workdir: Path) -> PreparedDataset:
    try:
        return prepare_dataset(job.dataset_path, workdir / "chunks", label=job.terms.label,
                               features=job.terms.features, num_chunks=job.terms.trainers,
                               validation_fraction=job.terms.validation_fraction, seed=job.terms.seed)
    except DatasetError as exc:
        raise JobFailed(str(exc)) from None


async def write_initial_weights(model: dict[str, Any], seed: int, workdir: Path) -> None:
    """Seeded initial weights, made in a child process (torch stays out of the node)."""
    spec = workdir / "model.json"
    spec.write_text(json.dumps(model))
    result = await _model_tool("init", str(spec), str(seed), str(workdir / INITIAL_WEIGHTS))
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise JobFailed(f"could not create the initial weights: {tail[0][:200]}")
