from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.db import utcnow
from app.training.models import TrainingJob


@pytest.fixture
def job_row(session_factory: Any) -> Callable[..., TrainingJob]:
    """Insert the row a finished training job leaves (no weights needed by the registry)."""

    def _make(uid: str, job_name: str, status: str = "Completed") -> TrainingJob:
        with session_factory() as s:
            job = TrainingJob(
                job_name=job_name, user_id=uid, base_model="llmtuner/tiny-llama", hyperparameters={},
                instance_type="local", backend="local", backend_handle={}, status=status, secondary_status=status,
                model_artifacts_uri=f"local://users/{uid}/models/{job_name}/output/model.tar.gz"
                if status == "Completed" else None, ended_at=utcnow() if status != "InProgress" else None,
            )
            s.add(job)
            s.commit()
            return job

    return _make
