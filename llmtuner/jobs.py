"""client.jobs: create, get, list, metrics, events, actions, stop, wait, download, estimate."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from llmtuner._core import (
    Download,
    Op,
    ProgressFn,
    Request,
    Resource,
    Sleep,
    async_op,
    ident,
    new_idempotency_key,
    seg,
    sync_op,
)
from llmtuner.errors import JobFailedError, WaitTimeoutError
from llmtuner.types import (
    CostEstimate,
    Event,
    JobActions,
    MetricPoint,
    ModelDownload,
    TrainingConfig,
    TrainingJob,
)

ENDED = ("Completed", "Failed", "Stopped")


def hyperparameters_json(hp: TrainingConfig | dict[str, Any] | None) -> dict[str, Any]:
    """Only the fields set: the server fills in its defaults for the rest."""
    if hp is None:
        return {}
    if isinstance(hp, TrainingConfig):
        return hp.model_dump(exclude_none=True)
    return dict(hp)


def extract(tar_path: Path, dest: Path) -> Path:
    """Unpack model.tar.gz into `dest` (created; refuses members that would land outside it)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    return dest


class _JobOps(Resource):
    def _create(self, dataset: Any, base_model: str | None = None,
                hyperparameters: TrainingConfig | dict[str, Any] | None = None, *,
                instance_type: str | None = None, validation_split: float | None = None, name: str | None = None,
                idempotency_key: str | None = None) -> Op[TrainingJob]:
        """Start a fine-tuning job on a dataset (its id or the Dataset). Sent with an Idempotency-Key, so a
        retried request never starts a second job."""
        body: dict[str, Any] = {"dataset_id": ident(dataset, "id"), "base_model": base_model,
                                "hyperparameters": hyperparameters_json(hyperparameters),
                                "instance_type": instance_type, "validation_split": validation_split, "name": name}
        out = yield Request("POST", "/api/training-job", json={k: v for k, v in body.items() if v is not None},
                            idempotency_key=idempotency_key or new_idempotency_key())
        return TrainingJob.model_validate(out)

    def _estimate(self, dataset: Any, base_model: str | None = None,
                  hyperparameters: TrainingConfig | dict[str, Any] | None = None, *,
                  instance_type: str | None = None) -> Op[CostEstimate]:
        """Tokens, duration and cost of a job before starting it."""
        body = {"dataset_id": ident(dataset, "id"), "base_model": base_model, "instance_type": instance_type,
                "hyperparameters": hyperparameters_json(hyperparameters)}
        out = yield Request("POST", "/api/cost-estimate", json={k: v for k, v in body.items() if v is not None},
                            replayable=True)
        return CostEstimate.model_validate(out)

    def _get(self, job: Any) -> Op[TrainingJob]:
        """A job's status, progress, metrics summary, cost and error."""
        return TrainingJob.model_validate((yield Request("GET", f"/api/training-job/{seg(ident(job, 'job_name'))}")))

    def _metrics(self, job: Any, metric_name: str | None = None) -> Op[list[MetricPoint]]:
        """The metric time series (train_loss, eval_loss, learning_rate, ...), oldest first."""
        out = yield Request("GET", f"/api/training-job/{seg(ident(job, 'job_name'))}/metrics",
                            params={"metric_name": metric_name})
        return [MetricPoint.model_validate(p) for p in out]

    def _events(self, job: Any) -> Op[list[Event]]:
        """Status changes, epochs, checkpoints and errors, oldest first."""
        out = yield Request("GET", f"/api/training-job/{seg(ident(job, 'job_name'))}/events")
        return [Event.model_validate(e) for e in out]

    def _actions(self, job: Any) -> Op[JobActions]:
        """Which of download / deploy / evaluate / register / stop apply now."""
        out = yield Request("GET", f"/api/training-job-actions/{seg(ident(job, 'job_name'))}")
        return JobActions.model_validate(out)

    def _stop(self, job: Any) -> Op[TrainingJob]:
        """Stop a running job (Stopping, then Stopped); ConflictError when it already ended."""
        out = yield Request("POST", f"/api/training-job/{seg(ident(job, 'job_name'))}/stop", replayable=True)
        return TrainingJob.model_validate(out)

    def _wait(self, job: Any, *, poll_interval: float = 2.0, timeout: float | None = None,
              on_progress: Callable[[TrainingJob], None] | None = None,
              raise_on_failure: bool = True) -> Op[TrainingJob]:
        """Poll until the job ends; `on_progress(job)` after every poll. Raises JobFailedError when it
        failed (unless `raise_on_failure=False`) and WaitTimeoutError after `timeout` seconds."""
        name, deadline = ident(job, "job_name"), None if timeout is None else time.monotonic() + timeout
        while True:
            current = yield from self._get(name)
            if on_progress is not None:
                on_progress(current)
            if current.status in ENDED:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"Job {name} is still {current.status} after {timeout} s")
            yield Sleep(poll_interval)
        if current.status == "Failed" and raise_on_failure:
            raise JobFailedError(current)
        return current

    def _download_link(self, job: Any) -> Op[ModelDownload]:
        """A link to model.tar.gz that works without credentials for an hour."""
        out = yield Request("GET", f"/api/model-download/{seg(ident(job, 'job_name'))}")
        return ModelDownload.model_validate(out)

    def _download(self, job: Any, dest: str | os.PathLike[str] | None = None, *,
                  on_progress: ProgressFn | None = None, keep_archive: bool = False) -> Op[Path]:
        """Download the trained model and unpack it into `dest` (default: ./<job name>); returns the folder
        (the LoRA adapter, the tokenizer, training_summary.json, and base_model/ for a built-in base)."""
        link = yield from self._download_link(job)
        folder = Path(dest) if dest is not None else Path(link.job_name)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.tar.gz"
            yield Download(link.download_url, archive, on_progress)
            extract(archive, folder)
            if keep_archive:
                shutil.copy(archive, folder.parent / f"{folder.name}.tar.gz")
        return folder


class Jobs(_JobOps):
    create = sync_op(_JobOps._create)
    estimate = sync_op(_JobOps._estimate)
    get = sync_op(_JobOps._get)
    metrics = sync_op(_JobOps._metrics)
    events = sync_op(_JobOps._events)
    actions = sync_op(_JobOps._actions)
    stop = sync_op(_JobOps._stop)
    wait = sync_op(_JobOps._wait)
    download_link = sync_op(_JobOps._download_link)
    download = sync_op(_JobOps._download)

    def list(self, *, status: str | None = None, limit: int | None = None) -> Iterator[TrainingJob]:
        """The caller's jobs, newest first (`status` filters), fetched page by page as you iterate."""
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/training-jobs", {"status": status}, TrainingJob, limit)


class AsyncJobs(_JobOps):
    create = async_op(_JobOps._create)
    estimate = async_op(_JobOps._estimate)
    get = async_op(_JobOps._get)
    metrics = async_op(_JobOps._metrics)
    events = async_op(_JobOps._events)
    actions = async_op(_JobOps._actions)
    stop = async_op(_JobOps._stop)
    wait = async_op(_JobOps._wait)
    download_link = async_op(_JobOps._download_link)
    download = async_op(_JobOps._download)

    def list(self, *, status: str | None = None, limit: int | None = None) -> AsyncIterator[TrainingJob]:
        return self._client._paginate(  # type: ignore[no-any-return]
            "/api/training-jobs", {"status": status}, TrainingJob, limit)
