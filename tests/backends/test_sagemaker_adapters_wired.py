"""Many adapters on one SageMaker endpoint, through the API: LLMTUNER_BACKEND=sagemaker deploys a base
model with adapters as inference components. S3 is moto's; the SageMaker control-plane and runtime
calls are botocore Stubber's (moto implements no inference components), so each test states the
exact requests AWS would get."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from sqlalchemy import select, update

from app import aws
from app.backends.base import Backends
from app.backends.sagemaker import build_sagemaker_backends
from app.backends.sagemaker_adapters import LMI_IMAGE
from app.backends.sagemaker_endpoints import SageMakerEndpointBackend
from app.config import AuthSettings, AWSSettings, Settings, WorkerSettings
from app.deployments.models import Endpoint
from app.deployments.reconcile import reconcile
from app.leases import new_owner
from app.storage.s3 import S3ObjectStore
from app.training.models import TrainingJob
from app.worker import WorkerContext
from tests.backends import moto_sagemaker as moto_sm
from tests.jobs import insert_job
from tests.settings import make_test_settings

BUCKET = "llmtuner-test-artifacts"
ROLE = "arn:aws:iam::123456789012:role/LLMTunerSageMakerExecution"
BASE = "meta-llama/Llama-2-7b-hf"  # gated on the hub: the base component needs the token
TOKEN = "hf_test_token_123"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:"
IMAGE = LMI_IMAGE.format(region="us-east-1")
Headers = dict[str, str]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    with moto_sm.moto_aws(monkeypatch):
        yield make_test_settings(data_dir=tmp_path / "data", backend="sagemaker", storage="s3",
                                 database_url="sqlite://", worker=WorkerSettings(enabled=False),
                                 auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192),
                                 aws=AWSSettings(region="us-east-1", s3_bucket=BUCKET, role_arn=ROLE, hf_token=TOKEN))


@pytest.fixture
def store(settings: Settings) -> S3ObjectStore:
    s3 = aws.client(settings, "s3")
    s3.create_bucket(Bucket=BUCKET)
    return S3ObjectStore(s3, BUCKET)


@pytest.fixture
def backends(settings: Settings, store: S3ObjectStore) -> Backends:
    return build_sagemaker_backends(settings, store)


@pytest.fixture
def stubs(backends: Backends) -> Iterator[tuple[Stubber, Stubber]]:
    """Stubbers on the backend's SageMaker client and on the runtime client its invocations use."""
    endpoints = backends.endpoints
    assert isinstance(endpoints, SageMakerEndpointBackend)
    runtime = endpoints.runtime_client(30)
    endpoints.invoke_client = lambda timeout: runtime  # type: ignore[method-assign]
    with Stubber(endpoints.sm) as sm, Stubber(runtime) as rt:
        yield sm, rt
        sm.assert_no_pending_responses()
        rt.assert_no_pending_responses()


@pytest.fixture
def reconcile_once(session_factory: Any, store: Any, settings: Settings, app: Any,
                   client: Any) -> Callable[[], None]:
    owner = new_owner()
    return lambda: reconcile(WorkerContext(session_factory, store, app.state.backends, settings, owner=owner))


@pytest.fixture
def alice(register: Callable[..., Headers]) -> Headers:
    return register("alice")


@pytest.fixture
def job(session_factory: Any, store: S3ObjectStore, user_id: Callable[..., str],
        alice: Headers) -> Callable[[str], str]:
    def make(name: str) -> str:
        insert_job(session_factory, store, user_id(alice), name, b"adapter tarball")
        with session_factory() as s:  # trained on the hub base the endpoint serves
            s.execute(update(TrainingJob).where(TrainingJob.job_name == name).values(base_model=BASE))
            s.commit()
        return name

    return make


def uid_key(user: str, job_name: str) -> str:
    return f"s3://{BUCKET}/users/{user}/models/{job_name}/output/model.tar.gz"


def adapter_ic(ep: str, name: str, url: str) -> dict[str, Any]:
    return {"InferenceComponentName": f"{ep}-{name}", "EndpointName": ep,
            "Specification": {"BaseInferenceComponentName": f"{ep}-base", "Container": {"ArtifactUrl": url}}}


def endpoint(ep: str, status: str) -> dict[str, Any]:
    return {"EndpointName": ep, "EndpointArn": f"{ARN}endpoint/{ep}", "EndpointStatus": status,
            "CreationTime": 0, "LastModifiedTime": 0}


def listed(ep: str, *names: str) -> dict[str, Any]:
    return {"InferenceComponents": [
        {"InferenceComponentName": n, "InferenceComponentArn": f"{ARN}inference-component/{n}", "EndpointName": ep,
         "EndpointArn": f"{ARN}endpoint/{ep}", "VariantName": "AllTraffic", "CreationTime": 0,
         "LastModifiedTime": 0} for n in names]}


def answer(obj: Any) -> dict[str, Any]:
    raw = json.dumps(obj).encode()
    return {"Body": StreamingBody(io.BytesIO(raw), len(raw)), "ContentType": "application/json"}


def test_base_model_with_adapters_on_sagemaker(client: Any, alice: Headers, job: Callable[[str], str],
                                               user_id: Callable[..., str], stubs: tuple[Stubber, Stubber],
                                               reconcile_once: Callable[[], None], session_factory: Any) -> None:
    sm, rt = stubs
    uid = user_id(alice)
    j1, j2, j3 = job("llm-tune-a-support"), job("llm-tune-a-legal"), job("llm-tune-a-sales")
    ic_arn = {"InferenceComponentArn": f"{ARN}inference-component/x"}

    # Deploy: an endpoint of instances only (no SageMaker model), then the base component, then the adapters'.
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}endpoint-config/shared"}, {
        "EndpointConfigName": ANY, "ExecutionRoleArn": ROLE, "ProductionVariants": [{
            "VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
            "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}]})
    sm.add_response("create_endpoint", {"EndpointArn": f"{ARN}endpoint/shared"},
                    {"EndpointName": ANY, "EndpointConfigName": ANY})
    r = client.post("/api/deploy-model", headers=alice, json={
        "model_name": "shared", "base_model": BASE, "instance_type": "ml.g5.xlarge",
        "adapters": [{"job_name": j1, "name": "support"}, {"job_name": j2, "name": "legal"}]})
    assert r.status_code == 202, r.text
    reconcile_once()
    with session_factory() as s:  # the name on SageMaker (the API's name may be made unique there)
        row = s.scalar(select(Endpoint).where(Endpoint.model_name == "shared"))
        assert row is not None and row.status == "Creating", row and row.failure_reason
        api_name, ep = row.endpoint_name, row.backend_handle["endpoint_name"]
    base_ic = f"{ep}-base"

    sm.add_response("describe_endpoint", endpoint(ep, "InService"), {"EndpointName": ep})
    sm.add_response("create_inference_component", ic_arn, {
        "InferenceComponentName": base_ic, "EndpointName": ep, "VariantName": "AllTraffic",
        "RuntimeConfig": {"CopyCount": 1}, "Specification": {
            "Container": {"Image": IMAGE, "Environment": {
                "OPTION_ROLLING_BATCH": "vllm", "OPTION_ENABLE_LORA": "true", "OPTION_MAX_LORAS": "8",
                "OPTION_MAX_CPU_LORAS": "64", "HF_MODEL_ID": BASE, "HF_TOKEN": TOKEN}},
            "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 8192}}})
    reconcile_once()
    assert client.get(f"/api/endpoint-status/{api_name}", headers=alice).json()["status"] == "Creating"

    sm.add_response("describe_endpoint", endpoint(ep, "InService"), {"EndpointName": ep})
    sm.add_response("describe_inference_component", {
        "InferenceComponentName": base_ic, "InferenceComponentArn": f"{ARN}inference-component/{base_ic}",
        "EndpointName": ep, "EndpointArn": f"{ARN}endpoint/{ep}", "CreationTime": 0, "LastModifiedTime": 0,
        "InferenceComponentStatus": "InService"}, {"InferenceComponentName": base_ic})
    sm.add_response("create_inference_component", ic_arn, adapter_ic(ep, "support", uid_key(uid, j1)))
    sm.add_response("create_inference_component", ic_arn, adapter_ic(ep, "legal", uid_key(uid, j2)))
    reconcile_once()
    st = client.get(f"/api/endpoint-status/{api_name}", headers=alice).json()
    assert st["status"] == "InService" and st["backend"] == "sagemaker", st

    # Attach on the running endpoint: one more component; detach deletes it.
    sm.add_response("create_inference_component", ic_arn, adapter_ic(ep, "sales", uid_key(uid, j3)))
    r = client.post(f"/api/endpoint/{api_name}/adapters", headers=alice, json={"job_name": j3, "name": "sales"})
    assert r.status_code == 201, r.text
    sm.add_response("delete_inference_component", {}, {"InferenceComponentName": f"{ep}-sales"})
    r = client.delete(f"/api/endpoint/{api_name}/adapters/sales", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "detached", r.text

    # model=<adapter> reaches that adapter's component; the endpoint's own model, the base's.
    rt.add_response("invoke_endpoint", answer({"generated_text": " Reset it.", "details": {
        "finish_reason": "eos_token", "generated_tokens": 3, "prefill": [1, 2]}}), {
        "EndpointName": ep, "InferenceComponentName": f"{ep}-support", "ContentType": "application/json",
        "Accept": "application/json", "Body": json.dumps({"inputs": "Password?", "parameters": {
            "max_new_tokens": 8, "details": True}})})
    r = client.post("/v1/completions", headers=alice, json={"model": "support", "prompt": "Password?",
                                                            "max_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == " Reset it." and r.json()["usage"]["completion_tokens"] == 3

    # Delete: the adapter components, the base's, then the endpoint and its config.
    sm.add_response("list_inference_components", listed(ep, base_ic, f"{ep}-support", f"{ep}-legal"),
                    {"EndpointNameEquals": ep, "MaxResults": 100})
    for ic in (f"{ep}-support", f"{ep}-legal", base_ic):
        sm.add_response("delete_inference_component", {}, {"InferenceComponentName": ic})
    sm.add_response("delete_endpoint", {}, {"EndpointName": ep})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": ep})
    sm.add_client_error("describe_endpoint", "ValidationException", f"Could not find endpoint \"{ep}\".",
                        expected_params={"EndpointName": ep})
    assert client.delete(f"/api/endpoint/{api_name}", headers=alice).status_code == 202
    reconcile_once()
    assert client.get(f"/api/endpoint-status/{api_name}", headers=alice).json()["status"] == "Deleted"


def test_a_single_model_deploy_keeps_its_sagemaker_model(client: Any, alice: Headers, job: Callable[[str], str],
                                                         reconcile_once: Callable[[], None],
                                                         settings: Settings) -> None:
    """No adapters: today's path (a SageMaker model with the job's model.tar.gz), against moto."""
    name = job("llm-tune-a-single")
    r = client.post("/api/deploy-model", headers=alice, json={"model_name": "single", "job_name": name})
    assert r.status_code == 202, r.text
    reconcile_once()
    sm = aws.client(settings, "sagemaker")
    models = sm.list_models()["Models"]
    assert len(models) == 1 and models[0]["ModelName"].startswith("single-endpoint-")
    assert "-model-" in models[0]["ModelName"]
    env = sm.describe_model(ModelName=models[0]["ModelName"])["PrimaryContainer"]["Environment"]
    assert env["HF_TOKEN"] == TOKEN and env["SAGEMAKER_PROGRAM"] == "inference.py"
