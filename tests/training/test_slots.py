"""Local training slots (app/training/slots.py): how many are free, and who gets the next one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.auth.models import User
from app.config import Settings
from app.db import utcnow
from app.statuses import JobStatus
from app.training.models import TrainingJob
from app.training.slots import fair_order, free_local_slots


def _user(s: Any, name: str) -> User:
    user = User(username=name, email=f"{name}@example.com", password_hash="x")
    s.add(user)
    s.flush()
    return user


def _job(s: Any, uid: str, n: int, status: str = JobStatus.IN_PROGRESS, handle: bool = False,
         backend: str = "local", started_minutes_ago: int | None = None) -> TrainingJob:
    started = None if started_minutes_ago is None else utcnow() - timedelta(minutes=started_minutes_ago)
    job = TrainingJob(job_name=f"slot-job-{n}", user_id=uid, base_model="m", instance_type="local", backend=backend,
                      backend_handle={"pid": n} if handle else {}, status=status,
                      secondary_status="Training" if handle else JobStatus.PENDING,
                      created_at=utcnow() - timedelta(minutes=100 - n),
                      started_at=started)
    s.add(job)
    s.flush()
    return job


def test_free_slots_count_only_active_local_processes(session_factory: Any, settings: Settings) -> None:
    settings.worker.max_concurrent_local_jobs = 2
    with session_factory() as s:
        uid = _user(s, "slots").id
        running = _job(s, uid, 1, handle=True)
        _job(s, uid, 2, status=JobStatus.COMPLETED, handle=True)  # ended: holds no slot
        _job(s, uid, 3)  # queued: holds none yet
        _job(s, uid, 4, handle=True, backend="sagemaker")  # not this machine
        assert free_local_slots(s, settings) == 1
        running.status = JobStatus.FAILED
        s.flush()
        assert free_local_slots(s, settings) == 2


def test_one_users_queue_does_not_keep_others_waiting(session_factory: Any) -> None:
    with session_factory() as s:
        busy, other, third = _user(s, "busy"), _user(s, "other"), _user(s, "third")
        _job(s, busy.id, 1, status=JobStatus.COMPLETED, handle=True, started_minutes_ago=5)
        busy_queue = [_job(s, busy.id, n) for n in (2, 3, 4)]  # queued first, many
        other_job = _job(s, other.id, 5)  # queued after all of busy's
        third_job = _job(s, third.id, 6)
        order = fair_order(s, [*busy_queue, other_job, third_job])
        # Users who never ran go first (oldest first), then busy's jobs take turns with nobody.
        assert [j.job_name for j in order[:3]] == ["slot-job-5", "slot-job-6", "slot-job-2"]
        assert order[3:] == busy_queue[1:]


def test_a_user_with_a_running_job_goes_after_those_without(session_factory: Any) -> None:
    with session_factory() as s:
        a, b = _user(s, "runner"), _user(s, "waiter")
        _job(s, a.id, 1, handle=True, started_minutes_ago=1)
        a_next, b_next = _job(s, a.id, 2), _job(s, b.id, 3)
        assert fair_order(s, [a_next, b_next]) == [b_next, a_next]
