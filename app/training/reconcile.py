"""Worker pass for training jobs: submit queued jobs, follow running ones, record what happens."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import events, leases
from app.backends.base import BackendJobStatus
from app.db import utcnow
from app.errors import AppError
from app.runtime import WorkerContext
from app.statuses import JOB_ACTIVE, JOB_ENDED, JobStatus
from app.training import cost, logparse
from app.training.models import JobMetric, TrainingJob
from app.training.service import RESOURCE, note_submit_failure, submit
from app.training.slots import fair_order, free_local_slots
from app.usage import days

log = logging.getLogger("llmtuner.worker.training")


def reconcile(ctx: WorkerContext) -> None:
    """Follow the running jobs this worker holds leases on; as the scheduler, submit queued ones."""
    ttl = ctx.settings.worker.lease_seconds
    with ctx.sessionmaker() as session:
        jobs = list(session.scalars(select(TrainingJob).where(TrainingJob.status.in_(JOB_ACTIVE))
                                    .order_by(TrainingJob.created_at, TrainingJob.id)))
        session.commit()
        for job in jobs:
            if job.backend_handle and _claim(session, ctx, job):
                _guarded(session, ctx, job, follow)
        if leases.claim(session, *leases.SCHEDULER, ctx.owner, ttl):
            _schedule(session, ctx, [j for j in jobs if not j.backend_handle])
            leases.purge_expired(session)  # those of resources that ended or were deleted


def _claim(session: Session, ctx: WorkerContext, job: TrainingJob) -> bool:
    """The job's lease, and the job as it is now (another worker may have moved it meanwhile)."""
    if not leases.claim(session, RESOURCE, job.id, ctx.owner, ctx.settings.worker.lease_seconds):
        return False
    session.refresh(job)
    if job.status in JOB_ACTIVE:
        return True
    leases.release(session, RESOURCE, job.id, ctx.owner)
    return False


def _guarded(session: Session, ctx: WorkerContext, job: TrainingJob, step: Any) -> None:
    """One job's step; its trouble must not stop the others."""
    try:
        step(session, ctx, job)
    except leases.LeaseLost:
        session.rollback()
        log.warning("job %s: lease lost to another worker; its step was rolled back", job.job_name)
    except AppError as e:
        session.rollback()
        if not job.backend_handle and note_submit_failure(session, job, e):
            _end(session, job, JobStatus.FAILED, e.code, e.message)
            session.commit()
        elif job.backend_handle:
            log.warning("job %s: backend call failed: %s", job.job_name, e.message)
    except Exception:
        session.rollback()
        log.exception("job %s: reconcile failed", job.job_name)
    if job.status not in JOB_ACTIVE:
        leases.release(session, RESOURCE, job.id, ctx.owner)


def _schedule(session: Session, ctx: WorkerContext, queued: list[TrainingJob]) -> None:
    """Submit queued jobs: those of a remote backend at once, local ones into free slots in turn."""
    free = free_local_slots(session, ctx.settings)
    for job in fair_order(session, queued):
        if job.backend == "local" and free <= 0 and not job.stop_requested:
            continue
        if not _claim(session, ctx, job) or job.backend_handle:
            continue
        _guarded(session, ctx, job, _submit)
        free -= job.backend == "local" and bool(job.backend_handle)


def _submit(session: Session, ctx: WorkerContext, job: TrainingJob) -> None:
    if job.stop_requested:
        _end(session, job, JobStatus.STOPPED, None, None)
        session.commit()
        return
    submit(session, ctx.settings, ctx.store, ctx.backends, job,
           fence=lambda: leases.still_held(session, RESOURCE, job.id, ctx.owner, ctx.settings.worker.lease_seconds))


def follow(session: Session, ctx: WorkerContext, job: TrainingJob) -> None:
    handle = dict(job.backend_handle)
    if job.stop_requested:  # the API asked (and signalled the process): its end is "Stopped"
        handle["stopping"] = True
    st: BackendJobStatus = ctx.backends.training.describe(handle)
    job.backend_handle = {**handle, **st.handle_update}
    # Lines read after the process ended (the API was down meanwhile) happened before that end.
    ended_at = datetime.fromtimestamp(st.ended_at, UTC) if st.ended_at else None
    _ingest(session, job, st.log_lines, min(utcnow(), ended_at) if ended_at else utcnow())
    for tr in st.status_transitions:
        events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id,
                      type="secondary_status", message=f"{tr.get('Status')}: {tr.get('StatusMessage', '')}",
                      data={k: str(v) for k, v in tr.items()})
    if st.billable_seconds is not None:
        job.billable_seconds = int(st.billable_seconds)
    if st.secondary_status and st.secondary_status != job.secondary_status and st.status not in JOB_ENDED:
        events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id, type="status",
                      message=f"{job.secondary_status} -> {st.secondary_status}",
                      data={"secondary_status": st.secondary_status})
        job.secondary_status = st.secondary_status
    if st.status == JobStatus.STOPPING and job.status == JobStatus.IN_PROGRESS:
        job.status = JobStatus.STOPPING
    if st.status in JOB_ENDED:
        code, message = _split_reason(st.failure_reason) if st.status == JobStatus.FAILED else (None, None)
        if st.artifact_uri:
            job.model_artifacts_uri = st.artifact_uri
        _end(session, job, st.status, code, message, ended_at)
    leases.still_held(session, RESOURCE, job.id, ctx.owner, ctx.settings.worker.lease_seconds)
    session.commit()


def _split_reason(reason: str | None) -> tuple[str, str]:
    reason = (reason or "The training job failed without a reason").strip()
    head, sep, rest = reason.partition(":")
    if sep and head and head.replace("_", "").isalnum() and head.islower():
        return head, rest.strip()
    return "training_failed", reason


def _ingest(session: Session, job: TrainingJob, lines: list[str], read_at: datetime) -> None:
    progress = dict(job.progress or {})
    final = dict(job.final_metrics or {})
    latest = dict(job.latest_metrics or {})
    points: list[JobMetric] = []
    for line in lines:
        obj = logparse.parse(line)
        if obj is None:
            continue
        now = _when(obj, read_at)
        step, epoch = obj.get("step"), obj.get("epoch")
        for name, value in logparse.metrics_of(obj):
            points.append(JobMetric(job_id=job.id, metric_name=name, step=step if isinstance(step, int) else None,
                                    epoch=float(epoch) if isinstance(epoch, int | float) else None, value=value,
                                    timestamp=now))
            latest[name] = value
        if obj["event"] == "start":
            progress.update(total_steps=obj.get("total_steps"), epochs=obj.get("epochs"), step=0, epoch=0.0)
            job.data = {**job.data, "truncated_examples": obj.get("truncated_examples", 0)}
        if isinstance(step, int):
            progress["step"] = step
        if isinstance(epoch, int | float):
            progress["epoch"] = float(epoch)
        if obj["event"] in ("end", "final"):
            final.update({k: v for k, v in logparse.metrics_of({**obj, "event": "log"})})
        described = logparse.describe_event(obj)
        if described:
            typ, level, msg = described
            events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id,
                          type=typ, level=level, message=msg, data=obj).timestamp = now
    total = progress.get("total_steps")
    if total:
        progress["percent"] = round(100 * min(1.0, (progress.get("step") or 0) / total), 1)
    job.progress = progress
    job.final_metrics = final
    job.latest_metrics = latest
    if points:
        session.add_all(points)
        session.flush()  # (their ids)
        job.last_metric_id = max(p.id for p in points)


def _when(obj: dict[str, Any], read_at: datetime) -> datetime:
    """When a log line was written: its `time` (unix seconds) where the line has one, else when it
    was read, capped at the process's end."""
    t = obj.get("time")
    if isinstance(t, int | float) and 0 < t <= time.time() + 60:
        return datetime.fromtimestamp(t, UTC)
    return read_at


def _end(session: Session, job: TrainingJob, status: str, code: str | None, message: str | None,
         ended_at: datetime | None = None) -> None:
    previous = job.status
    job.status, job.secondary_status = status, status
    job.ended_at = ended_at or utcnow()
    job.error_code, job.error_message = code, message
    job.actual_cost = cost.actual(job.billable_seconds, job.price_per_hour)
    if status == JobStatus.COMPLETED and job.progress.get("total_steps"):
        job.progress = {**job.progress, "percent": 100.0}
    ev = events.record(session, user_id=job.user_id, resource_type=RESOURCE, resource_id=job.id, type="status",
                       level="error" if status == JobStatus.FAILED else "info",
                       message=f"{previous} -> {status}" + (f": {code}: {message}" if code else "")
                       + f"; cost ${job.actual_cost:.4f} for {job.billable_seconds} billable seconds",
                       data={"status": status, "error": {"code": code, "message": message} if code else None,
                             "actual_cost": job.actual_cost})
    ev.timestamp = job.ended_at
    days.refresh(session, job.user_id, job.created_at)
