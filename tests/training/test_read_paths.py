"""The polled read paths (app/training/reads.py), written without ORM objects or response models,
say what the response models say, page like the other lists, and keep a cached metric series whole
as points arrive."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter
from sqlalchemy import select

from app.auth.models import User
from app.errors import NotFound
from app.events import Event, EventRead
from app.reads import ReadDb
from app.training import reads
from app.training.models import JobMetric, TrainingJob
from app.training.schemas import MetricPoint, TrainingJobList, TrainingJobRead

run = asyncio.run
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _job(s: Any, user: User, name: str, **kw: Any) -> TrainingJob:
    job = TrainingJob(job_name=name, user_id=user.id, base_model="m", instance_type="local", backend="local",
                      status=kw.pop("status", "InProgress"), secondary_status="Training", **kw)
    s.add(job)
    s.flush()
    return job


def _user(s: Any, name: str) -> User:
    user = User(username=name, email=f"{name}@example.com", password_hash="x")
    s.add(user)
    s.flush()
    return user


def _me(s: Any, user: User) -> User:
    """The user as a request sees it: its row read again (the data version moves with every write)."""
    s.refresh(user)
    return user


def _page(db: ReadDb, user: User, limit: int, after: str | None, status: str | None) -> dict[str, Any]:
    """The job list's body, checked against its response model (datetimes parsed back)."""
    return TypeAdapter(TrainingJobList).validate_json(run(reads.job_page(db, user, limit, after, status))).model_dump()


def test_job_reads_equal_the_response_models(session_factory: Any) -> None:
    with session_factory() as s:
        user, other = _user(s, "reads"), _user(s, "other")
        _job(s, user, "running", created_at=T0, latest_metrics={"eval_loss": 2.0, "train_loss": 0.75},
                       hyperparameters={"epochs": 2}, progress={"step": 3})
        done = _job(s, user, "done", status="Failed", created_at=T0 + timedelta(hours=1), error_code="oom",
                    error_message="out of memory", final_metrics={"train_loss": 0.5},
                    latest_metrics={"train_loss": 0.6}, ended_at=T0 + timedelta(hours=2))
        _job(s, other, "running", created_at=T0)
        db = ReadDb(s.connection())

        page = _page(db, _me(s, user), 20, None, None)
        assert [j["job_name"] for j in page["data"]] == ["done", "running"]
        first, second = page["data"]
        assert first["training_metrics"] == [{"metric_name": "train_loss", "value": 0.5}]  # final ones win
        assert first["error"] == {"code": "oom", "message": "out of memory"}
        assert first["ended_at"] == T0 + timedelta(hours=2) and first["created_at"].tzinfo is not None
        assert {m["metric_name"]: m["value"] for m in second["training_metrics"]} == {"eval_loss": 2.0,
                                                                                      "train_loss": 0.75}
        assert second["progress"] == {"step": 3} and second["hyperparameters"]["epochs"] == 2
        # The ORM view of a job (create and stop answer with it) is the same body.
        s.refresh(done)
        one = TypeAdapter(TrainingJobRead)
        body = run(reads.job(db, _me(s, user), "done"))
        assert one.validate_python(reads.orm_job_body(done)) == one.validate_json(body)
        one.validate_json(run(reads.job(db, _me(s, user), "running")))
        with pytest.raises(NotFound):
            run(reads.job(db, _me(s, other), "done"))  # another user's job is not found

        # Pages of one, then the cursor; a status filter.
        one = _page(db, _me(s, user), 1, None, None)
        assert one["has_more"] and [j["job_name"] for j in one["data"]] == ["done"]
        rest = _page(db, _me(s, user), 1, one["next_cursor"], None)
        assert [j["job_name"] for j in rest["data"]] == ["running"] and not rest["has_more"]
        assert [j["job_name"] for j in _page(db, _me(s, user), 20, None, "Failed")["data"]] == ["done"]


def _points(s: Any, job: TrainingJob, *points: JobMetric) -> None:
    """Append points to a job as the worker does (app/training/reconcile.py: `_ingest`)."""
    for p in points:
        p.job_id = job.id
    s.add_all(points)
    s.flush()
    job.last_metric_id = max(p.id for p in points)
    s.flush()


def test_events_and_metric_points_equal_the_response_models(session_factory: Any) -> None:
    with session_factory() as s:
        user, other = _user(s, "points"), _user(s, "stranger")
        job = _job(s, user, "points-job")
        _job(s, user, "quiet-job")
        _points(s, job, JobMetric(metric_name="train_loss", step=10, epoch=0.5, value=1.25, timestamp=T0),
                JobMetric(metric_name="eval_loss", step=None, epoch=None, value=2.0, timestamp=T0))
        s.add_all([
            Event(user_id=user.id, resource_type="training_job", resource_id=job.id, type="status",
                  message="Pending -> Starting", data={"status": "Starting"}, timestamp=T0),
        ])
        s.flush()
        db = ReadDb(s.connection())

        def orm_points() -> bytes:
            orm = list(s.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id)))
            return TypeAdapter(list[MetricPoint]).dump_json(orm)

        assert orjson.loads(run(reads.job_metrics(db, _me(s, user), "points-job", None))) == orjson.loads(orm_points())
        evals = orjson.loads(run(reads.job_metrics(db, _me(s, user), "points-job", "eval_loss")))
        assert [p["metric_name"] for p in evals] == ["eval_loss"]
        # New points extend the cached series; nothing is lost or repeated.
        _points(s, job, JobMetric(metric_name="train_loss", step=20, epoch=1.0, value=0.75, timestamp=T0))
        assert orjson.loads(run(reads.job_metrics(db, _me(s, user), "points-job", None))) == orjson.loads(orm_points())
        assert run(reads.job_metrics(db, _me(s, user), "quiet-job", None)) == b"[]"

        events = TypeAdapter(list[EventRead]).validate_json(run(reads.job_events(db, _me(s, user), "points-job")))
        assert [(e.message, e.data) for e in events] == [("Pending -> Starting", {"status": "Starting"})]
        assert run(reads.job_events(db, _me(s, user), "quiet-job")) == b"[]"
        with pytest.raises(NotFound):
            run(reads.job_events(db, _me(s, other), "points-job"))
        with pytest.raises(NotFound):
            run(reads.job_metrics(db, _me(s, other), "points-job", None))
