"""The one rule for local training slots, used by the create request and the worker alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.auth.models import User
from app.config import Settings
from app.db import utcnow
from app.statuses import JOB_ACTIVE, JOB_ENDED, JobStatus
from app.training.models import TrainingJob
from app.training.slots import local_slot_free


def _job(s: Any, uid: str, n: int, status: str = JobStatus.IN_PROGRESS, handle: bool = False,
         backend: str = "local") -> TrainingJob:
    job = TrainingJob(job_name=f"slot-job-{n}", user_id=uid, base_model="m", instance_type="local", backend=backend,
                      backend_handle={"pid": n} if handle else {}, status=status,
                      secondary_status="Training" if handle else JobStatus.PENDING,
                      created_at=utcnow() - timedelta(minutes=100 - n))
    s.add(job)
    s.flush()
    return job


def test_slots(session_factory: Any, settings: Settings) -> None:
    settings.worker.max_concurrent_local_jobs = 2
    with session_factory() as s:
        user = User(username="slots", email="slots@example.com", password_hash="x")
        s.add(user)
        s.flush()
        running = _job(s, user.id, 1, handle=True)
        _job(s, user.id, 2, status=JobStatus.COMPLETED, handle=True)  # ended: holds no slot
        older, newer = _job(s, user.id, 3), _job(s, user.id, 4)
        # One slot in use, one free: the oldest queued job takes it, the newer one may not overtake it.
        assert local_slot_free(s, settings, older)
        assert not local_slot_free(s, settings, newer)
        older.backend_handle = {"pid": 3}
        s.flush()
        assert not local_slot_free(s, settings, newer)  # both slots held now
        running.status = JobStatus.FAILED
        s.flush()
        assert local_slot_free(s, settings, newer)
        # A backend that is not this machine has no slots.
        settings.worker.max_concurrent_local_jobs = 0
        assert local_slot_free(s, settings, _job(s, user.id, 5, backend="sagemaker"))
        assert not local_slot_free(s, settings, _job(s, user.id, 6))


def test_status_groups_cover_every_status() -> None:
    assert set(JOB_ACTIVE) | set(JOB_ENDED) == set(JobStatus)
    assert not set(JOB_ACTIVE) & set(JOB_ENDED)
    assert JobStatus.IN_PROGRESS == "InProgress" and f"{JobStatus.STOPPED}" == "Stopped"
