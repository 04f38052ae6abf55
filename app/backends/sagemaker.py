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
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from app import aws, catalog
from app.backends import process
from app.backends.base import BackendJobStatus, Backends, TrainingSpec
from app.backends.sagemaker_endpoints import SageMakerEndpointBackend
from app.backends.sagemaker_endpoints import derived_name as derived_name  # re-exported
from app.backends.sagemaker_errors import already_exists, error_code, map_aws_error, not_found, scrubbed
from app.backends.sagemaker_images import image_uri
from app.backends.sagemaker_inputs import hf_token, is_hub_id, upload_base_folder
from app.backends.sagemaker_logs import TRAINING_LOG_GROUP as TRAINING_LOG_GROUP  # re-exported
from app.backends.sagemaker_logs import LogReader
from app.backends.sagemaker_metrics import METRIC_DEFINITIONS, final_metrics_line
from app.config import PLACEHOLDER_ROLE_ARN, Settings
from app.errors import ValidationFailed

log = logging.getLogger("llmtuner.sagemaker")

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TRAINING_VOLUME_GB = 50
# The Hugging Face cache on the disk that holds the job's data (SageMaker mounts its ML storage
# volume, or the instance's NVMe store, at /opt/ml; the root disk is small).
TRAINING_HF_HOME = "/opt/ml/input/hf_home"
# A job that describe_training_job does not know yet is given this long before it counts as lost.
MISSING_JOB_GRACE_SECONDS = 300

# SageMaker's TrainingJobStatus -> ours (the same words; anything new counts as still running).
JOB_STATES = {s: s for s in ("InProgress", "Completed", "Failed", "Stopping", "Stopped")}

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
            arn = self._existing_job_arn(spec.job_name, req) if already_exists(e) else None
            if arn is None:
                token = req["Environment"].get("HF_TOKEN")  # AWS's message may quote it: not from e then
                raise scrubbed(map_aws_error(e, "create_training_job"), token) from (None if token else e)
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
            if not_found(e):
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
            if error_code(e) in ("ValidationException", "ValidationError"):
                try:  # already ending or ended: nothing to stop
                    if self.sm.describe_training_job(TrainingJobName=name).get("TrainingJobStatus") != "InProgress":
                        return
                except (ClientError, BotoCoreError):
                    pass
            raise map_aws_error(e, "stop_training_job") from e
        except BotoCoreError as e:
            raise map_aws_error(e, "stop_training_job") from e


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
