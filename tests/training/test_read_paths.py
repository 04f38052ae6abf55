"""The polled read paths written without ORM objects or response models say what the models would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter
from sqlalchemy import select

from app.auth.models import User
from app.config import Settings
from app.training.models import JobMetric, TrainingJob
from app.training.schemas import MetricPoint
from app.training.service import TrainingService, job_read, job_reads


def test_metric_points_json_equals_the_response_model(session_factory: Any, settings: Settings) -> None:
    with session_factory() as s:
        user = User(username="points", email="points@example.com", password_hash="x")
        s.add(user)
        s.flush()
        job = TrainingJob(job_name="points-job", user_id=user.id, base_model="m", instance_type="local",
                          backend="local", status="InProgress", secondary_status="Training")
        s.add(job)
        s.flush()
        s.add_all([
            JobMetric(job_id=job.id, metric_name="train_loss", step=10, epoch=0.5, value=1.25,
                      timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)),
            JobMetric(job_id=job.id, metric_name="eval_loss", step=None, epoch=None, value=2.0,
                      timestamp=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)),
            JobMetric(job_id=job.id, metric_name="train_loss", step=20, epoch=1.0, value=0.75,
                      timestamp=datetime(2026, 1, 2, 3, 4, 7, tzinfo=UTC)),
        ])
        s.flush()
        svc = TrainingService(s, settings, None, None, user)  # type: ignore[arg-type]
        orm = list(s.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id)))
        expected = TypeAdapter(list[MetricPoint]).dump_json(orm)
        assert orjson.loads(svc.metrics_json(job, None)) == orjson.loads(expected)
        assert [p["metric_name"] for p in orjson.loads(svc.metrics_json(job, "eval_loss"))] == ["eval_loss"]
        # A running job shows the last value of each metric; one with final metrics shows those.
        done = TrainingJob(job_name="points-done", user_id=user.id, base_model="m", instance_type="local",
                           backend="local", status="Completed", secondary_status="Completed",
                           final_metrics={"train_loss": 0.5})
        s.add(done)
        s.flush()
        reads = job_reads(s, [job, done])
        assert {m.metric_name: m.value for m in reads[0].training_metrics} == {"eval_loss": 2.0, "train_loss": 0.75}
        assert [m.metric_name for m in job_read(s, job).training_metrics] == ["eval_loss", "train_loss"]
        assert [(m.metric_name, m.value) for m in reads[1].training_metrics] == [("train_loss", 0.5)]
