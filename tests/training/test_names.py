"""Job names are per user: nobody learns or takes another user's names; backends get unique ones."""

from __future__ import annotations

from typing import Any

from app.training.models import TrainingJob
from app.training.service import backend_job_name
from tests.conftest import assert_error
from tests.e2e.conftest import qa_jsonl


def test_two_users_may_use_one_name(client: Any, dataset: Any, register: Any) -> None:
    h, ds = dataset
    body = {"dataset_id": ds, "name": "my-job", "hyperparameters": {"max_length": 64}}
    assert client.post("/api/training-job", headers=h, json=body).status_code == 201
    assert_error(client.post("/api/training-job", headers=h, json=body), 409, "job_exists", "name")
    other = register("bob")
    ds2 = client.post("/api/datasets", headers=other, files={"file": ("qa.jsonl", qa_jsonl())}).json()["id"]
    r = client.post("/api/training-job", headers=other, json={**body, "dataset_id": ds2})
    assert r.status_code == 201, r.text  # alice's "my-job" is neither revealed nor in bob's way
    mine = client.get("/api/training-job/my-job", headers=h).json()
    theirs = client.get("/api/training-job/my-job", headers=other).json()
    assert mine["dataset_id"] == ds and theirs["dataset_id"] == ds2


def test_backend_names_are_unique_and_fit() -> None:
    a = TrainingJob(id="0123456789abcdef", job_name="x" * 63)
    b = TrainingJob(id="fedcba9876543210", job_name="x" * 63)
    assert backend_job_name(a) != backend_job_name(b)
    assert len(backend_job_name(a)) <= 63 and backend_job_name(a).endswith("-01234567")
