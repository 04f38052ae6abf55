"""Local training slots: how many training processes this machine runs at once, and which queued
job gets a free one.

Only the local backend is bounded (`worker.max_concurrent_local_jobs`); a slot is held by each
active local job that has a process (a backend handle). Free slots go to users in turn: the user
with the fewest running jobs first, among equals the one whose last job started longest ago, and
that user's oldest queued job - so one user's queue of many jobs cannot keep everyone else waiting.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.statuses import JOB_ACTIVE
from app.training.models import TrainingJob

_NEVER = datetime.min.replace(tzinfo=UTC)


def free_local_slots(session: Session, settings: Settings) -> int:
    rows = session.scalars(select(TrainingJob.backend_handle).where(
        TrainingJob.backend == "local", TrainingJob.status.in_(JOB_ACTIVE)))
    return settings.worker.max_concurrent_local_jobs - sum(1 for handle in rows if handle)


def fair_order(session: Session, queued: list[TrainingJob]) -> list[TrainingJob]:
    """`queued` (jobs without a process yet) in the order they should get slots."""
    users = {j.user_id for j in queued}
    running: Counter[str] = Counter(uid for uid, handle in session.execute(
        select(TrainingJob.user_id, TrainingJob.backend_handle).where(
            TrainingJob.user_id.in_(users), TrainingJob.status.in_(JOB_ACTIVE))) if handle)
    last_start = dict(session.execute(select(TrainingJob.user_id, func.max(TrainingJob.started_at)).where(
        TrainingJob.user_id.in_(users)).group_by(TrainingJob.user_id)).tuples().all())
    pending = sorted(queued, key=lambda j: (j.created_at, j.id))
    order: list[TrainingJob] = []
    while pending:
        job = min(pending, key=lambda j: (running[j.user_id], last_start.get(j.user_id) or _NEVER))
        pending.remove(job)
        order.append(job)
        running[job.user_id] += 1
        last_start[job.user_id] = datetime.max.replace(tzinfo=UTC)  # just "started": behind the others
    return order
