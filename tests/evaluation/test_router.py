"""The evaluation API and its worker pass, on a fake training backend (no model runs here)."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from app.auth.models import User
from app.datasets.models import Dataset
from app.storage import dataset_key
from app.training.models import TrainingJob
from app.usage import days
from app.worker import Worker
from tests.conftest import assert_error
from tests.evaluation.conftest import fake_backends

RESULTS = {
    "tuned": {"perplexity": 5.0, "bleu": 40.0}, "base": {"perplexity": 50.0, "bleu": 1.0},
    "improvement": {"perplexity": 45.0, "bleu": 39.0},
    "general_capability": {"tuned": {"passed": 1, "total": 2, "score": 0.5},
                           "base": {"passed": 2, "total": 2, "score": 1.0}, "forgetting": True},
    "samples": [{"prompt": "q", "reference": "a", "base_output": "x", "tuned_output": "a"}],
}


@pytest.fixture
def backends(store):
    return fake_backends(store)


@pytest.fixture
def alice(register, user_id, job_with_data):
    headers = register("alice")
    uid = user_id(headers)
    job_with_data(uid, "llm-tune-alice-tiny-1")
    return headers, uid


@pytest.fixture
def tick(session_factory, store, backends, settings):
    worker = Worker(session_factory, store, backends, settings)
    return worker.tick


def start(client, headers, **body):
    return client.post("/api/evaluations", headers=headers, json={"model": "llm-tune-alice-tiny-1", **body})


class TestCreate:
    def test_202_pending_with_defaults(self, client, alice):
        headers, _ = alice
        r = start(client, headers)
        assert r.status_code == 202, r.text
        ev = r.json()
        assert ev["status"] == "Pending" and ev["model"] == "llm-tune-alice-tiny-1"
        assert ev["job_name"] == "llm-tune-alice-tiny-1" and ev["dataset"] == "validation_split"
        assert ev["metrics"] == ["perplexity", "bleu", "rouge_l", "exact_match", "json_valid_rate",
                                 "mean_generated_length"]
        assert ev["compare_with_base"] is True and ev["max_examples"] == 50
        assert ev["generation"]["max_new_tokens"] == 64 and ev["generation"]["temperature"] == 0
        assert ev["results"] is None and ev["error"] is None
        assert client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()["id"] == ev["id"]

    def test_by_registered_model_id_and_name(self, client, alice):
        headers, _ = alice
        m = client.post("/api/models", headers=headers,
                        json={"job_name": "llm-tune-alice-tiny-1", "model_name": "bot"}).json()
        by_id = start(client, headers, model=m["model_id"]).json()
        by_name = start(client, headers, model="bot").json()
        assert by_id["registered_model_id"] == by_name["registered_model_id"] == m["model_id"]
        assert by_id["job_name"] == "llm-tune-alice-tiny-1"

    def test_unknown_or_unfinished_model(self, client, alice, job_with_data):
        headers, uid = alice
        assert_error(start(client, headers, model="nope"), 404, "model_not_found", "model")
        job_with_data(uid, "llm-tune-alice-running", status="InProgress")
        assert_error(start(client, headers, model="llm-tune-alice-running"), 409, "job_not_completed", "model")

    def test_no_validation_split_needs_a_dataset(self, client, alice, job_with_data):
        headers, uid = alice
        job_with_data(uid, "llm-tune-alice-noval", with_validation=False)
        assert_error(start(client, headers, model="llm-tune-alice-noval"), 409, "no_validation_data", "dataset_id")

    def test_dataset_must_be_yours_and_valid(self, client, alice, register, user_id, session_factory, store):
        headers, uid = alice
        bob_id = user_id(register("bob"))
        with session_factory() as s:
            def ds(owner, status):
                d = Dataset(user_id=owner, name="d", filename="d.jsonl", status=status, sha256="0" * 64,
                            raw_key="x", canonical_key=None)
                s.add(d)
                s.flush()
                if status == "ready":
                    d.canonical_key = dataset_key(owner, d.id, "canonical.jsonl")
                    store.put_stream(d.canonical_key, io.BytesIO(b'{"text": "hi"}\n'))
                return d.id
            mine, invalid, bobs = ds(uid, "ready"), ds(uid, "invalid"), ds(bob_id, "ready")
            s.commit()
        assert_error(start(client, headers, dataset_id=bobs), 404, "dataset_not_found", "dataset_id")
        assert_error(start(client, headers, dataset_id=invalid), 409, "dataset_invalid", "dataset_id")
        ev = start(client, headers, dataset_id=mine).json()
        assert ev["dataset_id"] == mine and ev["dataset"] == "dataset"

    def test_validation_errors_name_the_field(self, client, alice):
        headers, _ = alice
        assert_error(start(client, headers, metrics=["accuracy"]), 422, param="metrics[0]")
        assert_error(start(client, headers, max_examples=0), 422, param="max_examples")
        assert_error(start(client, headers, generation={"max_new_tokens": 0}), 422,
                     param="generation.max_new_tokens")

    def test_another_users_evaluation_is_404(self, client, alice, register):
        headers, _ = alice
        ev = start(client, headers).json()
        bob = register("bob")
        assert_error(client.get(f"/api/evaluations/{ev['id']}", headers=bob), 404, "evaluation_not_found")
        assert client.get("/api/evaluations", headers=bob).json()["data"] == []
        assert_error(start(client, bob), 404, "model_not_found")

    def test_over_budget_is_429(self, client, alice, session_factory):
        headers, uid = alice
        with session_factory() as s:
            s.get(User, uid).monthly_budget = 1.0
            job = s.scalar(select(TrainingJob).where(TrainingJob.user_id == uid))
            job.actual_cost = 2.0
            days.refresh(s, uid, job.created_at)  # as the worker does when a job ends
            s.commit()
        err = assert_error(start(client, headers), 429, "budget_exceeded")
        assert err["details"][0]["monthly_budget"] == 1.0 and err["details"][0]["remaining"] == 0

    def test_metrics_catalogue(self, client, alice):
        headers, _ = alice
        names = [m["name"] for m in client.get("/api/evaluations/metrics", headers=headers).json()["data"]]
        assert "perplexity" in names and "json_valid_rate" in names


class TestWorker:
    def test_submits_follows_and_reads_results(self, client, alice, tick, backends):
        headers, uid = alice
        ev = start(client, headers, metrics=["perplexity", "bleu"], max_examples=7,
                   generation={"max_new_tokens": 12, "temperature": 0.5, "seed": 3}).json()
        tick()
        [spec] = backends.training.specs
        assert spec.entry_point == "evaluate.py" and spec.job_name.startswith(f"eval-{ev['id'][:8]}-")
        assert spec.train_key.endswith("/input/validation/validation.jsonl") and spec.validation_key is None
        assert spec.extra_channels == {"model": f"users/{uid}/models/llm-tune-alice-tiny-1/output/model.tar.gz"}
        assert spec.output_key == f"users/{uid}/evaluations/{ev['id']}/{spec.job_name}/output/model.tar.gz"
        hp = spec.hyperparameters
        assert hp["metrics"] == ["perplexity", "bleu"] and hp["max_examples"] == 7 and hp["seed"] == 3
        assert hp["generation"]["max_new_tokens"] == 12 and hp["compare_with_base"] is True
        assert spec.base_model_source.endswith("tiny-llama") and hp["base_model"] == spec.base_model_source
        running = client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()
        assert running["status"] == "InProgress" and running["started_at"]
        tick()
        running = client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()
        assert running["progress"]["done"] == 3 and running["progress"]["total"] == 10
        backends.training.complete(1, RESULTS)
        tick()
        done = client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()
        assert done["status"] == "Completed" and done["ended_at"] and done["error"] is None
        assert done["results"]["improvement"]["perplexity"] == 45.0
        assert done["results"]["general_capability"]["forgetting"] is True
        assert done["results"]["samples"][0]["tuned_output"] == "a"
        assert done["billable_seconds"] == 120

    def test_failure_reason_becomes_the_error(self, client, alice, tick, backends):
        headers, _ = alice
        ev = start(client, headers).json()
        tick()
        backends.training.fail(1, "model_load_failed: cannot load the tuned model: bad archive")
        tick()
        done = client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()
        assert done["status"] == "Failed" and done["results"] is None
        assert done["error"] == {"code": "model_load_failed", "message": "cannot load the tuned model: bad archive"}

    def test_missing_output_fails_clearly(self, client, alice, tick, backends):
        headers, _ = alice
        ev = start(client, headers).json()
        tick()
        backends.training.complete(1, files={"other.txt": b"x"})
        tick()
        done = client.get(f"/api/evaluations/{ev['id']}", headers=headers).json()
        assert done["status"] == "Failed" and done["error"]["code"] == "evaluation_output_missing"

    def test_one_local_evaluation_at_a_time(self, client, alice, tick, backends):
        headers, _ = alice
        a, b = start(client, headers).json(), start(client, headers).json()
        tick()
        tick()
        assert len(backends.training.specs) == 1
        assert client.get(f"/api/evaluations/{b['id']}", headers=headers).json()["status"] == "Pending"
        backends.training.complete(1, RESULTS)
        tick()
        tick()
        assert len(backends.training.specs) == 2
        assert client.get(f"/api/evaluations/{a['id']}", headers=headers).json()["status"] == "Completed"
        listed = client.get("/api/evaluations", headers=headers, params={"status": "InProgress"}).json()["data"]
        assert [e["id"] for e in listed] == [b["id"]]
