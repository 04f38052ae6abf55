"""Local training slots: how many training processes this machine runs at once."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.statuses import JOB_ACTIVE
from app.training.models import TrainingJob


def local_slot_free(session: Session, settings: Settings, job: TrainingJob) -> bool:
    """Whether `job` may be handed to its backend now.

    Only the local backend is bounded (`worker.max_concurrent_local_jobs`). A slot is held by each
    active local job that has a process (a backend handle). Queued jobs take free slots oldest first,
    so a job does not overtake one queued before it, whether it is submitted by the create request
    or by the worker."""
    if job.backend != "local":
        return True
    rows = session.execute(select(TrainingJob.id, TrainingJob.created_at, TrainingJob.backend_handle)
                           .where(TrainingJob.backend == "local", TrainingJob.status.in_(JOB_ACTIVE),
                                  TrainingJob.id != job.id)).all()
    in_use = sum(1 for r in rows if r.backend_handle)
    queued_ahead = sum(1 for r in rows if not r.backend_handle and (r.created_at, r.id) < (job.created_at, job.id))
    return in_use + queued_ahead < settings.worker.max_concurrent_local_jobs
