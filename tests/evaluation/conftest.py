from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.backends.base import BackendJobStatus, Backends, TrainingSpec
from app.evaluation.models import Evaluation
from app.storage import model_key
from app.training.models import TrainingJob
from tests.evaluation.tiny_adapter import records
from tests.jobs import insert_job, kill_process_group


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
def job_with_data(session_factory: Any, store: Any) -> Callable[..., TrainingJob]:
    """A job row plus its model.tar.gz and validation split in the store."""

    def _make(uid: str, job_name: str, status: str = "Completed", tar: Path | bytes = b"not-a-real-model",
              validation: list[dict[str, Any]] | None = None, with_validation: bool = True) -> TrainingJob:
        data: dict[str, Any] = {}
        if with_validation:
            vkey = model_key(uid, job_name, "input/validation/validation.jsonl")
            lines = "".join(json.dumps(r) + "\n" for r in (validation or records(6)))
            store.put_stream(vkey, io.BytesIO(lines.encode()))
            data["validation_key"] = vkey
        return insert_job(session_factory, store, uid, job_name, tar, status, data)

    return _make


@pytest.fixture(autouse=True)
def stop_evaluation_processes(session_factory: Any) -> Iterator[None]:
    """Every evaluate.py a test started is killed before its rows are rolled back."""
    yield
    with session_factory() as s:
        for ev in s.scalars(select(Evaluation)):
            handle = (ev.backend_handle or {}).get("handle") or {}
            kill_process_group(handle)


def fake_backends(store: Any, name: str = "local") -> Backends:
    return Backends(training=FakeTrainingBackend(store, name), endpoints=None, name=name)  # type: ignore[arg-type]
