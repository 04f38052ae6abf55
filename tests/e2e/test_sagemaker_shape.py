"""The whole API in the cloud shape (LLMTUNER_BACKEND=sagemaker, LLMTUNER_STORAGE=s3), pointed at a
moto server through LLMTUNER_AWS__ENDPOINT_URL exactly as an operator would configure it, walking
the user's journey: status -> deploy -> endpoint status -> invoke -> download, with s3:// URIs."""

from __future__ import annotations

import io
import json
import tarfile
import time

import boto3
import httpx
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.worker import Worker
from tests.backends import moto_sagemaker as moto_sm
from tests.conftest import assert_error
from tests.e2e.conftest import qa_jsonl
from tests.settings import TEST_JWT_SECRET

BUCKET = "llmtuner-e2e"


def _model_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = json.dumps({"base_model": "gpt2", "task": "causal_lm"}).encode()
        info = tarfile.TarInfo("training_summary.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_seed_000_journey_against_a_moto_server(monkeypatch, tmp_path, session_factory):
    with moto_sm.moto_server(monkeypatch) as url:
        monkeypatch.setenv("LLMTUNER_BACKEND", "sagemaker")
        monkeypatch.setenv("LLMTUNER_STORAGE", "s3")
        monkeypatch.setenv("LLMTUNER_AWS__ENDPOINT_URL", url)
        monkeypatch.setenv("LLMTUNER_AWS__S3_BUCKET", BUCKET)
        monkeypatch.setenv("LLMTUNER_AWS__REGION", "us-east-1")
        monkeypatch.setenv("LLMTUNER_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("LLMTUNER_ENV", "test")
        monkeypatch.setenv("LLMTUNER_JWT__SECRET", TEST_JWT_SECRET)
        monkeypatch.setenv("LLMTUNER_WORKER__ENABLED", "false")
        monkeypatch.setenv("LLMTUNER_AUTH__ARGON2_TIME_COST", "1")
        monkeypatch.setenv("LLMTUNER_AUTH__ARGON2_MEMORY_KIB", "8192")
        settings = Settings()
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        app = create_app(settings, sessionmaker=session_factory)
        with TestClient(app, raise_server_exceptions=False) as client:
            worker = Worker(session_factory, app.state.store, app.state.backends, settings)

            def register(name):
                client.post("/api/auth/register", json={"username": name, "email": f"{name}@x.io",
                                                         "password": "correct horse battery"})
                tok = client.post("/api/auth/token", data={"username": name, "password": "correct horse battery"})
                return {"Authorization": f"Bearer {tok.json()['access_token']}"}

            h, other = register("user123"), register("eve")
            uid = client.get("/api/auth/me", headers=h).json()["id"]
            assert client.get("/api/health").json()["storage"] == "ok"

            ds = client.post("/api/datasets", headers=h, files={"file": ("qa.jsonl", qa_jsonl())}).json()
            assert ds["status"] == "ready"
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
            assert f"users/{uid}/datasets/{ds['id']}/raw" in keys

            r = client.post("/api/training-job", headers=h,
                            json={"dataset_id": ds["id"], "base_model": "meta-llama/Llama-2-7b-hf"})
            assert r.status_code == 201, r.text
            job = r.json()
            name = job["job_name"]
            assert name.startswith("llm-tune-user123-llama-2-7b-hf-") and job["instance_type"] == "ml.g5.xlarge"
            assert job["estimated_cost"] > 0 and job["backend"] == "sagemaker"
            # a multi-GPU type is refused at create, naming the field, not later by the worker
            multi = client.post("/api/training-job", headers=h, json={
                "dataset_id": ds["id"], "base_model": "gpt2", "instance_type": "ml.g5.12xlarge"})
            assert_error(multi, 422, "multi_gpu_not_supported", "instance_type")
            cost_check = client.post("/api/cost-estimate", headers=h, json={
                "dataset_id": ds["id"], "base_model": "gpt2", "instance_type": "ml.g5.12xlarge"})
            assert_error(cost_check, 422, "multi_gpu_not_supported", "instance_type")
            sm = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1")
            worker.tick()  # the worker submits it
            # SageMaker's name: unique across users (the user's name and a piece of the job's id)
            sm_name = sm.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
            assert sm_name.startswith(name[:54]) and len(sm_name) <= 63
            described = sm.describe_training_job(TrainingJobName=sm_name)
            channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
                        for c in described["InputDataConfig"]}
            assert channels["train"].startswith(f"s3://{BUCKET}/users/{uid}/models/{name}/")
            assert json.loads(described["HyperParameters"]["epochs"]) == 3

            # A metric line in CloudWatch, as train.py prints it, becomes a metric point.
            logs = boto3.client("logs", endpoint_url=url, region_name="us-east-1")
            logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
            logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{sm_name}/algo-1-1")
            line = '{"event": "log", "step": 10, "epoch": 0.5, "train_loss": 1.5, "learning_rate": 0.0002}'
            logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{sm_name}/algo-1-1",
                                logEvents=[{"timestamp": int(time.time() * 1000), "message": line}])
            moto_sm.set_training_job(sm_name, secondary="Training")
            worker.tick()
            got = client.get(f"/api/training-job/{name}", headers=h).json()
            assert got["status"] == "InProgress" and got["secondary_status"] == "Training"
            points = client.get(f"/api/training-job/{name}/metrics", headers=h).json()
            assert {"metric_name": "train_loss", "value": 1.5} in [
                {"metric_name": p["metric_name"], "value": p["value"]} for p in points]

            artifact_key = f"users/{uid}/models/{name}/output/model.tar.gz"
            tarball = _model_tarball()  # (gzip headers carry the time: build it once)
            s3.put_object(Bucket=BUCKET, Key=artifact_key, Body=tarball)
            moto_sm.set_training_job(sm_name, status="Completed", billable_seconds=3600,
                                     artifacts=f"s3://{BUCKET}/{artifact_key}", final_metrics={"train_loss": 0.245})
            worker.tick()
            # Step 1 of the journey: the completed job's status.
            done = client.get(f"/api/training-job/{name}", headers=h).json()
            assert done["status"] == "Completed", done
            assert done["model_artifacts_s3_uri"] == f"s3://{BUCKET}/{artifact_key}"
            assert {"metric_name": "train_loss", "value": 0.245} in done["training_metrics"]
            assert done["actual_cost"] == 1.21 and done["billable_seconds"] == 3600

            # Method 2: download through a presigned URL, fetched by a real HTTP client.
            dl = client.get(f"/api/model-download/{name}", headers=h).json()
            assert dl["model_s3_uri"] == done["model_artifacts_s3_uri"] and dl["expires_in"] == 3600
            assert httpx.get(dl["download_url"]).content == tarball

            # Tenancy of s3:// URIs: another user's, another bucket's.
            for uri in (done["model_artifacts_s3_uri"], f"s3://other-bucket/{artifact_key}"):
                assert_error(client.post("/api/deploy-model", headers=other, json={
                    "model_s3_uri": uri, "model_name": "stolen"}), 404)

            # Method 1: deploy -> InService -> invoke -> delete.
            r = client.post("/api/deploy-model", headers=h, json={
                "model_s3_uri": done["model_artifacts_s3_uri"], "model_name": "my-fine-tuned-llama2",
                "instance_type": "ml.g5.xlarge"})
            assert r.status_code == 202, r.text
            assert r.json() == {"message": "Model deployment initiated", "deployment": {
                "endpoint_name": "my-fine-tuned-llama2-endpoint", "status": "Creating",
                "instance_type": "ml.g5.xlarge", "estimated_cost_per_hour": 1.21}}
            worker.tick()
            # SageMaker's name: unique across users (the user's name and a piece of the endpoint's id)
            sm_ep = sm.list_endpoints()["Endpoints"][0]["EndpointName"]
            assert sm_ep.startswith("my-fine-tuned-llama2-endpoint-") and len(sm_ep) <= 63
            assert sm.describe_endpoint(EndpointName=sm_ep)["EndpointStatus"] == "Creating"
            moto_sm.set_endpoint(sm_ep, "InService")
            worker.tick()
            st = client.get("/api/endpoint-status/my-fine-tuned-llama2-endpoint", headers=h).json()
            assert st["status"] == "InService"
            assert_error(client.get("/api/endpoint-status/my-fine-tuned-llama2-endpoint", headers=other), 404)

            moto_sm.queue_invoke_result([{"generated_text": "Based on the training data, explain how to help.",
                                          "details": {"prompt_tokens": 8, "completion_tokens": 4,
                                                      "finish_reason": "length"}}], server_url=url)
            inv = client.post("/api/invoke-model", headers=h, json={
                "endpoint_name": "my-fine-tuned-llama2-endpoint", "input_text": "Based on the training data, "
                "explain how to..."})
            assert inv.status_code == 200, inv.text
            body = inv.json()
            assert body["status"] == "success"
            assert body["result"]["generated_text"] == "Based on the training data, explain how to help."
            assert body["result"]["endpoint_name"] == "my-fine-tuned-llama2-endpoint"

            assert client.delete("/api/endpoint/my-fine-tuned-llama2-endpoint", headers=h).status_code == 202
            for _ in range(3):
                worker.tick()
            st = client.get("/api/endpoint-status/my-fine-tuned-llama2-endpoint", headers=h).json()
            assert st["status"] in ("Deleting", "Deleted")
            usage = client.get("/api/usage", headers=h).json()
            assert usage["training"]["total"] == 1.21
