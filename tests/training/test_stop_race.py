"""A stop and a submission racing for one queued job: one of them wins, nothing runs orphaned."""

from __future__ import annotations

from typing import Any

from app.backends.base import Backends
from app.training.models import TrainingJob
from app.training.service import submit


class RecordingTraining:
    """A training backend that records what it is asked (the race is in the database, not here)."""

    name = "local"

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.stopped: list[dict[str, Any]] = []

    def submit(self, spec: Any) -> dict[str, Any]:
        self.submitted.append(spec.job_name)
        return {"pid": 12345, "job": spec.job_name}

    def describe(self, handle: dict[str, Any]) -> Any:
        raise AssertionError("not followed here")

    def stop(self, handle: dict[str, Any]) -> None:
        self.stopped.append(handle)


def test_a_job_stopped_while_it_is_submitted_stays_stopped_and_its_process_is_stopped(
        client: Any, dataset: Any, session_factory: Any, settings: Any, store: Any) -> None:
    h, ds = dataset
    name = client.post("/api/training-job", headers=h, json={"dataset_id": ds}).json()["job_name"]
    training = RecordingTraining()
    backends = Backends(training=training, endpoints=None, name="local")  # type: ignore[arg-type]
    with session_factory() as worker_session:
        job = worker_session.query(TrainingJob).filter_by(job_name=name).one()  # the worker read it queued
        r = client.post(f"/api/training-job/{name}/stop", headers=h)  # meanwhile the user stops it
        assert r.status_code == 202 and r.json()["status"] == "Stopped"
        submit(worker_session, settings, store, backends, job)  # the worker's submission loses
    assert training.submitted and training.stopped == [{"pid": 12345, "job": training.submitted[0]}]
    got = client.get(f"/api/training-job/{name}", headers=h).json()
    assert got["status"] == "Stopped" and got["started_at"] is None
    events = client.get(f"/api/training-job/{name}/events", headers=h).json()
    assert not any(e["message"].startswith("Submitted to the") for e in events)
