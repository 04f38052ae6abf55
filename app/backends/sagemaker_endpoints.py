"""SageMaker real-time endpoints: one SageMaker model (the PyTorch inference container,
`ModelDataUrl` = the job's model.tar.gz, which holds our `code/inference.py` handler and its
`code/requirements.txt`), one endpoint config and one endpoint, deleted together; invocations
within SageMaker's 60 s limit. docs/cloud.md has the whole picture.

A base-model endpoint (no model_key: the base and its LoRA adapters) goes the inference-component
way instead (app/backends/sagemaker_adapters.py); its handle carries `inference_components`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from app import aws
from app.backends.base import BackendEndpointStatus, EndpointSpec
from app.backends.sagemaker_adapters import SageMakerAdapterEndpoints, invoke_request, parse_answer
from app.backends.sagemaker_errors import (
    already_exists,
    aws_details,
    error_code,
    error_message,
    map_aws_error,
    not_found,
    scrubbed,
)
from app.backends.sagemaker_images import image_uri
from app.backends.sagemaker_inputs import hf_token, is_hub_id, upload_base_folder
from app.config import Settings
from app.errors import AppError, BackendError, GatewayTimeout, ServiceUnavailable, ValidationFailed

log = logging.getLogger("llmtuner.sagemaker")

VARIANT_NAME = "AllTraffic"
# The Hugging Face cache and the model cache on the endpoint's storage volume (/tmp).
ENDPOINT_SCRATCH = "/tmp"
# InvokeEndpoint gives the container 60 s to answer (real-time endpoints); nothing longer can take
# effect, so longer settings are capped, and generation stops a few seconds before, so that the
# model server's single worker is free again when SageMaker gives up.
SAGEMAKER_INVOKE_LIMIT_SECONDS = 60.0
GENERATION_MARGIN_SECONDS = 5.0
# SageMaker's EndpointStatus -> ours.
ENDPOINT_STATES = {
    "Creating": "Creating", "InService": "InService", "Updating": "Updating", "SystemUpdating": "Updating",
    "RollingBack": "Updating", "UpdateRollbackFailed": "Failed", "Deleting": "Deleting", "Failed": "Failed",
    "OutOfService": "OutOfService",
}
COMPONENTS = "inference_components"  # the handle key of a base-model endpoint
# Instance families with local NVMe storage: SageMaker refuses a volume KMS key for them (their
# local volumes are encrypted by the instance's hardware module).
_LOCAL_STORAGE_FAMILY = re.compile(
    r"^ml\.(g4dn|g5|g6|g6e|gr6|p4d|p4de|p5|p5e|p5en|m5d|c5d|r5d|m6id|c6id|r6id|x2iedn|inf2|trn1|trn1n|trn2)\."
)


def derived_name(endpoint_name: str, kind: str, token: str) -> str:
    """`{endpoint}-{kind}-{token}` within SageMaker's 63 characters (the endpoint part is cut)."""
    tail = f"-{kind}-{token}"
    return endpoint_name[: 63 - len(tail)].rstrip("-") + tail


def _container_error(original: str) -> tuple[str, str | None, str | None, Any]:
    """(message, code, param, details) out of the model server's error body.

    The PyTorch inference toolkit answers an error with its message followed by a newline and the
    traceback: inference.py's message is a JSON object, read here up to its end.
    """
    try:
        body, _ = json.JSONDecoder().raw_decode(original.strip())
    except ValueError:
        first = original.strip().split("\n", 1)[0]
        return first or "The model server refused the request", None, None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # serve.py's shape
        err = body["error"]
        return str(err.get("message") or original), err.get("code"), err.get("param"), err.get("details")
    if isinstance(body, dict) and body.get("message"):  # the inference toolkit's {"code", "type", "message"}
        return str(body["message"]), None, None, None
    return original, None, None, None


class SageMakerEndpointBackend:
    """SageMaker real-time endpoints. Handle keys: endpoint_name, model_name, config_name, region,
    instance_type, instance_count, created_at, and deleting (set by delete())."""

    name = "sagemaker"

    def __init__(self, settings: Settings, store: Any, *, sagemaker_client: Any = None) -> None:
        self.settings, self.store = settings, store
        self.sm = sagemaker_client or aws.client(settings, "sagemaker")
        self._runtime: dict[float, Any] = {}
        self._lock = threading.Lock()
        self.components = SageMakerAdapterEndpoints(self.sm, None, store, settings.aws.role_arn, settings.aws.region,
                                                    hf_token=lambda: hf_token(settings))

    @contextmanager
    def _aws(self, op: str, missing_ok: bool = False) -> Iterator[None]:
        """AWS errors as the API's (without the Hugging Face token a request may carry)."""
        try:
            yield
        except ClientError as e:
            if missing_ok and not_found(e):
                return
            raise scrubbed(map_aws_error(e, op), hf_token(self.settings)) from None
        except BotoCoreError as e:
            raise map_aws_error(e, op) from e

    @property
    def invoke_limit(self) -> float:
        """Seconds an invocation may take: the setting, capped at what SageMaker allows."""
        return min(float(self.settings.invoke_timeout_seconds), SAGEMAKER_INVOKE_LIMIT_SECONDS)

    def invoke_client(self, timeout: float) -> Any:
        """The runtime client of an invocation given `timeout` seconds: it waits a little beyond
        the (capped) limit, so that the container's own answer, a timeout error, can arrive."""
        return self.runtime_client(min(float(timeout), self.invoke_limit) + GENERATION_MARGIN_SECONDS)

    def runtime_client(self, timeout: float) -> Any:
        """A sagemaker-runtime client that waits `timeout` seconds for an answer and does not retry:
        a retried generation would run (and bill) again, and its wait would add up."""
        key = round(max(1.0, float(timeout)), 1)
        with self._lock:
            c = self._runtime.get(key)
            if c is None:
                c = aws.client(self.settings, "sagemaker-runtime", read_timeout=key,
                            retries={"mode": "adaptive", "total_max_attempts": 1})
                self._runtime[key] = c
            return c

    def _tags(self, spec: EndpointSpec) -> list[dict[str, str]]:
        return [{"Key": "llmtuner:user-id", "Value": spec.user_id},
                {"Key": "llmtuner:endpoint-name", "Value": spec.endpoint_name}]

    def model_request(self, spec: EndpointSpec, model_name: str) -> dict[str, Any]:
        aws_cfg = self.settings.aws
        env = {
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            "SAGEMAKER_REGION": aws_cfg.region,
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(int(self.invoke_limit)),
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
            # TorchServe gives a worker 120 s to load its model by default; a 7B base from the hub
            # takes longer (the endpoint's health check allows 900 s).
            "TS_DEFAULT_STARTUP_TIMEOUT": "900",
            "LLMTUNER_GENERATION_DEADLINE_SECONDS": str(max(1.0, self.invoke_limit - GENERATION_MARGIN_SECONDS)),
            "HF_HOME": f"{ENDPOINT_SCRATCH}/hf_home",
            "LLMTUNER_MODEL_CACHE": f"{ENDPOINT_SCRATCH}/llmtuner-model-cache",
        }
        base = spec.base_model_source
        if base and is_hub_id(base):
            env["LLMTUNER_BASE_MODEL"] = base
        elif base:
            # Not in the hub: a copy in S3, which inference.py downloads unless model.tar.gz
            # bundles the base (train.py bundles small ones).
            prefix = base if base.startswith("s3://") else str(self.store.uri(
                upload_base_folder(self.store, spec.user_id, Path(base).expanduser())))
            env["LLMTUNER_BASE_MODEL_S3_URI"] = prefix if prefix.endswith("/") else prefix + "/"
        token = hf_token(self.settings)
        if token:
            env["HF_TOKEN"] = token
        req: dict[str, Any] = {
            "ModelName": model_name,
            "PrimaryContainer": {"Image": image_uri("inference", aws_cfg.region, self.settings),
                                 "ModelDataUrl": spec.model_uri, "Environment": env},
            "ExecutionRoleArn": aws_cfg.role_arn,
            "Tags": self._tags(spec),
        }
        if aws_cfg.vpc_subnet_ids:
            req["VpcConfig"] = {"Subnets": list(aws_cfg.vpc_subnet_ids),
                                "SecurityGroupIds": list(aws_cfg.vpc_security_group_ids)}
        return req

    def endpoint_config_request(self, spec: EndpointSpec, config_name: str, model_name: str) -> dict[str, Any]:
        req: dict[str, Any] = {
            "EndpointConfigName": config_name,
            "ProductionVariants": [{
                "VariantName": VARIANT_NAME, "ModelName": model_name, "InstanceType": spec.instance_type,
                "InitialInstanceCount": spec.instance_count, "InitialVariantWeight": 1.0,
                # Loading an LLM takes a while: more than the 60 s SageMaker gives by default.
                "ContainerStartupHealthCheckTimeoutInSeconds": 900,
                "ModelDataDownloadTimeoutInSeconds": 1200,
            }],
            "Tags": self._tags(spec),
        }
        if self.settings.aws.kms_key_id and not _LOCAL_STORAGE_FAMILY.match(spec.instance_type):
            req["KmsKeyId"] = self.settings.aws.kms_key_id
        return req

    def _create(self, op: str, req: dict[str, Any], ours: Any = None) -> None:
        try:
            getattr(self.sm, op)(**req)
        except ClientError as e:
            # A retried request whose first attempt got through (names carry a fresh token, so an
            # existing model or config of that name is ours; an endpoint is checked by its config).
            if already_exists(e) and (ours is None or ours()):
                return
            token = (req.get("PrimaryContainer") or {}).get("Environment", {}).get("HF_TOKEN")
            raise scrubbed(map_aws_error(e, op), token) from (None if token else e)
        except BotoCoreError as e:
            raise map_aws_error(e, op) from e

    def _delete_quietly(self, op: str, **kw: str) -> None:
        try:
            getattr(self.sm, op)(**kw)
        except (ClientError, BotoCoreError) as e:
            log.warning("cleanup %s %s failed: %s", op, kw, e)

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]:
        if not spec.model_key:  # a base-model endpoint: the base and each adapter as inference components
            return self._deploy_components(spec)
        token = hashlib.sha256(f"{spec.endpoint_name}|{spec.model_uri}|{time.time_ns()}".encode()).hexdigest()[:8]
        model_name = derived_name(spec.endpoint_name, "model", token)
        config_name = derived_name(spec.endpoint_name, "config", token)
        self._create("create_model", self.model_request(spec, model_name))
        try:
            self._create("create_endpoint_config", self.endpoint_config_request(spec, config_name, model_name))
        except AppError:
            self._delete_quietly("delete_model", ModelName=model_name)
            raise

        def endpoint_is_ours() -> bool:
            try:
                return bool(self.sm.describe_endpoint(EndpointName=spec.endpoint_name)
                            .get("EndpointConfigName") == config_name)
            except (ClientError, BotoCoreError):
                return False

        try:
            self._create("create_endpoint", {"EndpointName": spec.endpoint_name, "EndpointConfigName": config_name,
                                             "Tags": self._tags(spec)}, ours=endpoint_is_ours)
        except AppError:
            self._delete_quietly("delete_endpoint_config", EndpointConfigName=config_name)
            self._delete_quietly("delete_model", ModelName=model_name)
            raise
        return {"endpoint_name": spec.endpoint_name, "model_name": model_name, "config_name": config_name,
                "region": self.settings.aws.region, "instance_type": spec.instance_type,
                "instance_count": spec.instance_count, "created_at": time.time()}

    def _deploy_components(self, spec: EndpointSpec) -> dict[str, Any]:
        source = spec.base_model_source or ""
        if source and not is_hub_id(source) and not source.startswith("s3://"):  # a local folder: via S3
            source = str(self.store.uri(upload_base_folder(self.store, spec.user_id, Path(source).expanduser())))
            source = source if source.endswith("/") else source + "/"
        with self._aws("create_endpoint"):
            handle = self.components.deploy(replace(spec, base_model_source=source))
        return {**handle, COMPONENTS: True, "config_name": spec.endpoint_name, "region": self.settings.aws.region,
                "instance_type": spec.instance_type, "instance_count": spec.instance_count,
                "created_at": time.time()}

    def attach_adapter(self, handle: dict[str, Any], name: str, key: str) -> None:
        """A new adapter component on the running endpoint; the base keeps serving meanwhile."""
        with self._aws("create_inference_component"):
            self.components.attach_adapter(handle, name, key)

    def detach_adapter(self, handle: dict[str, Any], name: str) -> None:
        with self._aws("delete_inference_component", missing_ok=True):
            self.components.detach_adapter(handle, name)

    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus:
        if handle.get(COMPONENTS) and not handle.get("deleting"):
            try:  # creates the base component once the endpoint is up, then the adapters'
                st = self.components.describe(handle)
            except ClientError as e:
                if not not_found(e):  # a vanished endpoint is reported below, as for any endpoint
                    raise scrubbed(map_aws_error(e, "create_inference_component"), hf_token(self.settings)) from None
            except BotoCoreError as e:
                raise map_aws_error(e, "describe_endpoint") from e
            else:
                return BackendEndpointStatus(ENDPOINT_STATES.get(st.status, "Creating"), st.failure_reason or None,
                                             st.handle_update)
        name = handle["endpoint_name"]
        try:
            d = self.sm.describe_endpoint(EndpointName=name)
        except ClientError as e:
            if not_found(e):
                if handle.get("deleting"):
                    return BackendEndpointStatus("Deleted")
                return BackendEndpointStatus("Failed", f"The SageMaker endpoint {name} no longer exists "
                                                       "(it was deleted outside LLM Tuner)")
            raise map_aws_error(e, "describe_endpoint") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "describe_endpoint") from e
        status = ENDPOINT_STATES.get(str(d.get("EndpointStatus")), "Creating")
        if handle.get("deleting") and status != "Failed":
            status = "Deleting"
        return BackendEndpointStatus(status, d.get("FailureReason") or None)

    def _refuse_long_generation(self, payload: dict[str, Any]) -> None:
        params = payload.get("parameters")
        wanted = params.get("max_new_tokens") if isinstance(params, dict) else None
        cap = self.settings.aws.max_invoke_new_tokens
        if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > cap:
            raise ValidationFailed(
                f"max_new_tokens {wanted} is over {cap}, the most a SageMaker real-time endpoint is allowed "
                f"to generate in one call (it must answer within {SAGEMAKER_INVOKE_LIMIT_SECONDS:.0f} s); ask "
                "for fewer tokens", code="max_new_tokens_too_large", param="parameters.max_new_tokens")

    def invoke(self, handle: dict[str, Any], payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        self._refuse_long_generation(payload)
        if handle.get(COMPONENTS):  # the adapter's (or the base's) inference component, in LMI's shape
            out = self._invoke(invoke_request(handle["endpoint_name"], payload), timeout)
            return [parse_answer(out[0] if isinstance(out, list) else out)]
        out = self._invoke({"EndpointName": handle["endpoint_name"], "ContentType": "application/json",
                            "Accept": "application/json", "Body": json.dumps(payload).encode("utf-8")}, timeout)
        return out if isinstance(out, list) else [out]

    def _invoke(self, request: dict[str, Any], timeout: float) -> Any:
        timeout = min(float(timeout), self.invoke_limit)
        client = self.invoke_client(timeout)
        try:
            r = client.invoke_endpoint(**request)
            body = r["Body"].read()
        except ReadTimeoutError as e:
            raise GatewayTimeout(f"Generation did not finish within {timeout:.0f} s (a SageMaker real-time "
                                 f"endpoint answers within {SAGEMAKER_INVOKE_LIMIT_SECONDS:.0f} s at most); ask "
                                 "for fewer max_new_tokens", code="generation_timeout") from e
        except ClientError as e:
            if error_code(e) == "ModelError":
                raise self._model_error(e, timeout) from e
            raise map_aws_error(e, "invoke_endpoint") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "invoke_endpoint") from e
        try:
            return json.loads(body)
        except ValueError as e:
            raise BackendError("The endpoint's answer is not JSON", code="endpoint_error",
                               details=[body[:1000].decode("utf-8", "replace")]) from e

    def _model_error(self, e: ClientError, timeout: float) -> AppError:
        """The container answered with an error (SageMaker's ModelError, HTTP 424)."""
        original = str(e.response.get("OriginalMessage") or "")
        raw_status = e.response.get("OriginalStatusCode")
        status: int | None = int(raw_status) if isinstance(raw_status, int | str) and str(raw_status).isdigit() \
            else None
        if status is None:
            m = re.search(r"\((\d{3})\)", error_message(e))
            status = int(m.group(1)) if m else None
        details = aws_details(e)
        details[0].update(original_status_code=status, log_stream_arn=e.response.get("LogStreamArn"))
        message, code, param, more = _container_error(original or error_message(e))
        if status == 504 or "timed out" in (error_message(e) + original).lower():
            return GatewayTimeout(f"Generation did not finish in time on the endpoint (limit {timeout:.0f} s); "
                                  "ask for fewer max_new_tokens", code="generation_timeout", details=details)
        if status is not None and 400 <= status < 500:
            return ValidationFailed(message, code=code or "invalid_parameters", param=param,
                                    details=more if more is not None else details)
        if status in (503, 507):  # inference.py: the GPU ran out of memory, or the model is not loaded
            return ServiceUnavailable(f"The endpoint cannot serve this request now: {message}",
                                      code=code or "endpoint_unavailable", details=details,
                                      headers={"Retry-After": "10"})
        return BackendError(f"The endpoint's model server failed: {message}", code=code or "endpoint_error",
                            details=details)

    def delete(self, handle: dict[str, Any]) -> None:
        handle["deleting"] = True
        if handle.get(COMPONENTS):  # adapter components, the base's, the endpoint and its config
            with self._aws("delete_endpoint", missing_ok=True):
                self.components.delete(handle)
            return
        for op, kw in (("delete_endpoint", {"EndpointName": handle["endpoint_name"]}),
                       ("delete_endpoint_config", {"EndpointConfigName": handle.get("config_name")}),
                       ("delete_model", {"ModelName": handle.get("model_name")})):
            if not all(kw.values()):
                continue
            try:
                getattr(self.sm, op)(**kw)
            except ClientError as e:
                if not not_found(e):
                    raise map_aws_error(e, op) from e
            except BotoCoreError as e:
                raise map_aws_error(e, op) from e
