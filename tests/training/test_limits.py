"""Fair use of shared capacity (settings.limits): per-user queue cap, job size and wall time, and
budget held by queued work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.backends import process
from app.backends.local import LocalTrainingBackend
from tests.conftest import assert_error
from tests.e2e.conftest import qa_jsonl

FAST = {"epochs": 1, "max_length": 64}


def create(client: Any, h: dict[str, str], ds: str, **hp: Any) -> Any:
    return client.post("/api/training-job", headers=h, json={"dataset_id": ds, "hyperparameters": {**FAST, **hp}})


def test_a_user_may_queue_only_so_many_jobs(client: Any, dataset: Any, settings: Any, register: Any) -> None:
    settings.limits.max_active_jobs_per_user = 2
    h, ds = dataset
    assert create(client, h, ds).status_code == 201
    assert create(client, h, ds).status_code == 201
    r = create(client, h, ds)
    err = assert_error(r, 429, "too_many_jobs")
    assert "2 training jobs" in err["message"] and r.headers["Retry-After"]
    other = register("bob")  # the cap is per user
    ds2 = client.post("/api/datasets", headers=other, files={"file": ("qa.jsonl", qa_jsonl())}).json()["id"]
    assert create(client, other, ds2).status_code == 201


def test_jobs_over_the_token_or_time_limit_are_refused(client: Any, dataset: Any, settings: Any) -> None:
    h, ds = dataset
    settings.limits.max_job_tokens = 10
    assert_error(create(client, h, ds), 422, "job_too_large", "hyperparameters")
    settings.limits.max_job_tokens = 10**9
    settings.limits.max_job_seconds = 60
    est = client.post("/api/cost-estimate", headers=h, json={"dataset_id": ds, "hyperparameters": FAST}).json()
    if est["estimated_seconds"] > 60:
        assert_error(create(client, h, ds), 422, "job_too_long", "hyperparameters")


def test_queued_jobs_hold_budget(client: Any, register: Any, settings: Any) -> None:
    settings.instance_prices = {"local": {"training": 360.0, "inference": 0.0}}  # a tenth of a dollar a second
    h = register("carol")
    ds = client.post("/api/datasets", headers=h, files={"file": ("qa.jsonl", qa_jsonl())}).json()["id"]
    price = client.post("/api/cost-estimate", headers=h, json={"dataset_id": ds, "hyperparameters": FAST}).json()
    each = price["estimated_cost"]
    assert each > 0
    from app.auth.models import User

    with client.app.state.sessionmaker() as s:
        user = s.query(User).filter_by(username="carol").one()
        user.monthly_budget = round(each * 2.5, 4)
        s.commit()
    assert create(client, h, ds).status_code == 201  # queued (no worker runs here): nothing spent yet
    assert create(client, h, ds).status_code == 201
    err = assert_error(create(client, h, ds), 429, "budget_exceeded")
    assert err["details"][0]["reserved"] == round(each * 2, 4)


def test_a_local_job_past_its_wall_time_is_stopped_and_failed(tmp_path: Path, settings: Any, store: Any) -> None:
    backend = LocalTrainingBackend(settings, store)
    handle = process.spawn(["-c", "import time; time.sleep(60)"], tmp_path / "job", {}, "train")
    handle.update(started=time.time() - 10, offset=0, output_key="unused", max_runtime=5)
    st = backend.describe(handle)
    assert st.status == "InProgress" and st.handle_update["timed_out"]
    handle.update(st.handle_update)
    deadline = time.monotonic() + 20
    while process.alive(handle) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = backend.describe(handle)
    assert st.status == "Failed" and st.failure_reason and st.failure_reason.startswith("max_runtime_exceeded")
