"""The one test helper that patches moto's SageMaker gaps and drives its states as AWS would.

What moto (checked against 5.2.5) does differently from SageMaker, and what `install()` changes:

1. `create_training_job` creates a job that is already Completed (with artifacts, a made-up
   FinalMetricDataList, and the caller's MetricDefinitions overwritten by moto's own).
   -> New jobs start InProgress / Starting, with no artifacts, no end time, no final metrics, one
      "Starting" transition, and the MetricDefinitions they were created with.
2. `create_endpoint` creates an endpoint that is already InService.
   -> New endpoints start Creating.
3. `create_endpoint_config` accepts only an old hard-coded list of instance types (no ml.g5, ml.g6,
   ml.p4d ...). -> Any `ml.*` instance type is accepted, as AWS does for the types a region offers.
4. `stop_training_job` is not implemented. -> Added: InProgress -> Stopping (then drive it to
   Stopped with `set_training_job`); a job in any other state answers ValidationException.
5. `update_endpoint` is not implemented. -> Added: the endpoint switches config and is Updating.

Driving states (moto's backend objects live in this process, also behind a ThreadedMotoServer):
`set_training_job(name, status=..., secondary=..., failure_reason=..., billable_seconds=...,
artifacts=..., final_metrics=...)` sets the fields describe_training_job returns and appends a
SecondaryStatusTransition when the secondary status changes; `set_endpoint(name, status, reason)`;
`queue_invoke_result(body)` queues what the next invoke_endpoint answers (moto's
/moto-api/static/sagemaker/endpoint-results, through its in-process backend or over HTTP).

Errors AWS gives and moto never does (ResourceLimitExceeded, ThrottlingException, ModelError, read
timeouts): `fail_next(client, operation, ...)` answers the next attempts of one operation of one
client with that error before moto sees them (a botocore `before-send` hook, which runs once per
HTTP attempt), so botocore's retry handling runs on them exactly as on AWS's responses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import boto3.session
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.core.responses import EmptyResult
from moto.sagemaker import models as sm_models
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"

# The default artifact path moto computes for each job, kept until the job is driven to Completed.
_artifact_paths: dict[str, str] = {}


def _now() -> datetime:
    return datetime.now(UTC)


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch moto's SageMaker gaps (1-5 in the module docstring) for the rest of the test."""
    orig_job_init = sm_models.FakeTrainingJob.__init__

    def job_init(self: Any, *args: Any, **kwargs: Any) -> None:
        spec = kwargs.get("algorithm_specification") or {}
        metric_definitions = spec.get("MetricDefinitions")
        orig_job_init(self, *args, **kwargs)
        if metric_definitions is None:
            self.algorithm_specification.pop("MetricDefinitions", None)
        else:
            self.algorithm_specification["MetricDefinitions"] = metric_definitions
        _artifact_paths[self.training_job_name] = self.model_artifacts["S3ModelArtifacts"]
        self.model_artifacts = None  # describe leaves out None fields, as AWS does until the end
        self.training_job_status, self.secondary_status = "InProgress", "Starting"
        self.training_start_time = self.training_end_time = None
        self.final_metric_data_list = None
        self.secondary_status_transitions = [
            {"Status": "Starting", "StartTime": self.creation_time,
             "StatusMessage": "Launching requested ML instances"},
        ]

    orig_endpoint_init = sm_models.FakeEndpoint.__init__

    def endpoint_init(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_endpoint_init(self, *args, **kwargs)
        self.endpoint_status = "Creating"

    orig_validate = sm_models.FakeEndpointConfig.validate_instance_type

    def validate_instance_type(self: Any, instance_type: str) -> None:
        if not str(instance_type).startswith("ml."):
            orig_validate(self, instance_type)

    def backend_stop_training_job(self: Any, training_job_name: str) -> None:
        job = self.training_jobs.get(training_job_name)
        if job is None:
            arn = sm_models.FakeTrainingJob.arn_formatter(training_job_name, self.account_id, self.region_name)
            raise ValidationError(message=f"Could not find training job '{arn}'.")
        if job.training_job_status != "InProgress":
            raise ValidationError(message=f"The request was rejected because the training job is in status "
                                          f"{job.training_job_status}.")
        _transition(job, "Stopping", "Stopping the training job")
        job.training_job_status = "Stopping"

    def response_stop_training_job(self: Any) -> EmptyResult:
        self.sagemaker_backend.stop_training_job(self._get_param("TrainingJobName"))
        return EmptyResult()

    def backend_update_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str) -> Any:
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None:
            arn = sm_models.FakeEndpoint.arn_formatter(endpoint_name, self.account_id, self.region_name)
            raise ValidationError(message=f"Could not find endpoint '{arn}'.")
        self.describe_endpoint_config(endpoint_config_name)  # ValidationException when missing
        endpoint.endpoint_config_name = endpoint_config_name
        endpoint.endpoint_status = "Updating"
        endpoint.last_modified_time = _now()
        return endpoint

    def response_update_endpoint(self: Any) -> Any:
        from moto.core.responses import ActionResult

        endpoint = self.sagemaker_backend.update_endpoint(self._get_param("EndpointName"),
                                                          self._get_param("EndpointConfigName"))
        return ActionResult({"EndpointArn": endpoint.arn})

    monkeypatch.setattr(sm_models.FakeTrainingJob, "__init__", job_init)
    monkeypatch.setattr(sm_models.FakeEndpoint, "__init__", endpoint_init)
    monkeypatch.setattr(sm_models.FakeEndpointConfig, "validate_instance_type", validate_instance_type)
    monkeypatch.setattr(sm_models.SageMakerModelBackend, "stop_training_job", backend_stop_training_job,
                        raising=False)
    monkeypatch.setattr(SageMakerResponse, "stop_training_job", response_stop_training_job, raising=False)
    monkeypatch.setattr(sm_models.SageMakerModelBackend, "update_endpoint", backend_update_endpoint, raising=False)
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", response_update_endpoint, raising=False)


@contextmanager
def moto_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials, no AWS settings from the environment, the patches above, and mock_aws."""
    for var in list(os.environ):
        if var.startswith("AWS_") or var.startswith("LLMTUNER_AWS"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    install(monkeypatch)
    # app.aws.client makes a new boto3 Session per client, which parses the service's model again
    # (0.5-1 s each); tests share one session so that clients take milliseconds. The clients are
    # still app.aws.client's, with its Config (adaptive retries, timeouts, endpoint URL).
    shared = _shared_session()
    monkeypatch.setattr(boto3.session, "Session", lambda *a, **kw: shared if not a and not kw else _Session(*a, **kw))
    with mock_aws():
        yield
    _artifact_paths.clear()


_Session = boto3.session.Session
_shared: list[Any] = []


def _shared_session() -> Any:
    if not _shared:
        _shared.append(_Session())
    return _shared[0]


@contextmanager
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A ThreadedMotoServer on 127.0.0.1 (a port the OS picks), with the patches above; yields its URL.

    It serves from this process's moto backends, so the functions below drive it too. Its state is
    reset before and after."""
    import httpx
    from moto.server import ThreadedMotoServer

    for var in list(os.environ):
        if var.startswith("AWS_") or var.startswith("LLMTUNER_AWS"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    install(monkeypatch)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    httpx.post(f"{url}/moto-api/reset").raise_for_status()
    try:
        yield url
    finally:
        httpx.post(f"{url}/moto-api/reset")
        server.stop()
        _artifact_paths.clear()


def backend(region: str = REGION) -> Any:
    return sm_models.sagemaker_backends[ACCOUNT][region]


def _transition(job: Any, status: str, message: str) -> None:
    transitions = job.secondary_status_transitions or []
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = _now()
    transitions.append({"Status": status, "StartTime": _now(), "StatusMessage": message})
    job.secondary_status_transitions = transitions
    job.secondary_status = status


def set_training_job(
    name: str, *, status: str | None = None, secondary: str | None = None, message: str | None = None,
    failure_reason: str | None = None, billable_seconds: int | None = None, artifacts: str | bool | None = None,
    final_metrics: dict[str, float] | None = None, region: str = REGION,
) -> Any:
    """Move moto's training job as SageMaker would. `artifacts=True` puts the path SageMaker would
    write (S3OutputPath/name/output/model.tar.gz); a job driven to Completed gets it by default."""
    job = backend(region).training_jobs[name]
    if secondary is not None and secondary != job.secondary_status:
        _transition(job, secondary, message or f"{secondary} the training job")
        if secondary == "Training" and job.training_start_time is None:
            job.training_start_time = _now()
    if status is not None:
        job.training_job_status = status
        if status in ("Completed", "Failed", "Stopped"):
            job.training_end_time = _now()
            if secondary is None and job.secondary_status != status:
                _transition(job, status, message or f"Training job {status.lower()}")
            if status == "Completed" and artifacts is None:
                artifacts = True
    if failure_reason is not None:
        job.failure_reason = failure_reason
    if billable_seconds is not None:
        job.billable_time_in_seconds = billable_seconds
    if artifacts:
        path = artifacts if isinstance(artifacts, str) else _artifact_paths[name]
        job.model_artifacts = {"S3ModelArtifacts": path}
    if final_metrics is not None:
        job.final_metric_data_list = [{"MetricName": k, "Value": float(v), "Timestamp": _now()}
                                      for k, v in final_metrics.items()]
    job.last_modified_time = _now()
    return job


def set_endpoint(name: str, status: str, failure_reason: str | None = None, region: str = REGION) -> Any:
    endpoint = backend(region).endpoints[name]
    endpoint.endpoint_status = status
    if failure_reason is not None:
        endpoint.failure_reason = failure_reason
    endpoint.last_modified_time = _now()
    return endpoint


def queue_invoke_result(body: Any, *, content_type: str = "application/json", server_url: str | None = None,
                        region: str = REGION) -> None:
    """Queue the body the next invoke_endpoint answers (a new request body takes the next result;
    moto answers the same request body with the same result again)."""
    text = body if isinstance(body, str) else json.dumps(body)
    result = {"Body": text, "ContentType": content_type, "InvokedProductionVariant": "AllTraffic"}
    if server_url:
        import httpx

        r = httpx.post(f"{server_url}/moto-api/static/sagemaker/endpoint-results",
                       json={"account_id": ACCOUNT, "region": region, "results": [result]})
        r.raise_for_status()
        return
    from moto.moto_api._internal import moto_api_backend

    moto_api_backend.set_sagemaker_result(body=text, content_type=content_type, prod_variant="AllTraffic",
                                          custom_attrs="", account_id=ACCOUNT, region=region)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def fail_next(
    client: Any, operation: str, code: str | None = None, message: str = "", *, times: int = 1, status: int = 400,
    fields: dict[str, Any] | None = None, exception: Callable[[Any], BaseException] | None = None,
) -> list[str]:
    """Answer the next `times` HTTP attempts of `client`'s `operation` (e.g. "CreateTrainingJob") with
    AWS error `code` (or raise `exception(request)`, e.g. a read timeout). Returns a list that
    records each attempt ("error" or "passed"), to count what botocore sent."""
    attempts: list[str] = []
    event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if len([a for a in attempts if a == "error"]) >= times:
            attempts.append("passed")
            return None
        attempts.append("error")
        # Every before-send handler runs, moto's too: point this attempt at a host moto does not
        # serve, so that moto leaves it alone (the first response, ours, is the one botocore uses).
        request.url = "https://moto-fail-next.invalid/"
        if exception is not None:
            raise exception(request)
        body = json.dumps({"__type": code, "message": message, "Message": message, **(fields or {})}).encode()
        headers = {"x-amzn-RequestId": "moto-fail-next", "x-amzn-ErrorType": str(code),
                   "Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, status, headers, _Raw(body))  # type: ignore[arg-type]

    client.meta.events.register_first(event, hook)
    return attempts


def fast_retries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No waiting between botocore's retries (its exponential backoff and the adaptive mode's
    client-side rate limiter); the retry decisions stay botocore's. Returns a list that grows by
    one each time the adaptive rate limiter is asked for a send token (it is only asked in
    adaptive mode, once a throttling error has switched it on)."""
    from botocore.retries import bucket, standard

    acquired: list[int] = []

    def acquire(self: Any, amount: int = 1, block: bool = True) -> bool:
        acquired.append(amount)
        return True

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    monkeypatch.setattr(bucket.TokenBucket, "acquire", acquire)
    return acquired
