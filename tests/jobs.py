"""Test helpers shared by the suites that start from a finished training job (deployments, evaluation)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

from app.backends import process
from app.db import utcnow
from app.storage import model_key
from app.training.models import TrainingJob

TINY_ID = "llmtuner/tiny-llama"  # the built-in tiny base model


def insert_job(session_factory: Any, store: Any, uid: str, job_name: str, tar: Path | bytes,
               status: str = "Completed", data: dict[str, Any] | None = None) -> TrainingJob:
    """Put a model.tar.gz in the store and insert the job row train.py + the worker would leave."""
    key = model_key(uid, job_name, "output/model.tar.gz")
    if isinstance(tar, Path):
        store.put_file(key, tar)
    else:
        store.put_stream(key, io.BytesIO(tar))
    with session_factory() as s:
        job = TrainingJob(
            job_name=job_name, user_id=uid, base_model=TINY_ID, hyperparameters={}, instance_type="local",
            backend="local", backend_handle={}, status=status, secondary_status=status, data=data or {},
            started_at=utcnow(), ended_at=utcnow() if status == "Completed" else None,
            model_artifacts_uri=store.uri(key) if status == "Completed" else None,
        )
        s.add(job)
        s.commit()
        return job


def kill_process_group(handle: dict[str, Any]) -> None:
    """Kill a process a local backend started (a test's leftover), if it is still alive."""
    if handle.get("pid") and process.alive(handle):
        try:
            os.killpg(handle["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
