"""Worker pass for evaluations: submit queued ones as training-style jobs of evaluate.py, follow
running ones, and read `evaluation.json` out of the output archive when they complete."""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import events, leases
from app.backends.base import BackendJobStatus, TrainingSpec
from app.db import utcnow
from app.errors import AppError
from app.evaluation.models import Evaluation
from app.evaluation.service import RESOURCE, base_source, evaluation_key
from app.runtime import WorkerContext
from app.statuses import EVALUATION_ACTIVE, EvaluationStatus, JobStatus
from app.storage import ObjectStore

log = logging.getLogger("llmtuner.worker.evaluation")

# Evaluations running at once on the local backend (they share this machine's CPU/GPU with training).
MAX_LOCAL_EVALUATIONS = 1
MAX_SUBMIT_ATTEMPTS = 3
RESULT_FILE = "evaluation.json"
MAX_RESULT_BYTES = 16 * 1024 * 1024


def reconcile(ctx: WorkerContext) -> None:
    with ctx.sessionmaker() as session:
        active = list(session.scalars(select(Evaluation).where(Evaluation.status.in_(EVALUATION_ACTIVE))
                                      .order_by(Evaluation.created_at)))
        session.commit()
        for ev in active:
            # One worker at a time follows an evaluation (app/leases.py): no double submit or event.
            if not leases.claim(session, RESOURCE, ev.id, ctx.owner, ctx.settings.worker.lease_seconds):
                continue
            session.refresh(ev)
            if ev.status not in EVALUATION_ACTIVE:
                continue
            try:
                if ev.status == EvaluationStatus.IN_PROGRESS:
                    follow(session, ctx, ev)
                else:
                    _maybe_submit(session, ctx, ev, active)
            except Exception as e:  # noqa: BLE001 - one evaluation's trouble must not stop the others
                session.rollback()
                log.exception("evaluation %s: reconcile failed", ev.id)
                if ev.status == EvaluationStatus.IN_PROGRESS and isinstance(e, AppError):
                    _end(session, ev, EvaluationStatus.FAILED, e.code, e.message)
                    session.commit()


def _maybe_submit(session: Session, ctx: WorkerContext, ev: Evaluation, active: list[Evaluation]) -> None:
    running = sum(1 for e in active if e.status == EvaluationStatus.IN_PROGRESS)
    if ctx.backends.name == "local" and running >= MAX_LOCAL_EVALUATIONS:
        return
    try:
        submit(ctx, ev)
    except AppError as e:
        _end(session, ev, EvaluationStatus.FAILED, e.code, e.message)
        session.commit()
        return
    except Exception as e:  # a transient backend problem: retry on the next passes, then give up
        attempts = int(ev.backend_handle.get("submit_attempts", 0)) + 1
        ev.backend_handle = {**ev.backend_handle, "submit_attempts": attempts}
        if attempts >= MAX_SUBMIT_ATTEMPTS:
            _end(session, ev, EvaluationStatus.FAILED, "backend_error",
                 f"The compute backend refused the evaluation job: {e}")
        session.commit()
        log.warning("evaluation %s: submit failed (attempt %d): %s", ev.id, attempts, e)
        return
    ev.status, ev.started_at = EvaluationStatus.IN_PROGRESS, utcnow()
    events.record(session, user_id=ev.user_id, resource_type=RESOURCE, resource_id=ev.id, type="status",
                  message=f"Submitted to the {ctx.backends.name} backend as {ev.backend_handle['job_name']}: "
                  "Pending -> InProgress", data={"status": EvaluationStatus.IN_PROGRESS})
    session.commit()


def submit(ctx: WorkerContext, ev: Evaluation) -> None:
    """Hand the evaluation to the training backend as a job running evaluate.py."""
    req = ev.request
    # The same name on every try: a resubmission after a crash finds the first job (idempotent by name).
    job_name = f"eval-{ev.id[:8]}-{ev.created_at:%Y%m%d-%H%M%S}"
    source = base_source(ctx.settings, req["base_model"])
    channels = {"model": req["model_key"]}
    base_key = ctx.store.key_from_uri(source) if source.startswith("s3://") else None
    if base_key:  # an s3:// base reaches the script as a channel, like train.py's
        channels["base"] = base_key.rstrip("/") + "/"
    hps = {
        "metrics": req["metrics"], "compare_with_base": req["compare_with_base"],
        "max_examples": req["max_examples"], "generation": req["generation"],
        "include_general_probe": req["include_general_probe"],
        "seed": req["generation"].get("seed") if req["generation"].get("seed") is not None else 42,
        "base_model": source,
    }
    spec = TrainingSpec(
        job_name=job_name, user_id=ev.user_id, base_model=req["base_model"], base_model_source=source,
        hyperparameters=hps, instance_type=req["instance_type"], train_key=req["data_key"], validation_key=None,
        # SageMaker writes a job's output to {S3OutputPath}/{job name}/output/model.tar.gz.
        output_key=evaluation_key(ev.user_id, ev.id, f"{job_name}/output/model.tar.gz"),
        checkpoint_prefix=evaluation_key(ev.user_id, ev.id, "checkpoints") + "/",
        max_runtime_seconds=ctx.settings.aws.max_runtime_seconds, entry_point="evaluate.py",
        extra_channels=channels,
    )
    handle = ctx.backends.training.submit(spec)
    ev.backend_handle = {"handle": handle, "job_name": job_name, "output_key": spec.output_key,
                         "billable_seconds": 0}


def follow(session: Session, ctx: WorkerContext, ev: Evaluation) -> None:
    state = dict(ev.backend_handle)
    st: BackendJobStatus = ctx.backends.training.describe(state["handle"])
    state["handle"] = {**state["handle"], **st.handle_update}
    progress = _progress(st.log_lines)
    if progress:
        state["progress"] = progress
    if st.billable_seconds is not None:
        state["billable_seconds"] = int(st.billable_seconds)
    ev.backend_handle = state
    if st.status == JobStatus.COMPLETED:
        ev.results = public_results(_read_results(ctx.store, st.artifact_uri, state["output_key"]),
                                    str(ev.request.get("base_model") or ""))
        _end(session, ev, EvaluationStatus.COMPLETED, None, None)
    elif st.status == JobStatus.FAILED:
        code, message = _split_reason(st.failure_reason)
        _end(session, ev, EvaluationStatus.FAILED, code, message)
    elif st.status == JobStatus.STOPPED:
        _end(session, ev, EvaluationStatus.FAILED, "evaluation_stopped",
             "The evaluation job was stopped before it finished")
    session.commit()


def _progress(lines: list[str]) -> dict[str, Any] | None:
    latest = None
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("event") == "eval_progress":
            latest = {k: obj.get(k) for k in ("done", "total", "phase", "model")}
    return latest


def _read_results(store: ObjectStore, artifact_uri: str | None, output_key: str) -> dict[str, Any]:
    key = (store.key_from_uri(artifact_uri) if artifact_uri else None) or output_key
    with tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
        archive = store.download_to(key, Path(tmp) / "model.tar.gz")
        try:
            with tarfile.open(archive, "r:*") as tar:
                member = next((m for m in tar.getmembers()
                               if m.isfile() and m.name.lstrip("./") == RESULT_FILE), None)
                if member is None or member.size > MAX_RESULT_BYTES:
                    raise AppError(f"The evaluation job finished without a usable {RESULT_FILE}",
                                   code="evaluation_output_missing")
                f = tar.extractfile(member)
                assert f is not None
                data = json.loads(f.read())
        except (tarfile.TarError, ValueError) as e:
            raise AppError(f"The evaluation output could not be read: {e}", code="evaluation_output_invalid") from e
    if not isinstance(data, dict) or not isinstance(data.get("tuned"), dict):
        raise AppError(f"{RESULT_FILE} has no per-model results", code="evaluation_output_invalid")
    return data


PATH_KEYS = ("model_dir", "adapter_dir", "source", "path")


def public_results(obj: Any, base_model: str) -> Any:
    """The report without this server's paths: the base model by the id the user gave, folders
    dropped, any other absolute path cut to its last part."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in PATH_KEYS and isinstance(v, str):
                continue
            out[k] = base_model if k == "base_model" and isinstance(v, str) and base_model else \
                public_results(v, base_model)
        return out
    if isinstance(obj, list):
        return [public_results(v, base_model) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and not any(c.isspace() for c in obj):
        return Path(obj).name
    return obj


def _split_reason(reason: str | None) -> tuple[str, str]:
    reason = (reason or "The evaluation job failed without a reason").strip()
    head, sep, rest = reason.partition(":")
    if sep and head and head.replace("_", "").isalnum() and head.islower():
        return head, rest.strip()
    return "evaluation_failed", reason


def _end(session: Session, ev: Evaluation, status: str, code: str | None, message: str | None) -> None:
    previous = ev.status
    ev.status, ev.ended_at = status, utcnow()
    ev.error_code, ev.error_message = code, message
    summary = ""
    if status == EvaluationStatus.COMPLETED:
        tuned = (ev.results or {}).get("tuned") or {}
        summary = "; " + ", ".join(f"{k}={v:.4g}" for k, v in tuned.items() if isinstance(v, int | float))
    events.record(session, user_id=ev.user_id, resource_type=RESOURCE, resource_id=ev.id, type="status",
                  level="error" if status == EvaluationStatus.FAILED else "info",
                  message=f"{previous} -> {status}" + (f": {code}: {message}" if code else summary),
                  data={"status": status, "error": {"code": code, "message": message} if code else None})
