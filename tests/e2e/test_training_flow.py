"""Upload -> train for real on the built-in tiny model -> metrics/events -> download -> load."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from urllib.parse import urlsplit

from app.backends import process
from app.worker import Worker
from tests.conftest import assert_error

FAST = {"epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "logging_steps": 2, "max_length": 64}


def job_state(client, h, name):
    return client.get(f"/api/training-job/{name}", headers=h).json()


def ended(client, h, name):
    body = job_state(client, h, name)
    return body if body["status"] in ("Completed", "Failed", "Stopped") else None


def test_train_download_and_load(client, dataset, wait_for, tmp_path):
    h, ds = dataset
    r = client.post("/api/training-job", headers={**h, "Idempotency-Key": "k1"},
                    json={"dataset_id": ds, "hyperparameters": FAST})
    assert r.status_code == 201, r.text
    job = r.json()
    name = job["job_name"]
    assert name.startswith("llm-tune-alice-tiny-llama-") and len(name) <= 63
    assert job["status"] == "InProgress" and job["base_model"] == "llmtuner/tiny-llama"
    assert job["hyperparameters"]["learning_rate"] == 3e-3 and job["estimated_cost"] == 0
    again = client.post("/api/training-job", headers={**h, "Idempotency-Key": "k1"},
                        json={"dataset_id": ds, "hyperparameters": FAST})
    assert again.json()["job_name"] == name  # same key, same body: nothing new

    done = wait_for(lambda: ended(client, h, name), what="job to end")
    assert done["status"] == "Completed", done
    assert done["model_artifacts_s3_uri"].startswith("local://users/")
    assert re.search(rf"/models/{name}/{name[:54]}-[0-9a-f]{{8}}/output/model.tar.gz$", done["model_artifacts_s3_uri"])
    assert {m["metric_name"] for m in done["training_metrics"]} >= {"train_loss"}
    assert done["progress"]["percent"] == 100.0 and done["ended_at"] and done["billable_seconds"] >= 1
    assert done["actual_cost"] == 0.0 and done["error"] is None

    metrics = client.get(f"/api/training-job/{name}/metrics?metric_name=train_loss", headers=h).json()
    assert len(metrics) >= 2 and metrics[-1]["value"] < metrics[0]["value"]  # loss falls
    events = client.get(f"/api/training-job/{name}/events", headers=h).json()
    types = [e["type"] for e in events]
    assert types[0] == "created" and "training_started" in types and "epoch" in types
    assert events[-1]["message"].startswith("InProgress -> Completed")

    actions = {a["name"]: a for a in client.get(f"/api/training-job-actions/{name}", headers=h).json()["actions"]}
    assert actions["download"]["available"] and not actions["stop"]["available"]

    dl = client.get(f"/api/model-download/{name}", headers=h).json()
    assert dl["expires_in"] == 3600 and dl["job_name"] == name
    url = urlsplit(dl["download_url"])
    blob = client.get(f"{url.path}?{url.query}")  # no token: the signature is the credential
    assert blob.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(blob.content)) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "model" / "base_model" / "config.json").is_file()  # the built-in base travels along
    assert (tmp_path / "model" / "code" / "inference.py").is_file()
    # Load it as a user would (base model + PeftModel.from_pretrained), in a fresh process.
    code = (
        "import json,sys,torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "from peft import PeftModel; d=sys.argv[1];"
        "base=AutoModelForCausalLM.from_pretrained(d+'/base_model'); m=PeftModel.from_pretrained(base, d);"
        "t=AutoTokenizer.from_pretrained(d); ids=t('### User:\\nHow do I reset my password?\\n\\n### Assistant:\\n',"
        "return_tensors='pt').input_ids; out=m.generate(ids, max_new_tokens=8, do_sample=False);"
        "print('GENERATED', out.shape[1] > ids.shape[1])"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "GENERATED True" in res.stdout, res.stderr[-2000:]


def test_stop_a_running_job(client, dataset, wait_for):
    h, ds = dataset
    r = client.post("/api/training-job", headers=h,
                    json={"dataset_id": ds, "hyperparameters": {**FAST, "epochs": 100, "logging_steps": 1}})
    name = r.json()["job_name"]
    wait_for(lambda: job_state(client, h, name)["progress"].get("step"), what="training to start")
    r = client.post(f"/api/training-job/{name}/stop", headers=h)
    assert r.status_code == 202 and r.json()["status"] == "Stopping"
    done = wait_for(lambda: ended(client, h, name), what="job to stop")
    assert done["status"] == "Stopped"
    assert_error(client.post(f"/api/training-job/{name}/stop", headers=h), 409, "job_not_running")
    assert_error(client.get(f"/api/model-download/{name}", headers=h), 409, "job_not_completed")


def test_restart_marks_vanished_job_failed(client, dataset, app, settings, session_factory, wait_for):
    h, ds = dataset
    r = client.post("/api/training-job", headers=h,
                    json={"dataset_id": ds, "hyperparameters": {**FAST, "epochs": 100}})
    name = r.json()["job_name"]
    from app.training.models import TrainingJob

    def handle_of() -> dict:
        with session_factory() as s:
            return s.query(TrainingJob).filter_by(job_name=name).one().backend_handle  # type: ignore[no-any-return]

    handle = wait_for(handle_of, what="the worker to submit the job")
    os.killpg(handle["pid"], signal.SIGKILL)  # the machine "restarts": the process and its wrapper die
    wait_for(lambda: not process.alive(handle), timeout=30, what="process to die")
    fresh = Worker(session_factory, app.state.store, app.state.backends, settings)  # the API came back
    fresh.tick()
    body = job_state(client, h, name)
    assert body["status"] == "Failed" and body["error"]["code"] == "process_vanished"


def test_tenancy_of_jobs(client, dataset, register):
    h, ds = dataset
    other = register("mallory")
    assert_error(client.post("/api/training-job", headers=other, json={"dataset_id": ds}), 404,
                 "dataset_not_found", "dataset_id")
    name = client.post("/api/training-job", headers=h,
                       json={"dataset_id": ds, "hyperparameters": {**FAST, "max_steps": 1}}).json()["job_name"]
    for path in (f"/api/training-job/{name}", f"/api/training-job/{name}/events",
                 f"/api/training-job/{name}/metrics", f"/api/training-job-actions/{name}",
                 f"/api/model-download/{name}"):
        assert_error(client.get(path, headers=other), 404)
    assert_error(client.post(f"/api/training-job/{name}/stop", headers=other), 404)
    assert client.get("/api/training-jobs", headers=other).json()["data"] == []
    assert [j["job_name"] for j in client.get("/api/training-jobs", headers=h).json()["data"]] == [name]
    client.post(f"/api/training-job/{name}/stop", headers=h)


def test_bad_requests(client, dataset):
    h, ds = dataset
    r = client.post("/api/training-job", headers=h,
                    json={"dataset_id": ds, "hyperparameters": {"learning_rate": -1, "lora_rank": 0}})
    err = assert_error(r, 422, "validation_error", "hyperparameters.learning_rate")
    assert {d["param"] for d in err["details"]} == {"hyperparameters.learning_rate", "hyperparameters.lora_rank"}
    assert_error(client.post("/api/training-job", headers=h, json={"dataset_id": ds, "base_model": "x/y"}), 422,
                 "unknown_base_model", "base_model")
    assert_error(client.post("/api/training-job", headers=h,
                             json={"dataset_id": ds, "hyperparameters": {"max_length": 4096}}), 422,
                 param="hyperparameters.max_length")
    assert_error(client.post("/api/training-job", headers=h,
                             json={"dataset_id": ds, "hyperparameters": {"load_in_4bit": True}}), 422,
                 "qlora_requires_gpu", "hyperparameters.load_in_4bit")
    bad = client.post("/api/datasets", headers=h, files={"file": ("b.jsonl", b'{"prompt": 1}\n')}).json()
    assert_error(client.post("/api/training-job", headers=h, json={"dataset_id": bad["id"]}), 409,
                 "dataset_invalid", "dataset_id")


def test_restart_reattaches_to_a_running_job(client, dataset, app, settings, session_factory):
    """The API restarts while a local job trains: the new worker finds the process by pid and start
    time, follows it to the end, and the job completes."""
    h, ds = dataset
    name = client.post("/api/training-job", headers=h,
                       json={"dataset_id": ds, "hyperparameters": {**FAST, "epochs": 3}}).json()["job_name"]
    process._children.clear()  # a new API process holds no Popen objects of the old one
    fresh = Worker(session_factory, app.state.store, app.state.backends, settings)
    fresh.tick()
    assert job_state(client, h, name)["status"] == "InProgress"
    deadline, done = time.monotonic() + 180, None
    while done is None and time.monotonic() < deadline:
        fresh.tick()
        done = ended(client, h, name)
        time.sleep(0.2)
    assert done is not None and done["status"] == "Completed", done
    assert done["model_artifacts_s3_uri"]
