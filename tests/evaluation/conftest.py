from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.backends import process
from app.backends.base import BackendJobStatus, Backends, TrainingSpec
from app.db import utcnow
from app.evaluation.models import Evaluation
from app.storage import model_key
from app.training.models import TrainingJob
from tests.evaluation.tiny_adapter import records

TINY_ID = "llmtuner/tiny-llama"


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeTrainingBackend:
    """Training-style jobs as dict entries; tests decide how each one ends."""

    def __init__(self, store: Any, name: str = "local") -> None:
        self.store, self.name = store, name
        self.specs: list[TrainingSpec] = []
        self.status: dict[int, BackendJobStatus] = {}

    def submit(self, spec: TrainingSpec) -> dict[str, Any]:
        self.specs.append(spec)
        n = len(self.specs)
        self.status[n] = BackendJobStatus("InProgress", "Training", ['{"event": "eval_progress", "done": 3, '
                                                                     '"total": 10, "model": "tuned"}'],
                                          billable_seconds=60)
        return {"n": n}

    def describe(self, handle: dict[str, Any]) -> BackendJobStatus:
        return self.status[handle["n"]]

    def stop(self, handle: dict[str, Any]) -> None:
        pass

    def complete(self, n: int, results: dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> None:
        spec = self.specs[n - 1]
        payload = files if files is not None else {"evaluation.json": json.dumps(results).encode()}
        self.store.put_stream(spec.output_key, io.BytesIO(tar_bytes(payload)))
        self.status[n] = BackendJobStatus("Completed", "Completed", billable_seconds=120,
                                          artifact_uri=self.store.uri(spec.output_key))

    def fail(self, n: int, reason: str) -> None:
        self.status[n] = BackendJobStatus("Failed", "Failed", billable_seconds=30, failure_reason=reason)


@pytest.fixture
def user_id(client: Any) -> Callable[[dict[str, str]], str]:
    return lambda headers: str(client.get("/api/auth/me", headers=headers).json()["id"])


@pytest.fixture
def job_with_data(session_factory: Any, store: Any) -> Callable[..., TrainingJob]:
    """A job row plus its model.tar.gz and validation split in the store."""

    def _make(uid: str, job_name: str, status: str = "Completed", tar: Path | bytes = b"not-a-real-model",
              validation: list[dict[str, Any]] | None = None, with_validation: bool = True) -> TrainingJob:
        key = model_key(uid, job_name, "output/model.tar.gz")
        if isinstance(tar, Path):
            store.put_file(key, tar)
        else:
            store.put_stream(key, io.BytesIO(tar))
        data: dict[str, Any] = {}
        if with_validation:
            vkey = model_key(uid, job_name, "input/validation/validation.jsonl")
            lines = "".join(json.dumps(r) + "\n" for r in (validation or records(6)))
            store.put_stream(vkey, io.BytesIO(lines.encode()))
            data["validation_key"] = vkey
        with session_factory() as s:
            job = TrainingJob(
                job_name=job_name, user_id=uid, base_model=TINY_ID, hyperparameters={}, instance_type="local",
                backend="local", backend_handle={}, status=status, secondary_status=status, data=data,
                started_at=utcnow(), ended_at=utcnow() if status == "Completed" else None,
                model_artifacts_uri=store.uri(key) if status == "Completed" else None,
            )
            s.add(job)
            s.commit()
            return job

    return _make


@pytest.fixture(autouse=True)
def stop_evaluation_processes(session_factory: Any) -> Iterator[None]:
    """Every evaluate.py a test started is killed before its rows are rolled back."""
    yield
    with session_factory() as s:
        for ev in s.scalars(select(Evaluation)):
            handle = (ev.backend_handle or {}).get("handle") or {}
            if handle.get("pid") and process.alive(handle):
                try:
                    os.killpg(handle["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass


def fake_backends(store: Any, name: str = "local") -> Backends:
    return Backends(training=FakeTrainingBackend(store, name), endpoints=None, name=name)  # type: ignore[arg-type]
