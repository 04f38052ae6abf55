"""SageMaker endpoint backend against moto (tests/backends/moto_sagemaker.py patches moto's gaps)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from app.aws import client
from app.backends.base import EndpointSpec
from app.backends.sagemaker import SageMakerEndpointBackend, build_sagemaker_backends, derived_name
from app.backends.sagemaker_images import default_image_uri
from app.config import AWSSettings, Settings, WorkerSettings
from app.errors import AppError
from app.storage.s3 import S3ObjectStore
from tests.backends import moto_sagemaker as moto_sm
from tests.settings import make_test_settings

USER = "0b5f3a52-6c1e-4d2b-9a87-3f0c2e1d4b6a"
BUCKET = "llmtuner-test-artifacts"
JOB = "llm-tune-alice-qwen-20250102-030405"
ENDPOINT = "alice-qwen-endpoint"
ROLE = "arn:aws:iam::123456789012:role/LLMTunerSageMakerExecution"
MODEL_URI = f"s3://{BUCKET}/users/{USER}/models/{JOB}/output/model.tar.gz"
# serve.py's and inference.py's answer: one result per input.
RESULT = [{"generated_text": " 4", "details": {"prompt_tokens": 7, "completion_tokens": 2, "finish_reason": "eos"}}]
PAYLOAD = {"inputs": "What is 2+2?", "parameters": {"max_new_tokens": 16, "temperature": 0.0}}


def make_settings(tmp_path: Path, **aws_kw: Any) -> Settings:
    aws_settings = AWSSettings(region="us-east-1", s3_bucket=BUCKET, role_arn=ROLE, **aws_kw)
    return make_test_settings(data_dir=tmp_path / "data", backend="sagemaker", storage="s3",
                              database_url="sqlite://", aws=aws_settings, worker=WorkerSettings(enabled=False))


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with moto_sm.moto_aws(monkeypatch):
        yield


@pytest.fixture
def sm_settings(tmp_path: Path, aws: None) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def endpoints(sm_settings: Settings) -> SageMakerEndpointBackend:
    s3 = client(sm_settings, "s3")
    s3.create_bucket(Bucket=BUCKET)
    backend = build_sagemaker_backends(sm_settings, S3ObjectStore(s3, BUCKET)).endpoints
    assert isinstance(backend, SageMakerEndpointBackend)
    return backend


def make_spec(**kw: Any) -> EndpointSpec:
    fields: dict[str, Any] = dict(
        endpoint_name=ENDPOINT, user_id=USER, model_uri=MODEL_URI,
        model_key=f"users/{USER}/models/{JOB}/output/model.tar.gz",
        base_model_source="Qwen/Qwen2.5-0.5B-Instruct", instance_type="ml.g5.xlarge", instance_count=1,
    )
    fields.update(kw)
    return EndpointSpec(**fields)


def test_deploy_creating_inservice_invoke_delete(endpoints: SageMakerEndpointBackend,
                                                 sm_settings: Settings) -> None:
    handle = endpoints.deploy(make_spec(instance_count=2))
    assert handle["endpoint_name"] == ENDPOINT
    assert handle["model_name"].startswith(f"{ENDPOINT}-model-") and handle["config_name"].startswith(
        f"{ENDPOINT}-config-")
    sm = client(sm_settings, "sagemaker")

    model = sm.describe_model(ModelName=handle["model_name"])
    container = model["PrimaryContainer"]
    assert container["Image"] == default_image_uri("inference", "us-east-1")
    assert container["ModelDataUrl"] == MODEL_URI
    env = container["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py" and env["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert env["LLMTUNER_BASE_MODEL"] == "Qwen/Qwen2.5-0.5B-Instruct"
    # SageMaker gives the container 60 s: the 120 s default is capped, generation stops before.
    assert env["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "60" and env["LLMTUNER_GENERATION_DEADLINE_SECONDS"] == "55.0"
    assert env["HF_HOME"].startswith("/tmp/") and "HF_TOKEN" not in env
    assert model["ExecutionRoleArn"] == ROLE
    assert "VpcConfig" not in model or not model["VpcConfig"]

    config = sm.describe_endpoint_config(EndpointConfigName=handle["config_name"])
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == handle["model_name"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g5.xlarge", 2)  # g5: moto patched
    assert "KmsKeyId" not in config or not config["KmsKeyId"]

    st = endpoints.describe(handle)
    assert (st.status, st.failure_reason) == ("Creating", None)
    moto_sm.set_endpoint(ENDPOINT, "InService")
    assert endpoints.describe(handle).status == "InService"

    moto_sm.queue_invoke_result(RESULT)
    assert endpoints.invoke(handle, PAYLOAD, timeout=30) == RESULT
    moto_sm.queue_invoke_result(RESULT[0])  # a lone object comes back as a list of one
    assert endpoints.invoke(handle, {**PAYLOAD, "inputs": "again"}, timeout=30) == RESULT

    endpoints.delete(handle)
    assert handle["deleting"] is True
    assert endpoints.describe(handle).status == "Deleted"
    assert moto_sm.backend().endpoints == {} and moto_sm.backend().endpoint_configs == {}
    assert moto_sm.backend()._models == {}
    endpoints.delete(handle)  # deleting again finds nothing to delete: not an error


def test_names_fit_sagemaker_limits_and_are_new_for_each_deploy(endpoints: SageMakerEndpointBackend) -> None:
    long_name = ("a" * 54) + "-endpoint"
    assert len(long_name) == 63
    h1 = endpoints.deploy(make_spec(endpoint_name=long_name))
    for name in (h1["model_name"], h1["config_name"]):
        assert len(name) <= 63 and not name.startswith("-") and "--" not in name
    assert derived_name("x-" + "b" * 60, "model", "12345678").endswith("-model-12345678")
    endpoints.delete(h1)
    h2 = endpoints.deploy(make_spec(endpoint_name=long_name))
    assert h2["model_name"] != h1["model_name"] and h2["config_name"] != h1["config_name"]


def test_endpoint_failure_reason(endpoints: SageMakerEndpointBackend) -> None:
    handle = endpoints.deploy(make_spec())
    moto_sm.set_endpoint(ENDPOINT, "Failed", "The primary container for production variant AllTraffic did not "
                                             "pass the ping health check.")
    st = endpoints.describe(handle)
    assert st.status == "Failed" and "ping health check" in (st.failure_reason or "")


def test_endpoint_removed_outside_the_service_is_failed(endpoints: SageMakerEndpointBackend,
                                                       sm_settings: Settings) -> None:
    handle = endpoints.deploy(make_spec())
    client(sm_settings, "sagemaker").delete_endpoint(EndpointName=ENDPOINT)
    st = endpoints.describe(handle)
    assert st.status == "Failed" and "no longer exists" in (st.failure_reason or "")
    moto_sm.backend().endpoints.clear()


def test_deleting_is_reported_until_it_is_gone(endpoints: SageMakerEndpointBackend) -> None:
    handle = endpoints.deploy(make_spec())
    moto_sm.set_endpoint(ENDPOINT, "InService")
    assert endpoints.describe({**handle, "deleting": True}).status == "Deleting"


def test_non_hub_base_models_kms_and_vpc(tmp_path: Path, aws: None) -> None:
    settings = make_settings(tmp_path, kms_key_id="arn:aws:kms:us-east-1:123456789012:key/k",
                             vpc_subnet_ids=["subnet-1"], vpc_security_group_ids=["sg-1"],
                             inference_image_uri="111122223333.dkr.ecr.us-east-1.amazonaws.com/serve:1")
    s3 = client(settings, "s3")
    s3.create_bucket(Bucket=BUCKET)
    backend = SageMakerEndpointBackend(settings, S3ObjectStore(s3, BUCKET))
    req = backend.model_request(make_spec(base_model_source="s3://models/llama"), "m")
    env = req["PrimaryContainer"]["Environment"]
    assert "LLMTUNER_BASE_MODEL" not in env and env["LLMTUNER_BASE_MODEL_S3_URI"] == "s3://models/llama/"
    assert req["PrimaryContainer"]["Image"] == "111122223333.dkr.ecr.us-east-1.amazonaws.com/serve:1"
    assert req["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    # A local folder goes up once, content-addressed, and the endpoint downloads it from there
    # (never a path of the training container, which the endpoint does not have).
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    req = backend.model_request(make_spec(base_model_source=str(folder)), "m")
    env = req["PrimaryContainer"]["Environment"]
    assert "LLMTUNER_BASE_MODEL" not in env and str(tmp_path) not in json.dumps(env)
    prefix = env["LLMTUNER_BASE_MODEL_S3_URI"]
    assert prefix.startswith(f"s3://{BUCKET}/users/{USER}/models/_base_models/") and prefix.endswith("/")
    key = prefix[len(f"s3://{BUCKET}/"):]
    assert s3.get_object(Bucket=BUCKET, Key=key + "config.json")["Body"].read() == b"{}"
    again = backend.model_request(make_spec(base_model_source=str(folder)), "m")
    assert again["PrimaryContainer"]["Environment"]["LLMTUNER_BASE_MODEL_S3_URI"] == prefix
    # Instances with local NVMe storage (ml.g5 ...) refuse a volume KMS key; EBS-only ones take it.
    assert "KmsKeyId" not in backend.endpoint_config_request(make_spec(), "c", "m")
    cpu = backend.endpoint_config_request(make_spec(instance_type="ml.m5.xlarge"), "c", "m")
    assert cpu["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/k"


def test_quota_error_on_deploy_is_429_and_leaves_nothing_behind(endpoints: SageMakerEndpointBackend) -> None:
    msg = ("The account-level service limit 'ml.g5.xlarge for endpoint usage' is 0 Instances, with current "
           "utilization of 0 Instances and a request delta of 1 Instances.")
    moto_sm.fail_next(endpoints.sm, "CreateEndpointConfig", "ResourceLimitExceeded", msg)
    with pytest.raises(AppError) as exc:
        endpoints.deploy(make_spec())
    assert (exc.value.status_code, exc.value.code) == (429, "capacity_unavailable")
    assert "'ml.g5.xlarge for endpoint usage'" in exc.value.message
    assert moto_sm.backend()._models == {} and moto_sm.backend().endpoint_configs == {}


def test_create_endpoint_failure_cleans_up_config_and_model(endpoints: SageMakerEndpointBackend) -> None:
    moto_sm.fail_next(endpoints.sm, "CreateEndpoint", "ValidationException",
                      "Cannot create already existing endpoint \"arn:aws:sagemaker:...:endpoint/x\".")
    with pytest.raises(AppError) as exc:
        endpoints.deploy(make_spec())
    assert (exc.value.status_code, exc.value.code) == (422, "backend_validation_error")
    assert moto_sm.backend()._models == {} and moto_sm.backend().endpoint_configs == {}


def _model_error(status: int, original: Any, message: str | None = None) -> dict[str, Any]:
    text = original if isinstance(original, str) else json.dumps(original)
    return {"code": "ModelError", "status": 424,
            "message": message or f'Received client error ({status}) from primary with message "{text}". See '
                                  "https://us-east-1.console.aws.amazon.com/cloudwatch/home for more information.",
            "fields": {"OriginalStatusCode": status, "OriginalMessage": text,
                       "LogStreamArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/x"}}


def _invoke_with_error(endpoints: SageMakerEndpointBackend, err: dict[str, Any]) -> AppError:
    handle = endpoints.deploy(make_spec())
    moto_sm.set_endpoint(ENDPOINT, "InService")
    rt = endpoints.invoke_client(30)
    attempts = moto_sm.fail_next(rt, "InvokeEndpoint", err["code"], err["message"], status=err["status"],
                                 fields=err["fields"])
    with pytest.raises(AppError) as exc:
        endpoints.invoke(handle, PAYLOAD, timeout=30)
    assert attempts == ["error"]  # a generation is never sent twice
    return exc.value


def _toolkit_body(status: int, code: str, message: str, param: str | None = None) -> str:
    """What the PyTorch inference toolkit answers for inference.py's InvokeError: its JSON message,
    a newline, then the traceback."""
    error = {"error": {"code": code, "message": message, "param": param, "details": None}}
    return json.dumps(error) + "\nTraceback (most recent call last):\n  File \"inference.py\", line 1\n"


def test_container_4xx_is_422_with_the_containers_message(endpoints: SageMakerEndpointBackend) -> None:
    err = _invoke_with_error(endpoints, _model_error(400, _toolkit_body(
        400, "invalid_parameters", "parameters.max_new_tokens: must be an integer between 1 and 4096",
        "parameters.max_new_tokens")))
    assert (err.status_code, err.code, err.param) == (422, "invalid_parameters", "parameters.max_new_tokens")
    assert err.message == "parameters.max_new_tokens: must be an integer between 1 and 4096"


def test_container_out_of_memory_is_503_with_the_reason(endpoints: SageMakerEndpointBackend) -> None:
    err = _invoke_with_error(endpoints, _model_error(503, _toolkit_body(
        503, "endpoint_out_of_memory", "the GPU ran out of memory for this request")))
    assert (err.status_code, err.code) == (503, "endpoint_out_of_memory")
    assert "ran out of memory" in err.message


def test_generation_past_the_invoke_limit_is_refused_naming_the_field(
        endpoints: SageMakerEndpointBackend) -> None:
    handle = endpoints.deploy(make_spec())
    with pytest.raises(AppError) as exc:
        endpoints.invoke(handle, {"inputs": "x", "parameters": {"max_new_tokens": 4096}}, timeout=30)
    assert (exc.value.status_code, exc.value.code, exc.value.param) == (
        422, "max_new_tokens_too_large", "parameters.max_new_tokens")


def test_container_4xx_in_serve_py_shape_keeps_code_and_param(endpoints: SageMakerEndpointBackend) -> None:
    err = _invoke_with_error(endpoints, _model_error(422, {"error": {
        "code": "invalid_parameters", "message": "temperature: must be >= 0", "param": "parameters.temperature",
        "details": [{"param": "parameters.temperature", "message": "must be >= 0"}]}}))
    assert (err.status_code, err.code, err.param) == (422, "invalid_parameters", "parameters.temperature")
    assert err.message == "temperature: must be >= 0"


def test_container_5xx_is_502(endpoints: SageMakerEndpointBackend) -> None:
    err = _invoke_with_error(endpoints, _model_error(500, "CUDA error: an illegal memory access\nTraceback..."))
    assert (err.status_code, err.code) == (502, "endpoint_error")
    assert "illegal memory access" in err.message and "Traceback" not in err.message
    assert err.details and err.details[0]["original_status_code"] == 500


def test_container_timeout_is_504(endpoints: SageMakerEndpointBackend) -> None:
    err = _invoke_with_error(endpoints, _model_error(
        0, "", message="Received server error (0) from primary with message \"Your invocation timed out while "
                       "waiting for a response from container primary.\""))
    assert (err.status_code, err.code) == (504, "generation_timeout")


def test_read_timeout_is_504_generation_timeout(endpoints: SageMakerEndpointBackend) -> None:
    handle = endpoints.deploy(make_spec())
    rt = endpoints.invoke_client(120)  # capped: SageMaker's 60 s and a margin for the container's answer
    assert rt.meta.config.read_timeout == 65 and rt.meta.config.retries["total_max_attempts"] == 1
    attempts = moto_sm.fail_next(rt, "InvokeEndpoint", exception=lambda req: ReadTimeoutError(endpoint_url=req.url))
    with pytest.raises(AppError) as exc:
        endpoints.invoke(handle, PAYLOAD, timeout=120)
    assert (exc.value.status_code, exc.value.code) == (504, "generation_timeout")
    assert "60 s" in exc.value.message
    assert attempts == ["error"]
    assert endpoints.invoke_client(90) is rt  # one client per timeout


def test_against_a_moto_server_through_the_endpoint_url_setting(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """As an operator configures it: LLMTUNER_AWS__ENDPOINT_URL for SageMaker and its runtime;
    invoke results queued over HTTP through moto's /moto-api/static/sagemaker/endpoint-results."""
    with moto_sm.moto_server(monkeypatch) as url:
        settings = make_settings(tmp_path, endpoint_url=url)
        backend = SageMakerEndpointBackend(settings, None)
        handle = backend.deploy(make_spec())
        assert backend.describe(handle).status == "Creating"
        moto_sm.set_endpoint(ENDPOINT, "InService")
        assert backend.describe(handle).status == "InService"
        moto_sm.queue_invoke_result(RESULT, server_url=url)
        assert backend.invoke(handle, PAYLOAD, timeout=10) == RESULT
        backend.delete(handle)
        assert backend.describe(handle).status == "Deleted"
