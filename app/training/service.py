"""Training jobs: create (validated, split, estimated, budget-checked, submitted), read, stop."""

from __future__ import annotations

import random
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import catalog, events, idempotency
from app.auth.models import User
from app.backends.base import Backends, TrainingSpec
from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.service import ready_dataset
from app.db import new_id, utcnow
from app.errors import AppError, Conflict, NotFound, ValidationFailed
from app.runtime import wake as wake_worker
from app.statuses import JOB_ACTIVE, JOB_ENDED, JobStatus
from app.storage import ObjectStore, model_key
from app.training import cost, naming
from app.training.models import TrainingJob
from app.training.reads import RESOURCE, not_found, orm_job_body
from app.training.schemas import CostEstimateRequest, Hyperparameters, TrainingJobCreate
from app.usage import days
from app.usage.service import check_budget


def iter_lines(stream: Any, chunk: int = 1 << 20) -> Iterator[bytes]:
    buf = b""
    while data := stream.read(chunk):
        buf += data
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


class TrainingService:
    def __init__(self, session: Session, settings: Settings, store: ObjectStore, backends: Backends,
                 user: User) -> None:
        self.session, self.settings, self.store, self.backends, self.user = session, settings, store, backends, user

    # Lookups --------------------------------------------------------------------------------
    def owned(self, job_name: str) -> TrainingJob:
        job = self.session.scalar(select(TrainingJob).where(TrainingJob.user_id == self.user.id,
                                                            TrainingJob.job_name == job_name))
        if job is None:
            raise not_found(job_name)
        return job

    def owned_dataset(self, dataset_id: str) -> Dataset:
        return ready_dataset(self.session, self.user.id, dataset_id)

    def _defaults(self, base_model: str | None, instance_type: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        local = self.settings.backend == "local"
        model = catalog.base_model(self.settings, base_model or ("llmtuner/tiny-llama" if local else "gpt2"))
        inst = catalog.instance_type(self.settings, instance_type or ("local" if local else "ml.g5.xlarge"),
                                     "training")
        return model, inst

    def _check(self, model: dict[str, Any], hp: Hyperparameters, inst: dict[str, Any] | None = None) -> None:
        gpus = int((inst or {}).get("gpus") or 0)
        if gpus > 1:  # refused here, at create, rather than when the worker submits it
            raise ValidationFailed(
                f"Instance type {(inst or {}).get('name')!r} has {gpus} GPUs, and training runs one process on one "
                "GPU: the other GPUs would be billed and left idle. Choose a one-GPU type (ml.g5.xlarge to "
                "ml.g5.4xlarge, ml.g4dn.xlarge, ml.p3.2xlarge).", code="multi_gpu_not_supported",
                param="instance_type")
        if hp.max_length > int(model["max_length"]):
            raise ValidationFailed(f"max_length {hp.max_length} exceeds {model['id']}'s limit of "
                                   f"{model['max_length']} tokens", param="hyperparameters.max_length")
        if hp.load_in_4bit and self.settings.backend == "local" and not shutil.which("nvidia-smi"):
            raise ValidationFailed("load_in_4bit (QLoRA) needs a CUDA GPU and this machine has none; set it "
                                   "to false or use the sagemaker backend", param="hyperparameters.load_in_4bit",
                                   code="qlora_requires_gpu")

    # Estimate -----------------------------------------------------------------------------
    def estimate(self, req: CostEstimateRequest | TrainingJobCreate) -> dict[str, Any]:
        ds = self.owned_dataset(req.dataset_id)
        model, inst = self._defaults(req.base_model, req.instance_type)
        self._check(model, req.hyperparameters, inst)
        price = float(inst["training"])
        return cost.estimate(ds.report, model, req.hyperparameters, inst, price, req.validation_split)

    # Create -------------------------------------------------------------------------------
    def create(self, req: TrainingJobCreate, idem_key: str | None) -> tuple[int, dict[str, Any]]:
        """Record the job (queued) and answer with it; the worker is the one that submits it."""
        route, body_hash = "POST /api/training-job", idempotency.body_hash(req.model_dump(mode="json"))
        if idem_key:  # concurrent retries wait here for the first one's answer (this runs in a thread)
            prior = idempotency.lookup(self.session, self.user.id, route, idem_key, body_hash, wait_seconds=30)
            if prior is not None:
                return prior.status_code, prior.response
        body = self._create(req)
        if idem_key:
            idempotency.remember(self.session, self.user.id, route, idem_key, body_hash, 201, body)
            self.session.commit()
        return 201, body

    def _create(self, req: TrainingJobCreate) -> dict[str, Any]:
        ds = self.owned_dataset(req.dataset_id)
        model, inst = self._defaults(req.base_model, req.instance_type)
        self._check(model, req.hyperparameters, inst)
        est = cost.estimate(ds.report, model, req.hyperparameters, inst, float(inst["training"]),
                            req.validation_split)
        self._check_limits(est)
        check_budget(self.session, self.user, est["estimated_cost"], reserved=self._reserved())
        for _ in range(5):  # a generated name another create took meanwhile: take the next
            job = self._insert(req, ds, model, inst, est)
            if job is not None:
                break
        else:
            raise Conflict("Could not find a free job name; try again in a second", code="job_exists")
        wake_worker()
        return orjson.loads(orjson.dumps(orm_job_body(job), option=orjson.OPT_UTC_Z))

    def _check_limits(self, est: dict[str, Any]) -> None:
        """Fair use of shared capacity (settings.limits): a job's size and a user's queue."""
        lim = self.settings.limits
        if est["estimated_tokens"] > lim.max_job_tokens:
            raise ValidationFailed(
                f"This job would train on about {est['estimated_tokens']:,} tokens, more than the limit of "
                f"{lim.max_job_tokens:,} per job; lower epochs or max_steps, or use a smaller dataset",
                param="hyperparameters", code="job_too_large", details=[{"estimated_tokens": est["estimated_tokens"],
                                                                          "max_job_tokens": lim.max_job_tokens}])
        if est["estimated_seconds"] > lim.max_job_seconds:
            raise ValidationFailed(
                f"This job is estimated to run {est['estimated_seconds']:,} s, longer than the limit of "
                f"{lim.max_job_seconds:,} s per job; lower epochs or max_steps, or choose a faster instance type",
                param="hyperparameters", code="job_too_long", details=[{
                    "estimated_seconds": est["estimated_seconds"], "max_job_seconds": lim.max_job_seconds}])
        active = self.session.scalar(select(func.count()).select_from(TrainingJob).where(
            TrainingJob.user_id == self.user.id, TrainingJob.status.in_(JOB_ACTIVE))) or 0
        if active >= lim.max_active_jobs_per_user:
            raise AppError(
                f"You have {active} training jobs queued or running, the most one user may have at once; "
                "wait for one to finish or stop one", status_code=429, code="too_many_jobs",
                details=[{"active_jobs": active, "max_active_jobs_per_user": lim.max_active_jobs_per_user}],
                headers={"Retry-After": "60"})

    def _reserved(self) -> float:
        """What the user's queued and running jobs are still expected to cost: budget they hold."""
        rows = self.session.execute(select(TrainingJob.estimated_cost, TrainingJob.billable_seconds,
                                           TrainingJob.price_per_hour).where(
            TrainingJob.user_id == self.user.id, TrainingJob.status.in_(JOB_ACTIVE))).all()
        return sum(max(0.0, est - cost.actual(secs or 0, price)) for est, secs, price in rows)

    def _insert(self, req: TrainingJobCreate, ds: Dataset, model: dict[str, Any], inst: dict[str, Any],
                est: dict[str, Any]) -> TrainingJob | None:
        """Split the data and insert the job; None when its generated name was taken meanwhile."""
        name = req.name or self._unique_name(model["id"])
        if req.name and self.session.scalar(select(TrainingJob.id).where(TrainingJob.user_id == self.user.id,
                                                                         TrainingJob.job_name == name)):
            raise Conflict(f"You already have a training job named {name!r}", param="name", code="job_exists")
        job = TrainingJob(
            id=new_id(), job_name=name, user_id=self.user.id, dataset_id=ds.id, base_model=model["id"],
            hyperparameters=req.hyperparameters.model_dump(), instance_type=inst["name"],
            validation_split=req.validation_split, backend=self.backends.name, status=JobStatus.IN_PROGRESS,
            secondary_status=JobStatus.PENDING, price_per_hour=float(inst["training"]),
            estimated_cost=est["estimated_cost"], data={"estimate": est}, created_at=utcnow(),
        )
        # The split is written before the row, with no transaction open (a SQLite write lock held
        # while copying a large dataset would stall every other writer), to keys of this job's id
        # (a concurrent create of the same name cannot overwrite them).
        self.session.commit()
        self._split(job, ds)
        self.session.add(job)
        events.record(self.session, user_id=self.user.id, resource_type=RESOURCE, resource_id=job.id,
                      type="created", message=f"Job created on the {job.backend} backend ({job.instance_type}); "
                      f"estimated cost ${job.estimated_cost:.2f}; queued", data={"estimate": est})
        try:
            self.session.commit()
        except IntegrityError as e:  # the same name was taken meanwhile
            self.session.rollback()
            self.store.delete_prefix(model_key(job.user_id, job.job_name, f"input/{job.id}") + "/")
            if req.name:
                raise Conflict(f"You already have a training job named {name!r}", param="name",
                               code="job_exists") from e
            return None
        return job

    def _unique_name(self, model_id: str) -> str:
        now = utcnow()
        for i in range(100):  # after the plain name, random suffixes: concurrent creates pick different ones
            name = naming.job_name(self.user.username, model_id, now, suffix=secrets.token_hex(2) if i else "")
            if not self.session.scalar(select(TrainingJob.id).where(TrainingJob.user_id == self.user.id,
                                                                    TrainingJob.job_name == name)):
                return name
        raise Conflict("Could not find a free job name; try again in a second", code="job_exists")

    def _split(self, job: TrainingJob, ds: Dataset) -> None:
        """Seeded, reproducible train/validation split of the canonical file (20% for validation by default)."""
        assert ds.canonical_key
        seed = int(job.hyperparameters.get("seed", 42))
        with self.store.open(ds.canonical_key) as f:
            n = sum(1 for line in iter_lines(f) if line.strip())
        k = round(n * job.validation_split)
        if job.validation_split > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        val_idx = set(random.Random(seed).sample(range(n), k))
        train_key = model_key(job.user_id, job.job_name, f"input/{job.id}/train/train.jsonl")
        val_key = model_key(job.user_id, job.job_name, f"input/{job.id}/validation/validation.jsonl") if k else None
        tmp = Path(tempfile.mkdtemp(prefix="split-"))
        try:
            with self.store.open(ds.canonical_key) as f, open(tmp / "t", "wb") as t, open(tmp / "v", "wb") as v:
                i = 0
                for line in iter_lines(f):
                    if line.strip():
                        (v if i in val_idx else t).write(line + b"\n")
                        i += 1
            self.store.put_file(train_key, tmp / "t")
            if val_key:
                self.store.put_file(val_key, tmp / "v")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        job.data = {**job.data, "train_key": train_key, "validation_key": val_key,
                    "train_examples": n - k, "validation_examples": k, "dataset_sha256": ds.sha256}

    # Stop ---------------------------------------------------------------------------------
    def stop(self, job_name: str) -> TrainingJob:
        job = self.owned(job_name)
        if job.status in JOB_ENDED:
            raise Conflict(f"Job {job_name!r} has already ended ({job.status})", code="job_not_running",
                           param="job_name")
        if job.status == JobStatus.STOPPING:
            return job
        previous, now = job.status, utcnow()
        # Conditional on what was read: the worker may submit the job at this very moment. A queued
        # job ends here; one the worker submitted meanwhile is stopped by the worker (its lease).
        queued = {"secondary_status": JobStatus.PENDING}
        stopped = _move(self.session, job, queued, status=JobStatus.STOPPED, secondary_status=JobStatus.STOPPED,
                        ended_at=now, actual_cost=0.0, stop_requested=True)
        if not stopped:
            if not _move(self.session, job, {"status": previous}, status=JobStatus.STOPPING,
                         secondary_status=JobStatus.STOPPING, stop_requested=True):
                self.session.rollback()
                return self.stop(job_name)  # it moved on meanwhile: decide again
        events.record(self.session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id,
                      type="status", message=f"{previous} -> {job.status} (stop requested)",
                      data={"status": job.status})
        if stopped:
            days.refresh(self.session, job.user_id, job.created_at)
        self.session.commit()
        if not stopped:
            self.session.refresh(job)
            if job.backend_handle:
                self.backends.training.stop(job.backend_handle)  # at once; the worker follows it to Stopped
        wake_worker()
        return job

    # Download -----------------------------------------------------------------------------
    def download(self, job_name: str, expires_in: int = 3600) -> dict[str, Any]:
        job = self.owned(job_name)
        if job.status != JobStatus.COMPLETED or not job.model_artifacts_uri:
            raise Conflict(f"Job {job_name!r} has no model to download yet (status {job.status})",
                           code="job_not_completed", param="job_name")
        key = self.store.key_from_uri(job.model_artifacts_uri)
        if key is None or not self.store.exists(key):
            raise NotFound(f"The model artifacts of {job_name!r} are no longer in storage",
                           code="artifact_missing")
        return {"download_url": self.store.signed_url(key, expires_in), "model_s3_uri": job.model_artifacts_uri,
                "job_name": job.job_name, "expires_in": expires_in}


def backend_job_name(job: TrainingJob) -> str:
    """The job's name on the backend, unique across users (SageMaker's names are per account, the
    local backend's folders per machine): the user's name, cut to fit, and 8 characters of its id."""
    return f"{job.job_name[:54].rstrip('-')}-{job.id[:8]}"


def _move(session: Session, job: TrainingJob, expected: dict[str, Any], **values: Any) -> bool:
    """Change the job's row only if it still has the `expected` values (one writer wins)."""
    cond = [getattr(TrainingJob, k) == v for k, v in expected.items()]
    res = session.execute(update(TrainingJob).where(TrainingJob.id == job.id, *cond).values(**values)
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for k, v in values.items():
        set_committed_value(job, k, v)
    return True


def submit(session: Session, settings: Settings, store: ObjectStore, backends: Backends, job: TrainingJob,
           fence: Callable[[], None] | None = None) -> None:
    """Hand a queued job to the backend and record its handle (the worker, holding the job's lease;
    `fence` raises before the commit when that lease was lost). The backends are idempotent by job
    name: a second submit of one job gets the first one's handle."""
    if not job.data.get("train_key") or not store.exists(job.data["train_key"]):
        raise NotFound("The job's training data is no longer in storage (was the dataset deleted?)",
                       code="dataset_missing")
    entry = catalog.base_model(settings, job.base_model)
    name = backend_job_name(job)
    spec = TrainingSpec(
        job_name=name, user_id=job.user_id, base_model=job.base_model,
        base_model_source=catalog.resolve_source(settings, entry),
        hyperparameters={**job.hyperparameters, "task": entry["task"]}, instance_type=job.instance_type,
        train_key=job.data["train_key"], validation_key=job.data.get("validation_key"),
        # Under the job's folder, in the backend name's: where SageMaker writes a job's output.
        output_key=model_key(job.user_id, job.job_name, f"{name}/output/model.tar.gz"),
        checkpoint_prefix=model_key(job.user_id, job.job_name, "checkpoints") + "/",
        max_runtime_seconds=min(settings.aws.max_runtime_seconds, settings.limits.max_job_seconds),
    )
    session.commit()  # no transaction open while the backend works
    handle = backends.training.submit(spec)
    if not _move(session, job, {"secondary_status": JobStatus.PENDING, "status": JobStatus.IN_PROGRESS},
                 backend_handle=handle, secondary_status="Starting", started_at=utcnow()):
        session.rollback()  # stopped while it was being submitted
        backends.training.stop(handle)
        return
    events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id, type="status",
                  message=f"Submitted to the {backends.name} backend: Pending -> Starting",
                  data={"secondary_status": "Starting"})
    if fence is not None:
        fence()
    session.commit()


MAX_SUBMIT_ATTEMPTS = 5


def note_submit_failure(session: Session, job: TrainingJob, e: AppError) -> bool:
    """Record a failed submission; True when the job should be given up (Failed)."""
    attempts = int(job.data.get("submit_attempts", 0)) + 1
    job.data = {**job.data, "submit_attempts": attempts}
    give_up = e.status_code < 500 or attempts >= MAX_SUBMIT_ATTEMPTS
    events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id, type="warning",
                  level="error" if give_up else "warning",
                  message=f"Submission to the backend failed ({e.code}: {e.message})"
                  + ("" if give_up else f"; retrying (attempt {attempts} of {MAX_SUBMIT_ATTEMPTS})"),
                  data={"code": e.code, "details": e.details})
    session.commit()
    return give_up
