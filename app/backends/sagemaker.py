"""The cloud shape: SageMaker training jobs and endpoints through boto3.

The `sagemaker` SDK is never imported here (it is 0.3-1 GB and slow to import): requests are built
by hand, in the form the SDK's HuggingFace estimator and model would send.

Training: `training_scripts/` goes up once per content version as `sourcedir.tar.gz` (a per-user,
content-hashed key) and is run by the Hugging Face PyTorch training container through the
`sagemaker_program` / `sagemaker_submit_directory` hyperparameters (all hyperparameter values are
JSON-encoded strings, as the training toolkit expects). train.py writes model.tar.gz to
`{S3OutputPath}/{job_name}/output/model.tar.gz`, i.e. `users/{user_id}/models/{job_name}/output/`.
Status comes from `describe_training_job`; metric and event lines from the job's CloudWatch log
streams (`/aws/sagemaker/TrainingJobs`, `{job_name}/algo-1-...`), read by sagemaker_logs.LogReader.
A base model that is not on the hub reaches jobs and endpoints from a content-addressed copy in S3
(sagemaker_inputs), and the Hugging Face token as HF_TOKEN.

Endpoints: one SageMaker model (the PyTorch inference container, `ModelDataUrl` = the job's
model.tar.gz, which holds our `code/inference.py` handler and its `code/requirements.txt`), one
endpoint config, one endpoint; all three are deleted together. docs/cloud.md has the whole picture.

Every boto3 call runs in the worker or a request thread, never on the event loop. Throttling is
retried by botocore's adaptive retry mode (app/aws.py); what still fails is mapped to the API's
errors by `map_aws_error`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from app import aws, catalog
from app.backends import process
from app.backends.base import BackendEndpointStatus, BackendJobStatus, Backends, EndpointSpec, TrainingSpec
from app.backends.sagemaker_images import image_uri
from app.backends.sagemaker_inputs import hf_token, is_hub_id, upload_base_folder
from app.backends.sagemaker_logs import TRAINING_LOG_GROUP as TRAINING_LOG_GROUP  # re-exported
from app.backends.sagemaker_logs import LogReader
from app.backends.sagemaker_metrics import METRIC_DEFINITIONS, final_metrics_line
from app.config import PLACEHOLDER_ROLE_ARN, Settings
from app.errors import AppError, BackendError, GatewayTimeout, ServiceUnavailable, ValidationFailed

log = logging.getLogger("llmtuner.sagemaker")

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TRAINING_VOLUME_GB = 50
VARIANT_NAME = "AllTraffic"
# The Hugging Face cache on the disk that holds the job's data (SageMaker mounts its ML storage
# volume, or the instance's NVMe store, at /opt/ml; the root disk is small) and, on an endpoint,
# on its storage volume at /tmp.
TRAINING_HF_HOME = "/opt/ml/input/hf_home"
ENDPOINT_SCRATCH = "/tmp"
# InvokeEndpoint gives the container 60 s to answer (real-time endpoints); nothing longer can take
# effect, so longer settings are capped, and generation stops a few seconds before, so that the
# model server's single worker is free again when SageMaker gives up.
SAGEMAKER_INVOKE_LIMIT_SECONDS = 60.0
GENERATION_MARGIN_SECONDS = 5.0
# A job that describe_training_job does not know yet is given this long before it counts as lost.
MISSING_JOB_GRACE_SECONDS = 300

# SageMaker's TrainingJobStatus -> ours (the same words; anything new counts as still running).
JOB_STATES = {s: s for s in ("InProgress", "Completed", "Failed", "Stopping", "Stopped")}
# SageMaker's EndpointStatus -> ours.
ENDPOINT_STATES = {
    "Creating": "Creating", "InService": "InService", "Updating": "Updating", "SystemUpdating": "Updating",
    "RollingBack": "Updating", "UpdateRollbackFailed": "Failed", "Deleting": "Deleting", "Failed": "Failed",
    "OutOfService": "OutOfService",
}
THROTTLING_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException", "SlowDown",
    "ProvisionedThroughputExceededException",
})
# Instance families with local NVMe storage: SageMaker refuses a volume KMS key for them (their
# local volumes are encrypted by the instance's hardware module).
_LOCAL_STORAGE_FAMILY = re.compile(
    r"^ml\.(g4dn|g5|g6|g6e|gr6|p4d|p4de|p5|p5e|p5en|m5d|c5d|r5d|m6id|c6id|r6id|x2iedn|inf2|trn1|trn1n|trn2)\."
)


# --------------------------------------------------------------------------- errors


def _aws_details(exc: ClientError) -> list[dict[str, Any]]:
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    return [{
        "aws_code": err.get("Code"), "aws_message": err.get("Message"), "aws_operation": exc.operation_name,
        "aws_request_id": meta.get("RequestId"), "retry_attempts": meta.get("RetryAttempts"),
    }]


def map_aws_error(exc: BaseException, action: str) -> AppError:
    """One AWS failure as the API's error.

    ResourceLimitExceeded -> 429 capacity_unavailable (the quota named); ValidationException -> 422
    backend_validation_error; throttling that outlived botocore's retries -> 503 backend_throttled;
    anything else -> 502 backend_error (or backend_unreachable when AWS could not be reached).
    AWS's own code and message are always in `details`.
    """
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        message = str(err.get("Message") or "").strip()
        details = _aws_details(exc)
        if code == "ResourceLimitExceeded":
            m = re.search(r"limit '([^']+)'", message)
            what = f"the AWS quota '{m.group(1)}' is used up" if m else f"AWS says: {message}"
            return AppError(
                f"SageMaker has no capacity for this request: {what}. Request an increase in AWS Service "
                "Quotas (Amazon SageMaker), wait for running jobs or endpoints to end, or choose another "
                "instance type.",
                status_code=429, code="capacity_unavailable", details=details,
            )
        if code in THROTTLING_CODES:
            return ServiceUnavailable(
                f"SageMaker is throttling requests ({action}) and the retries ran out; try again shortly",
                code="backend_throttled", details=details, headers={"Retry-After": "30"},
            )
        if code in ("ValidationException", "ValidationError"):
            return ValidationFailed(f"SageMaker rejected the request ({action}): {message}",
                                    code="backend_validation_error", details=details)
        return BackendError(f"SageMaker {action} failed: {code}: {message}", details=details)
    if isinstance(exc, BotoCoreError):
        return BackendError(f"AWS could not be reached ({action}): {exc}", code="backend_unreachable",
                            details=[{"error": type(exc).__name__, "message": str(exc)}])
    return BackendError(f"SageMaker {action} failed: {exc}", details=[{"error": type(exc).__name__}])


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def _not_found(exc: ClientError) -> bool:
    msg = _message(exc).lower()
    return _code(exc) in ("ResourceNotFound", "ResourceNotFoundException", "NoSuchEntity") or (
        _code(exc) in ("ValidationException", "ValidationError")
        and ("could not find" in msg or "does not exist" in msg or "not found" in msg)
    )


def _already_exists(exc: ClientError) -> bool:
    msg = _message(exc).lower()
    return _code(exc) in ("ResourceInUse", "ResourceInUseException") or (
        _code(exc) in ("ValidationException", "ValidationError") and ("already exist" in msg or "unique" in msg)
    )


def _client(settings: Settings, service: str, **overrides: Any) -> Any:
    return aws.client(settings, service, **overrides)


# --------------------------------------------------------------------------- sourcedir.tar.gz

_SOURCE_CACHE: dict[str, bytes] = {}
_SOURCE_LOCK = threading.Lock()


def source_files(root: Path) -> list[Path]:
    """The files of training_scripts/ that go into sourcedir.tar.gz (no caches, no hidden files)."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p.suffix in (".pyc", ".pyo"):
            continue
        out.append(p)
    return out


def package_source(root: Path = process.SCRIPTS) -> tuple[str, bytes]:
    """(sha256 of the scripts' names and contents, a reproducible sourcedir.tar.gz of them).

    The tarball is built once per content version per process; the same content always gives the
    same bytes (sorted entries, zero mtimes and owners, gzip without a timestamp).
    """
    files = source_files(root)
    contents = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]
    h = hashlib.sha256()
    for name, data in contents:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    digest = h.hexdigest()
    with _SOURCE_LOCK:
        cached = _SOURCE_CACHE.get(digest)
    if cached is not None:
        return digest, cached
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in contents:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if name.endswith(".py") else 0o644
            tar.addfile(info, io.BytesIO(data))
    with _SOURCE_LOCK:
        _SOURCE_CACHE[digest] = buf.getvalue()
    return digest, buf.getvalue()


def source_key(user_id: str, digest: str) -> str:
    # Per user (a job never reads another user's prefix) and per content version, outside any one
    # job's folder so that deleting a job leaves the code of the user's other jobs in place.
    return f"users/{user_id}/models/_source/sourcedir-{digest[:12]}.tar.gz"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return None if value is None else str(value)


def _seconds_since(value: Any, until: Any = None) -> int | None:
    if not isinstance(value, datetime):
        return None
    start = value if value.tzinfo else value.replace(tzinfo=UTC)
    end = until if isinstance(until, datetime) else datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0, int((end - start).total_seconds()))


# --------------------------------------------------------------------------- training


class SageMakerTrainingBackend:
    """SageMaker training jobs. Handle keys: job_name, arn, region, source_uri, output_path,
    submitted_at, transitions_seen (SecondaryStatusTransitions already reported), final_reported
    (FinalMetricDataList sent), and LogReader's log_streams, log_tokens, log_wait, log_next_at."""

    name = "sagemaker"

    def __init__(self, settings: Settings, store: Any, *, sagemaker_client: Any = None, logs_client: Any = None,
                 scripts_dir: Path | None = None) -> None:
        self.settings, self.store = settings, store
        self.sm = sagemaker_client or aws.client(settings, "sagemaker")
        self.logs = logs_client or aws.client(settings, "logs")
        self.scripts_dir = scripts_dir or process.SCRIPTS
        self.log_reader = LogReader(self.logs)
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    # -- submit

    def upload_source(self, user_id: str) -> str:
        """The S3 URI of the scripts' sourcedir.tar.gz in the user's prefix, uploaded when missing."""
        digest, data = package_source(self.scripts_dir)
        key = source_key(user_id, digest)
        with self._lock:
            if key in self._uploaded:
                return str(self.store.uri(key))
        if not self.store.exists(key):
            self.store.put_stream(key, io.BytesIO(data), content_type="application/gzip")
        with self._lock:
            self._uploaded.add(key)
        return str(self.store.uri(key))

    def _channel(self, name: str, key: str) -> dict[str, Any]:
        return {"ChannelName": name, "InputMode": "File", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": str(self.store.uri(key)), "S3DataDistributionType": "FullyReplicated",
        }}}

    def _base_inputs(self, spec: TrainingSpec, channel_names: set[str]) -> tuple[list[dict[str, Any]], str | None]:
        """(the channel carrying a non-hub base model, if any; the hub id, if the base is one).

        The base channel is `model` for train.py; an evaluation already sends its tuned model as
        `model`, so its base goes as `base` (channel names must be unique on AWS).
        """
        base = spec.base_model_source
        if is_hub_id(base):
            return [], base
        name = "base" if "model" in channel_names else "model"
        if name in channel_names:  # the caller sent the base itself
            return [], None
        if base.startswith("s3://"):
            uri = base if base.endswith("/") else base + "/"
            return [{"ChannelName": name, "InputMode": "File", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}], None
        return [self._channel(name, upload_base_folder(self.store, spec.user_id, Path(base).expanduser()))], None

    def _refuse_multi_gpu(self, instance_type: str) -> None:
        gpus = int((catalog.instance_types(self.settings).get(instance_type) or {}).get("gpus") or 0)
        if gpus > 1:
            raise ValidationFailed(
                f"Instance type {instance_type!r} has {gpus} GPUs, and training runs one process on one GPU: "
                "the other GPUs would be billed and left idle. Choose a one-GPU type (ml.g5.xlarge to "
                "ml.g5.4xlarge, ml.g4dn.xlarge, ml.p3.2xlarge).", code="multi_gpu_not_supported",
                param="instance_type")

    def training_request(self, spec: TrainingSpec, source_uri: str) -> dict[str, Any]:
        """The create_training_job request for `spec` (no AWS call)."""
        aws_cfg = self.settings.aws
        self._refuse_multi_gpu(spec.instance_type)
        channels = [self._channel("train", spec.train_key)]
        if spec.validation_key:
            channels.append(self._channel("validation", spec.validation_key))
        for name, key in spec.extra_channels.items():
            channels.append(self._channel(name, key))
        hps: dict[str, Any] = {k: v for k, v in spec.hyperparameters.items() if v is not None}
        base_channels, hub_id = self._base_inputs(spec, {c["ChannelName"] for c in channels})
        channels += base_channels
        if hub_id:
            hps.setdefault("base_model", hub_id)
        elif hps.get("base_model") == spec.base_model_source:
            del hps["base_model"]  # a server path or S3 URI: the script reads the base from its channel
        # The name the user chose (catalogue id, hub id or s3:// URI), recorded in the model's
        # summary instead of the container path the weights were read from.
        hps.setdefault("base_model_name", spec.base_model)
        encoded = {str(k): json.dumps(v) for k, v in hps.items()}
        encoded.update({
            "sagemaker_program": json.dumps(spec.entry_point),
            "sagemaker_submit_directory": json.dumps(source_uri),
            "sagemaker_region": json.dumps(aws_cfg.region),
            "sagemaker_job_name": json.dumps(spec.job_name),
            "sagemaker_container_log_level": json.dumps(20),
        })
        out_uri = str(self.store.uri(spec.output_key))
        suffix = f"/{spec.job_name}/output/model.tar.gz"
        if not out_uri.endswith(suffix):
            raise ValueError(f"output_key {spec.output_key!r} is not .../{spec.job_name}/output/model.tar.gz, "
                             "where SageMaker puts a job's model.tar.gz")
        output: dict[str, Any] = {"S3OutputPath": out_uri[: -len(suffix)]}
        if aws_cfg.kms_key_id:
            output["KmsKeyId"] = aws_cfg.kms_key_id
        max_runtime = min(aws_cfg.max_runtime_seconds, spec.max_runtime_seconds)
        stopping: dict[str, int] = {"MaxRuntimeInSeconds": max_runtime}
        if aws_cfg.use_spot:
            stopping["MaxWaitTimeInSeconds"] = max(aws_cfg.max_wait_seconds, max_runtime)
        req: dict[str, Any] = {
            "TrainingJobName": spec.job_name,
            "HyperParameters": encoded,
            "AlgorithmSpecification": {
                "TrainingImage": image_uri("training", aws_cfg.region, self.settings),
                "TrainingInputMode": "File",
                "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS],
                "EnableSageMakerMetricsTimeSeries": True,
            },
            "RoleArn": aws_cfg.role_arn,
            "InputDataConfig": channels,
            "OutputDataConfig": output,
            "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": 1,
                               "VolumeSizeInGB": TRAINING_VOLUME_GB},
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": bool(aws_cfg.use_spot),
            "CheckpointConfig": {"S3Uri": str(self.store.uri(spec.checkpoint_prefix)),
                                 "LocalPath": CHECKPOINT_LOCAL_PATH},
            "Environment": self._environment({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                                              "HF_HOME": TRAINING_HF_HOME}),
            "Tags": [{"Key": "llmtuner:user-id", "Value": spec.user_id},
                     {"Key": "llmtuner:job-name", "Value": spec.job_name}],
        }
        if aws_cfg.vpc_subnet_ids:
            req["VpcConfig"] = {"Subnets": list(aws_cfg.vpc_subnet_ids),
                                "SecurityGroupIds": list(aws_cfg.vpc_security_group_ids)}
        return req

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        # hf_transfer is not in every DLC, and HF_HUB_ENABLE_HF_TRANSFER=1 without it is an error.
        token = hf_token(self.settings)
        return {**env, "HF_TOKEN": token} if token else env

    def submit(self, spec: TrainingSpec) -> dict[str, Any]:
        source_uri = self.upload_source(spec.user_id)
        req = self.training_request(spec, source_uri)
        try:
            arn = self.sm.create_training_job(**req)["TrainingJobArn"]
        except ClientError as e:
            # A retried request whose first attempt got through: the job exists and is ours.
            arn = self._existing_job_arn(spec.job_name, req) if _already_exists(e) else None
            if arn is None:
                raise map_aws_error(e, "create_training_job") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "create_training_job") from e
        return {"job_name": spec.job_name, "arn": arn, "region": self.settings.aws.region,
                "source_uri": source_uri, "output_path": req["OutputDataConfig"]["S3OutputPath"],
                "submitted_at": time.time(), "transitions_seen": 0, "log_tokens": {}, "final_reported": False}

    def _existing_job_arn(self, job_name: str, req: dict[str, Any]) -> str | None:
        try:
            d = self.sm.describe_training_job(TrainingJobName=job_name)
        except (ClientError, BotoCoreError):
            return None
        same = (d.get("OutputDataConfig", {}).get("S3OutputPath") == req["OutputDataConfig"]["S3OutputPath"]
                and d.get("RoleArn") == req["RoleArn"])
        return str(d["TrainingJobArn"]) if same else None

    # -- describe

    def describe(self, handle: dict[str, Any]) -> BackendJobStatus:
        name = handle["job_name"]
        try:
            d = self.sm.describe_training_job(TrainingJobName=name)
        except ClientError as e:
            if _not_found(e):
                if time.time() - float(handle.get("submitted_at") or 0) < MISSING_JOB_GRACE_SECONDS:
                    return BackendJobStatus("InProgress", "Starting")
                return BackendJobStatus("Failed", "Failed", failure_reason=(
                    f"job_lost: SageMaker has no training job named {name} (it was never created or was "
                    "removed); start the job again"))
            raise map_aws_error(e, "describe_training_job") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "describe_training_job") from e

        status = JOB_STATES.get(str(d.get("TrainingJobStatus")), "InProgress")
        secondary = str(d.get("SecondaryStatus") or status)
        transitions = d.get("SecondaryStatusTransitions") or []
        seen = int(handle.get("transitions_seen") or 0)
        # SageMaker's own keys, which the reconciler reads.
        new_transitions = [{
            "Status": t.get("Status"), "StatusMessage": t.get("StatusMessage") or "",
            "StartTime": _iso(t.get("StartTime")), "EndTime": _iso(t.get("EndTime")),
        } for t in transitions[seen:]]
        update: dict[str, Any] = {"transitions_seen": max(seen, len(transitions))}

        lines, log_state = self.log_reader.read(name, handle, ended=status in ("Completed", "Failed", "Stopped"))
        update.update(log_state)
        if status in ("Completed", "Failed", "Stopped") and not handle.get("final_reported"):
            final = final_metrics_line(d.get("FinalMetricDataList"))
            if final:
                lines.append(final)
            update["final_reported"] = True

        billable = d.get("BillableTimeInSeconds")
        if billable is None:  # AWS reports it when the job ends; until then, the time the instance has run
            billable = _seconds_since(d.get("TrainingStartTime"), d.get("TrainingEndTime"))
        artifact = None
        if status == "Completed":
            artifact = (d.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
            if artifact:
                update["artifact_uri"] = artifact
        return BackendJobStatus(
            status, secondary, lines, new_transitions,
            billable_seconds=None if billable is None else int(billable),
            failure_reason=d.get("FailureReason") or None,
            artifact_uri=artifact, handle_update=update,
        )

    # -- stop

    def stop(self, handle: dict[str, Any]) -> None:
        name = handle["job_name"]
        try:
            self.sm.stop_training_job(TrainingJobName=name)
        except ClientError as e:
            if _code(e) in ("ValidationException", "ValidationError"):
                try:  # already ending or ended: nothing to stop
                    if self.sm.describe_training_job(TrainingJobName=name).get("TrainingJobStatus") != "InProgress":
                        return
                except (ClientError, BotoCoreError):
                    pass
            raise map_aws_error(e, "stop_training_job") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "stop_training_job") from e


# --------------------------------------------------------------------------- endpoints


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
                c = _client(self.settings, "sagemaker-runtime", read_timeout=key,
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
            if _already_exists(e) and (ours is None or ours()):
                return
            raise map_aws_error(e, op) from e
        except BotoCoreError as e:
            raise map_aws_error(e, op) from e

    def _delete_quietly(self, op: str, **kw: str) -> None:
        try:
            getattr(self.sm, op)(**kw)
        except (ClientError, BotoCoreError) as e:
            log.warning("cleanup %s %s failed: %s", op, kw, e)

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]:
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

    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus:
        name = handle["endpoint_name"]
        try:
            d = self.sm.describe_endpoint(EndpointName=name)
        except ClientError as e:
            if _not_found(e):
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
        timeout = min(float(timeout), self.invoke_limit)
        client = self.invoke_client(timeout)
        try:
            r = client.invoke_endpoint(EndpointName=handle["endpoint_name"], ContentType="application/json",
                                       Accept="application/json", Body=json.dumps(payload).encode("utf-8"))
            body = r["Body"].read()
        except ReadTimeoutError as e:
            raise GatewayTimeout(f"Generation did not finish within {timeout:.0f} s (a SageMaker real-time "
                                 f"endpoint answers within {SAGEMAKER_INVOKE_LIMIT_SECONDS:.0f} s at most); ask "
                                 "for fewer max_new_tokens", code="generation_timeout") from e
        except ClientError as e:
            if _code(e) == "ModelError":
                raise self._model_error(e, timeout) from e
            raise map_aws_error(e, "invoke_endpoint") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "invoke_endpoint") from e
        try:
            out = json.loads(body)
        except ValueError as e:
            raise BackendError("The endpoint's answer is not JSON", code="endpoint_error",
                               details=[body[:1000].decode("utf-8", "replace")]) from e
        return out if isinstance(out, list) else [out]

    def _model_error(self, e: ClientError, timeout: float) -> AppError:
        """The container answered with an error (SageMaker's ModelError, HTTP 424)."""
        original = str(e.response.get("OriginalMessage") or "")
        raw_status = e.response.get("OriginalStatusCode")
        status: int | None = int(raw_status) if isinstance(raw_status, int | str) and str(raw_status).isdigit() \
            else None
        if status is None:
            m = re.search(r"\((\d{3})\)", _message(e))
            status = int(m.group(1)) if m else None
        details = _aws_details(e)
        details[0].update(original_status_code=status, log_stream_arn=e.response.get("LogStreamArn"))
        message, code, param, more = _container_error(original or _message(e))
        if status == 504 or "timed out" in (_message(e) + original).lower():
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
        for op, kw in (("delete_endpoint", {"EndpointName": handle["endpoint_name"]}),
                       ("delete_endpoint_config", {"EndpointConfigName": handle.get("config_name")}),
                       ("delete_model", {"ModelName": handle.get("model_name")})):
            if not all(kw.values()):
                continue
            try:
                getattr(self.sm, op)(**kw)
            except ClientError as e:
                if not _not_found(e):
                    raise map_aws_error(e, op) from e
            except BotoCoreError as e:
                raise map_aws_error(e, op) from e


def build_sagemaker_backends(settings: Settings, store: Any) -> Backends:
    aws_cfg = settings.aws
    if aws_cfg.role_arn == PLACEHOLDER_ROLE_ARN and settings.env != "development" and not aws_cfg.endpoint_url:
        raise ValueError(
            "LLMTUNER_AWS__ROLE_ARN is the placeholder (account 000000000000), which AWS refuses: set it to "
            "the ARN of your SageMaker execution role (see docs/cloud.md) before running with "
            "LLMTUNER_BACKEND=sagemaker"
        )
    return Backends(training=SageMakerTrainingBackend(settings, store),
                    endpoints=SageMakerEndpointBackend(settings, store), name="sagemaker")
