"""train.py's lines with NaN or Infinity (a diverging loss) are stored as null: PostgreSQL's json type
refuses those tokens, and one such line would fail every worker pass over the job."""

from __future__ import annotations

from typing import Any

from app.auth.models import User
from app.db import utcnow
from app.training import logparse
from app.training.models import JobMetric, TrainingJob
from app.training.reconcile import _ingest

LINES = ['{"event": "log", "step": 3, "train_loss": NaN, "grad_norm": Infinity, "learning_rate": 0.001}',
         '{"event": "warning", "message": "loss diverged", "value": -Infinity}']


def test_non_finite_numbers_parse_as_null() -> None:
    obj = logparse.parse(LINES[0])
    assert obj is not None and obj["train_loss"] is None and obj["grad_norm"] is None
    assert logparse.metrics_of(obj) == [("learning_rate", 0.001)]


def test_a_job_with_non_finite_numbers_is_stored(session_factory: Any) -> None:
    with session_factory() as s:
        user = User(username="diverged", email="diverged@example.com", password_hash="x")
        s.add(user)
        s.flush()
        job = TrainingJob(job_name="diverged", user_id=user.id, base_model="m", instance_type="local",
                          backend="local", status="InProgress", secondary_status="Training")
        s.add(job)
        s.flush()
        _ingest(s, job, LINES, utcnow())
        s.flush()  # PostgreSQL checks the JSON here
        (point,) = s.query(JobMetric).filter_by(job_id=job.id)
        assert (point.metric_name, point.value) == ("learning_rate", 0.001)
        assert job.progress["step"] == 3 and job.latest_metrics == {"learning_rate": 0.001}
        assert job.last_metric_id == point.id  # what the metrics read checks its cached series against
