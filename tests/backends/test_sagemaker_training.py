"""SageMaker training backend against moto (tests/backends/moto_sagemaker.py patches moto's gaps)."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.aws import client
from app.backends import process
from app.backends.base import TrainingSpec
from app.backends.sagemaker import (
    TRAINING_LOG_GROUP,
    SageMakerTrainingBackend,
    build_sagemaker_backends,
    map_aws_error,
    package_source,
)
from app.backends.sagemaker_images import default_image_uri, image_uri
from app.backends.sagemaker_metrics import METRIC_DEFINITIONS, event_lines, final_metrics_line, metric_values
from app.config import AWSSettings, Settings, WorkerSettings
from app.errors import AppError
from app.storage.s3 import S3ObjectStore
from tests.backends import moto_sagemaker as moto_sm
from tests.settings import make_test_settings

USER = "0b5f3a52-6c1e-4d2b-9a87-3f0c2e1d4b6a"
OTHER_USER = "9d7e2c41-1a3b-4c5d-8e9f-0a1b2c3d4e5f"
DATASET = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
BUCKET = "llmtuner-test-artifacts"
JOB = "llm-tune-alice-qwen-20250102-030405"
ROLE = "arn:aws:iam::123456789012:role/LLMTunerSageMakerExecution"

# Real lines in the exact form train.py prints (json.dumps, "event" first).
SAMPLE_LOG = ('{"event": "log", "step": 10, "epoch": 0.5, "train_loss": 1.23, "learning_rate": 0.0001, '
              '"tokens_per_second": 812.5, "grad_norm": 0.7}')
SAMPLE_LOG_SMALL_LR = ('{"event": "log", "step": 20, "epoch": 1.0, "train_loss": 0.987654, '
                       '"learning_rate": 2e-05, "tokens_per_second": 1024.0, "grad_norm": 1.5e-03}')
SAMPLE_LOG_NO_LR = '{"event": "log", "step": 1, "epoch": 0.05, "train_loss": 2.5, "learning_rate": null, ' \
                   '"tokens_per_second": 0.0}'
SAMPLE_EVAL = '{"event": "eval", "step": 10, "epoch": 0.5, "eval_loss": 1.1}'
SAMPLE_END = ('{"event": "end", "step": 40, "epoch": 2.0, "train_loss": 1.05, "eval_loss": 0.99, '
              '"train_runtime": 12.345}')
SAMPLE_START = '{"event": "start", "total_steps": 40, "train_records": 100, "epochs": 2, "device": "cuda"}'


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with moto_sm.moto_aws(monkeypatch):
        yield


def make_settings(tmp_path: Path, **aws_kw: Any) -> Settings:
    aws_settings = AWSSettings(region="us-east-1", s3_bucket=BUCKET, role_arn=ROLE, **aws_kw)
    return make_test_settings(data_dir=tmp_path / "data", backend="sagemaker", storage="s3",
                              database_url="sqlite://", aws=aws_settings, worker=WorkerSettings(enabled=False))


@pytest.fixture
def sm_settings(tmp_path: Path, aws: None) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def s3_store(sm_settings: Settings) -> S3ObjectStore:
    s3 = client(sm_settings, "s3")
    s3.create_bucket(Bucket=BUCKET)
    return S3ObjectStore(s3, BUCKET)


@pytest.fixture
def training(sm_settings: Settings, s3_store: S3ObjectStore) -> SageMakerTrainingBackend:
    backend = build_sagemaker_backends(sm_settings, s3_store).training
    assert isinstance(backend, SageMakerTrainingBackend)
    return backend


def make_spec(store: S3ObjectStore, job: str = JOB, user: str = USER, **kw: Any) -> TrainingSpec:
    train_key = f"users/{user}/datasets/{DATASET}/train.jsonl"
    val_key = f"users/{user}/datasets/{DATASET}/validation.jsonl"
    store.put_stream(train_key, io.BytesIO(b'{"prompt": "2+2?", "completion": "4"}\n'))
    store.put_stream(val_key, io.BytesIO(b'{"prompt": "3+3?", "completion": "6"}\n'))
    fields: dict[str, Any] = dict(
        job_name=job, user_id=user, base_model="qwen2.5-0.5b", base_model_source="Qwen/Qwen2.5-0.5B-Instruct",
        hyperparameters={"epochs": 2, "learning_rate": 0.0002, "use_lora": True, "lora_rank": 8,
                         "lora_target_modules": ["q_proj", "v_proj"], "max_grad_norm": None},
        instance_type="ml.g5.xlarge", train_key=train_key, validation_key=val_key,
        output_key=f"users/{user}/models/{job}/output/model.tar.gz",
        checkpoint_prefix=f"users/{user}/models/{job}/checkpoints/",
    )
    fields.update(kw)
    return TrainingSpec(**fields)


def advance(handle: dict[str, Any], backend: SageMakerTrainingBackend) -> Any:
    """describe() as the worker calls it, the logs' wait having passed: the handle takes the update
    for the next call."""
    handle["log_next_at"] = 0
    st = backend.describe(handle)
    handle.update(st.handle_update)
    return st


def put_logs(settings: Settings, job: str, messages: list[str], stream_suffix: str = "algo-1-1735787045") -> None:
    logs = client(settings, "logs")
    try:
        logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    stream = f"{job}/{stream_suffix}"
    try:
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    import time

    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream,
                        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)])


# --------------------------------------------------------------------------- MetricDefinitions


def test_metric_definitions_read_real_train_lines() -> None:
    assert metric_values(SAMPLE_LOG) == {"train_loss": 1.23, "learning_rate": 0.0001, "tokens_per_second": 812.5,
                                         "grad_norm": 0.7, "epoch": 0.5}
    assert metric_values(SAMPLE_LOG_SMALL_LR) == {"train_loss": 0.987654, "learning_rate": 2e-05,
                                                  "tokens_per_second": 1024.0, "grad_norm": 1.5e-03, "epoch": 1.0}
    assert metric_values(SAMPLE_LOG_NO_LR) == {"train_loss": 2.5, "tokens_per_second": 0.0, "epoch": 0.05}
    assert metric_values(SAMPLE_EVAL) == {"eval_loss": 1.1}
    # The summary line's averages are not a step's values; other events carry no metric.
    assert metric_values(SAMPLE_END) == {}
    assert metric_values(SAMPLE_START) == {}
    assert metric_values("[train] loading tokenizer train_loss: 5") == {}
    names = [d["Name"] for d in METRIC_DEFINITIONS]
    assert len(names) == len(set(names)) and {"train_loss", "eval_loss", "learning_rate"} <= set(names)


def test_metric_definitions_read_lines_printed_by_train_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines train.py's own Events.emit prints, not copies (Events lives in metrics.py, or in
    train.py itself in older trees)."""
    out = io.StringIO()
    if (process.SCRIPTS / "metrics.py").exists():
        monkeypatch.syspath_prepend(str(process.SCRIPTS))
        monkeypatch.delitem(sys.modules, "metrics", raising=False)
        import metrics  # type: ignore[import-not-found]

        events = metrics.Events(tmp_path / "metrics.jsonl", out)
    else:
        spec = importlib.util.spec_from_file_location("llmtuner_train_for_metrics_test", process.SCRIPTS / "train.py")
        assert spec and spec.loader
        train = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, train)  # dataclasses look their module up there
        spec.loader.exec_module(train)
        monkeypatch.setattr(train, "_METRIC_STDOUT", out)
        events = train.Events(tmp_path / "metrics.jsonl")
    events.emit("log", step=10, epoch=0.5, train_loss=1.23, learning_rate=0.0001, tokens_per_second=812.5,
                grad_norm=0.7)
    events.emit("log", step=20, epoch=1.0, train_loss=0.000123, learning_rate=1e-05, tokens_per_second=99.0)
    events.emit("eval", step=20, epoch=1.0, eval_loss=1.1)
    events.emit("end", step=20, epoch=1.0, train_loss=0.5, eval_loss=1.1, train_runtime=3.2)
    lines = out.getvalue().splitlines()
    assert lines[0] == SAMPLE_LOG
    assert [metric_values(line) for line in lines] == [
        {"train_loss": 1.23, "learning_rate": 0.0001, "tokens_per_second": 812.5, "grad_norm": 0.7, "epoch": 0.5},
        {"train_loss": 0.000123, "learning_rate": 1e-05, "tokens_per_second": 99.0, "epoch": 1.0},
        {"eval_loss": 1.1},
        {},
    ]
    assert event_lines("\n".join(lines)) == lines


def test_event_lines_and_final_line() -> None:
    message = "\n".join(["Invoking script with the following command:", "/opt/conda/bin/python train.py",
                         SAMPLE_LOG, "[train] step 10", '{"not": "an event"}', "{broken", SAMPLE_EVAL])
    assert event_lines(message) == [SAMPLE_LOG, SAMPLE_EVAL]
    line = final_metrics_line([{"MetricName": "train_loss", "Value": 0.5, "Timestamp": 0},
                               {"MetricName": "eval_loss", "Value": 0.75}])
    assert line is not None and json.loads(line) == {"event": "final", "train_loss": 0.5, "eval_loss": 0.75}
    assert final_metrics_line([]) is None and final_metrics_line(None) is None


# --------------------------------------------------------------------------- images


def test_image_uris(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    train_uri = image_uri("training", "us-east-1", settings)
    assert train_uri.startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:")
    assert "-transformers" in train_uri and "-gpu-" in train_uri
    assert image_uri("inference", "eu-west-1", settings).startswith(
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:")
    assert default_image_uri("training", "af-south-1").startswith("626614931356.dkr.ecr.af-south-1.amazonaws.com/")
    assert default_image_uri("inference", "cn-north-1").startswith(
        "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/")
    with pytest.raises(ValueError, match="LLMTUNER_AWS__TRAINING_IMAGE_URI"):
        default_image_uri("training", "xx-nowhere-1")
    custom = make_settings(tmp_path, training_image_uri="111122223333.dkr.ecr.us-east-1.amazonaws.com/mine:1",
                           inference_image_uri="111122223333.dkr.ecr.us-east-1.amazonaws.com/serve:1")
    assert image_uri("training", "us-east-1", custom).endswith("/mine:1")
    assert image_uri("inference", "xx-nowhere-1", custom).endswith("/serve:1")


# --------------------------------------------------------------------------- submit


def test_submit_sends_the_training_job_request(training: SageMakerTrainingBackend, s3_store: S3ObjectStore,
                                               sm_settings: Settings) -> None:
    handle = training.submit(make_spec(s3_store))
    assert handle["job_name"] == JOB and handle["arn"].endswith(f":training-job/{JOB}")
    assert handle["transitions_seen"] == 0 and handle["log_tokens"] == {} and handle["final_reported"] is False

    d = client(sm_settings, "sagemaker").describe_training_job(TrainingJobName=JOB)
    hps = d["HyperParameters"]
    assert all(isinstance(v, str) for v in hps.values())
    decoded = {k: json.loads(v) for k, v in hps.items()}  # every value is JSON, as the toolkit expects
    assert decoded["epochs"] == 2 and decoded["learning_rate"] == 0.0002 and decoded["use_lora"] is True
    assert decoded["lora_target_modules"] == ["q_proj", "v_proj"]
    assert hps["base_model"] == '"Qwen/Qwen2.5-0.5B-Instruct"' and hps["base_model_name"] == '"qwen2.5-0.5b"'
    env = training.training_request(make_spec(s3_store), handle["source_uri"])["Environment"]  # moto does not return it
    assert env["HF_HOME"].startswith("/opt/ml/") and "HF_TOKEN" not in env
    assert "max_grad_norm" not in hps  # unset values are left to train.py's defaults
    assert hps["sagemaker_program"] == '"train.py"'
    assert hps["sagemaker_region"] == '"us-east-1"'
    source_uri = decoded["sagemaker_submit_directory"]
    assert source_uri == handle["source_uri"]
    assert source_uri.startswith(f"s3://{BUCKET}/users/{USER}/models/_source/sourcedir-")
    assert source_uri.endswith(".tar.gz")

    algo = d["AlgorithmSpecification"]
    assert algo["TrainingImage"] == default_image_uri("training", "us-east-1")
    assert algo["TrainingInputMode"] == "File"
    assert algo["MetricDefinitions"] == METRIC_DEFINITIONS
    assert d["RoleArn"] == ROLE
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in d["InputDataConfig"]}
    assert set(channels) == {"train", "validation"}
    assert channels["train"]["S3Uri"] == f"s3://{BUCKET}/users/{USER}/datasets/{DATASET}/train.jsonl"
    assert channels["validation"]["S3DataType"] == "S3Prefix"
    # SageMaker writes {S3OutputPath}/{job}/output/model.tar.gz: the job's own output folder.
    assert d["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/users/{USER}/models"}
    assert d["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert d["StoppingCondition"] == {"MaxRuntimeInSeconds": 24 * 3600}
    assert d["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/users/{USER}/models/{JOB}/checkpoints/",
                                     "LocalPath": "/opt/ml/checkpoints"}
    assert d.get("EnableManagedSpotTraining") is False
    job = moto_sm.backend().training_jobs[JOB]
    assert {"Key": "llmtuner:user-id", "Value": USER} in job.tags
    assert {"Key": "llmtuner:job-name", "Value": JOB} in job.tags

    # sourcedir.tar.gz holds the training scripts at its root, without caches.
    body = s3_store.open(source_uri.split(f"s3://{BUCKET}/", 1)[1]).read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = tar.getnames()
    assert {"train.py", "inference.py", "modeling.py", "prompting.py", "serve.py"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_spot_vpc_kms_and_runtime_limits(tmp_path: Path, aws: None, s3_store: S3ObjectStore) -> None:
    settings = make_settings(tmp_path, use_spot=True, max_wait_seconds=7200, max_runtime_seconds=5400,
                             kms_key_id="arn:aws:kms:us-east-1:123456789012:key/abc",
                             vpc_subnet_ids=["subnet-1", "subnet-2"], vpc_security_group_ids=["sg-1"])
    backend = SageMakerTrainingBackend(settings, s3_store)
    req = backend.training_request(make_spec(s3_store, max_runtime_seconds=10 * 3600), "s3://b/src.tar.gz")
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 5400, "MaxWaitTimeInSeconds": 7200}
    assert req["EnableManagedSpotTraining"] is True
    assert req["OutputDataConfig"]["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/abc"
    assert req["VpcConfig"] == {"Subnets": ["subnet-1", "subnet-2"], "SecurityGroupIds": ["sg-1"]}
    # The wait must cover the runtime.
    settings2 = make_settings(tmp_path, use_spot=True, max_wait_seconds=600)
    req2 = SageMakerTrainingBackend(settings2, s3_store).training_request(make_spec(s3_store), "s3://b/s.tar.gz")
    assert req2["StoppingCondition"]["MaxWaitTimeInSeconds"] == req2["StoppingCondition"]["MaxRuntimeInSeconds"]


def test_base_model_from_s3_or_a_local_folder_goes_through_the_model_channel(
        training: SageMakerTrainingBackend, s3_store: S3ObjectStore, tmp_path: Path) -> None:
    req = training.training_request(make_spec(s3_store, base_model="s3://models-bucket/llama/7b",
                                              base_model_source="s3://models-bucket/llama/7b"), "s3://x")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}
    assert channels["model"] == "s3://models-bucket/llama/7b/"
    # train.py reads the channel; the model records the name the user gave, not a container path.
    assert "base_model" not in req["HyperParameters"]
    assert req["HyperParameters"]["base_model_name"] == '"s3://models-bucket/llama/7b"'

    folder = tmp_path / "tiny-llama"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    req = training.training_request(make_spec(s3_store, base_model="tiny-llama", base_model_source=str(folder),
                                              extra_channels={"eval": f"users/{USER}/datasets/{DATASET}/"}), "s3://x")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}
    prefix = channels["model"][len(f"s3://{BUCKET}/"):]
    # Content-addressed, outside any job: every job and endpoint of the same base shares one copy.
    assert prefix.startswith(f"users/{USER}/models/_base_models/") and prefix.endswith("/")
    assert channels["eval"] == f"s3://{BUCKET}/users/{USER}/datasets/{DATASET}/"
    assert sorted(s3_store.list(prefix)) == [prefix + "config.json", prefix + "model.safetensors",
                                             prefix + "sub/tokenizer.json"]
    assert str(tmp_path) not in json.dumps(req)
    again = training.training_request(make_spec(s3_store, job="job-two", base_model_source=str(folder),
                                                output_key=f"users/{USER}/models/job-two/output/model.tar.gz"),
                                      "s3://x")
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in again["InputDataConfig"]}[
        "model"] == channels["model"]


def evaluation_spec(store: S3ObjectStore, base_source: str, eval_id: str = "e1") -> TrainingSpec:
    """What app/evaluation/reconcile.submit hands the backend."""
    job = "eval-e1-20250102-030405"
    tuned = f"users/{USER}/models/{JOB}/output/model.tar.gz"
    channels = {"model": tuned}
    if base_source.startswith("s3://"):
        channels["base"] = store.key_from_uri(base_source) or ""
    return make_spec(store, job=job, base_model="tiny-llama", base_model_source=base_source, validation_key=None,
                     entry_point="evaluate.py", extra_channels=channels,
                     hyperparameters={"metrics": ["perplexity"], "base_model": base_source, "seed": 42},
                     output_key=f"users/{USER}/evaluations/{eval_id}/{job}/output/model.tar.gz",
                     checkpoint_prefix=f"users/{USER}/evaluations/{eval_id}/checkpoints/")


def test_evaluation_jobs_have_unique_channels_and_their_own_output_key(
        training: SageMakerTrainingBackend, s3_store: S3ObjectStore, tmp_path: Path) -> None:
    """AWS refuses duplicate channel names (moto does not): the tuned model is `model`, the base `base`."""
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    for base in (str(folder), f"s3://{BUCKET}/users/{USER}/models/_base_models/abc/", "Qwen/Qwen2.5-0.5B-Instruct"):
        req = training.training_request(evaluation_spec(s3_store, base), "s3://x")
        names = [c["ChannelName"] for c in req["InputDataConfig"]]
        assert len(names) == len(set(names)), names
        assert names[:2] == ["train", "model"]
        assert req["InputDataConfig"][1]["DataSource"]["S3DataSource"]["S3Uri"].endswith(
            f"/models/{JOB}/output/model.tar.gz")  # the tuned model is not replaced by the base
        hps = {k: json.loads(v) for k, v in req["HyperParameters"].items()}
        if base.startswith("Qwen"):
            assert names == ["train", "model"] and hps["base_model"] == base
        else:
            assert names == ["train", "model", "base"] and "base_model" not in hps
        assert req["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/users/{USER}/evaluations/e1"
    # And the job really is accepted with that output key (it used to raise ValueError).
    handle = training.submit(evaluation_spec(s3_store, str(folder)))
    assert handle["output_path"] == f"s3://{BUCKET}/users/{USER}/evaluations/e1"


def test_hf_token_reaches_the_containers_from_a_value_or_a_secret(
        tmp_path: Path, aws: None, s3_store: S3ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    from app.backends.sagemaker import SageMakerEndpointBackend
    from app.backends.sagemaker_inputs import _TOKENS

    settings = make_settings(tmp_path, hf_token="hf_plainvalue")
    req = SageMakerTrainingBackend(settings, s3_store).training_request(make_spec(s3_store), "s3://x")
    assert req["Environment"]["HF_TOKEN"] == "hf_plainvalue"
    assert "hf_plainvalue" not in repr(settings) and "hf_plainvalue" not in settings.model_dump_json()

    sm = client(settings, "secretsmanager")
    arn = sm.create_secret(Name="llmtuner/hf", SecretString='{"HF_TOKEN": "hf_fromsecret"}')["ARN"]
    _TOKENS.clear()
    settings = make_settings(tmp_path, hf_token=arn)
    req = SageMakerTrainingBackend(settings, s3_store).training_request(make_spec(s3_store), "s3://x")
    assert req["Environment"]["HF_TOKEN"] == "hf_fromsecret"
    from tests.backends.test_sagemaker_endpoints import make_spec as endpoint_spec

    model = SageMakerEndpointBackend(settings, s3_store).model_request(endpoint_spec(), "m")
    assert model["PrimaryContainer"]["Environment"]["HF_TOKEN"] == "hf_fromsecret"
    assert "hf_fromsecret" not in caplog.text

    _TOKENS.clear()
    missing = make_settings(tmp_path, hf_token=arn.replace("llmtuner/hf", "nope"))
    with pytest.raises(AppError) as exc:
        SageMakerTrainingBackend(missing, s3_store).training_request(make_spec(s3_store), "s3://x")
    assert exc.value.code == "hf_token_unavailable" and "LLMTUNER_AWS__HF_TOKEN" in exc.value.message


def test_an_aws_error_quoting_the_token_does_not_carry_it(tmp_path: Path, aws: None, s3_store: S3ObjectStore,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from app.backends.sagemaker import SageMakerEndpointBackend
    from tests.backends.test_sagemaker_endpoints import make_spec as endpoint_spec

    settings = make_settings(tmp_path, hf_token="hf_secretvalue")
    msg = ("1 validation error detected: Value '{HF_TOKEN=hf_secretvalue, HF_HOME=/opt/ml/input/hf_home}' at "
           "'environment' failed to satisfy constraint")
    backend = SageMakerTrainingBackend(settings, s3_store)
    moto_sm.fail_next(backend.sm, "CreateTrainingJob", "ValidationException", msg)
    with pytest.raises(AppError) as exc:
        backend.submit(make_spec(s3_store))
    endpoints = SageMakerEndpointBackend(settings, s3_store)
    moto_sm.fail_next(endpoints.sm, "CreateModel", "ValidationException", msg)
    with pytest.raises(AppError) as exc2:
        endpoints.deploy(endpoint_spec())
    for err in (exc.value, exc2.value):
        assert err.code == "backend_validation_error" and "environment" in err.message
        assert "hf_secretvalue" not in err.message + json.dumps(err.details) and err.__cause__ is None
    assert "hf_secretvalue" not in caplog.text


def test_multi_gpu_instance_types_are_refused_naming_the_field(training: SageMakerTrainingBackend,
                                                               s3_store: S3ObjectStore) -> None:
    with pytest.raises(AppError) as exc:
        training.submit(make_spec(s3_store, instance_type="ml.g5.12xlarge"))
    assert (exc.value.status_code, exc.value.code, exc.value.param) == (
        422, "multi_gpu_not_supported", "instance_type")
    assert "4 GPUs" in exc.value.message and JOB not in moto_sm.backend().training_jobs


def test_the_placeholder_role_is_refused_outside_development(tmp_path: Path, aws: None,
                                                              s3_store: S3ObjectStore) -> None:
    from app.config import PLACEHOLDER_ROLE_ARN

    settings = make_settings(tmp_path)
    settings.aws.role_arn = PLACEHOLDER_ROLE_ARN
    with pytest.raises(ValueError, match="LLMTUNER_AWS__ROLE_ARN"):
        build_sagemaker_backends(settings, s3_store)
    settings.env = "development"
    build_sagemaker_backends(settings, s3_store)
    settings.env, settings.aws.endpoint_url = "production", "http://127.0.0.1:5000"  # an emulator
    build_sagemaker_backends(settings, s3_store)


def test_sourcedir_is_uploaded_once_per_content_version(sm_settings: Settings, s3_store: S3ObjectStore,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    puts: list[str] = []
    real_put = s3_store.put_stream

    def counting_put(key: str, *a: Any, **kw: Any) -> int:
        puts.append(key)
        return real_put(key, *a, **kw)

    monkeypatch.setattr(s3_store, "put_stream", counting_put)
    scripts = tmp_path / "scripts"
    shutil.copytree(process.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    backend = SageMakerTrainingBackend(sm_settings, s3_store, scripts_dir=scripts)

    def sources() -> list[str]:
        return [k for k in puts if "/_source/" in k]

    h1 = backend.submit(make_spec(s3_store, job="job-one"))
    h2 = backend.submit(make_spec(s3_store, job="job-two"))
    assert h1["source_uri"] == h2["source_uri"] and len(sources()) == 1
    # Another process (a fresh backend) finds it in S3 and does not upload it again.
    h3 = SageMakerTrainingBackend(sm_settings, s3_store, scripts_dir=scripts).submit(
        make_spec(s3_store, job="job-three"))
    assert h3["source_uri"] == h1["source_uri"] and len(sources()) == 1
    # The same bytes for the same content: the key is a content hash.
    assert package_source(scripts) == package_source(scripts)
    # Each user has their own copy, in their own prefix.
    h4 = backend.submit(make_spec(s3_store, job="job-four", user=OTHER_USER))
    assert f"/users/{OTHER_USER}/" in h4["source_uri"] and len(sources()) == 2
    # New content, new version.
    (scripts / "train.py").write_text((scripts / "train.py").read_text() + "\n# changed\n")
    h5 = backend.submit(make_spec(s3_store, job="job-five"))
    assert h5["source_uri"] != h1["source_uri"] and len(sources()) == 3


# --------------------------------------------------------------------------- describe


def test_job_runs_to_completed_with_transitions_logs_metrics_artifacts_and_billable_time(
        training: SageMakerTrainingBackend, s3_store: S3ObjectStore, sm_settings: Settings) -> None:
    handle = training.submit(make_spec(s3_store))

    st = advance(handle, training)  # no log group yet: not an error
    assert (st.status, st.secondary_status) == ("InProgress", "Starting")
    assert [t["Status"] for t in st.status_transitions] == ["Starting"]
    assert st.log_lines == [] and st.artifact_uri is None and st.failure_reason is None
    assert st.billable_seconds is None

    moto_sm.set_training_job(JOB, secondary="Downloading", message="Downloading input data")
    moto_sm.set_training_job(JOB, secondary="Training", message="Training image download completed.")
    put_logs(sm_settings, JOB, ["bash: cannot set terminal process group", SAMPLE_START, SAMPLE_LOG,
                                "[train] step 10/40", SAMPLE_EVAL])
    st = advance(handle, training)
    assert (st.status, st.secondary_status) == ("InProgress", "Training")
    # SageMaker's own keys, which the reconciler reads into "Status: StatusMessage" events.
    assert [(t["Status"], t["StatusMessage"]) for t in st.status_transitions] == [
        ("Downloading", "Downloading input data"), ("Training", "Training image download completed.")]
    assert st.status_transitions[0]["StartTime"] and st.status_transitions[0]["EndTime"]
    assert st.log_lines == [SAMPLE_START, SAMPLE_LOG, SAMPLE_EVAL]
    assert st.billable_seconds is not None and st.billable_seconds >= 0  # running time so far

    st = advance(handle, training)  # nothing new since the last call
    assert st.status_transitions == [] and st.log_lines == []

    put_logs(sm_settings, JOB, [SAMPLE_LOG_SMALL_LR, SAMPLE_END])
    moto_sm.set_training_job(JOB, secondary="Uploading", message="Uploading generated training model")
    moto_sm.set_training_job(JOB, status="Completed", billable_seconds=1234,
                             final_metrics={"train_loss": 0.987654, "eval_loss": 1.1})
    st = advance(handle, training)
    assert (st.status, st.secondary_status) == ("Completed", "Completed")
    assert [t["Status"] for t in st.status_transitions] == ["Uploading", "Completed"]
    assert st.log_lines[:2] == [SAMPLE_LOG_SMALL_LR, SAMPLE_END]
    assert json.loads(st.log_lines[2]) == {"event": "final", "train_loss": 0.987654, "eval_loss": 1.1}
    assert st.billable_seconds == 1234
    assert st.artifact_uri == f"s3://{BUCKET}/users/{USER}/models/{JOB}/output/model.tar.gz"
    assert st.artifact_uri == s3_store.uri(make_spec(s3_store).output_key)

    st = advance(handle, training)  # the final line is reported once
    assert st.status == "Completed" and st.log_lines == [] and st.status_transitions == []


def test_job_fails_with_the_reason(training: SageMakerTrainingBackend, s3_store: S3ObjectStore) -> None:
    handle = training.submit(make_spec(s3_store))
    moto_sm.set_training_job(JOB, secondary="Training")
    reason = ("AlgorithmError: ExecuteUserScriptError: ExitCode 1 ErrorMessage \"out_of_memory: ran out of "
              "memory: reduce batch_size or max_length\"")
    moto_sm.set_training_job(JOB, status="Failed", failure_reason=reason, billable_seconds=321)
    st = advance(handle, training)
    assert (st.status, st.secondary_status) == ("Failed", "Failed")
    assert st.failure_reason == reason and st.billable_seconds == 321 and st.artifact_uri is None


def test_stop_goes_through_stopping_to_stopped(training: SageMakerTrainingBackend, s3_store: S3ObjectStore) -> None:
    handle = training.submit(make_spec(s3_store))
    moto_sm.set_training_job(JOB, secondary="Training")
    training.stop(handle)
    st = advance(handle, training)
    assert (st.status, st.secondary_status) == ("Stopping", "Stopping")
    moto_sm.set_training_job(JOB, status="Stopped", billable_seconds=60)
    st = advance(handle, training)
    assert (st.status, st.secondary_status, st.billable_seconds) == ("Stopped", "Stopped", 60)
    assert st.artifact_uri is None
    training.stop(handle)  # stopping an ended job is not an error


def test_a_job_sagemaker_never_heard_of(training: SageMakerTrainingBackend) -> None:
    fresh = {"job_name": "never-created", "submitted_at": __import__("time").time()}
    assert training.describe(fresh).status == "InProgress"  # give AWS a moment
    st = training.describe({"job_name": "never-created", "submitted_at": 0})
    assert st.status == "Failed" and st.failure_reason and "never-created" in st.failure_reason


# --------------------------------------------------------------------------- AWS errors


def test_quota_error_is_429_capacity_unavailable(training: SageMakerTrainingBackend,
                                                  s3_store: S3ObjectStore) -> None:
    aws_message = ("The account-level service limit 'ml.g5.xlarge for training job usage' is 0 Instances, with "
                   "current utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service "
                   "Quotas to request an increase for this quota.")
    attempts = moto_sm.fail_next(training.sm, "CreateTrainingJob", "ResourceLimitExceeded", aws_message)
    with pytest.raises(AppError) as exc:
        training.submit(make_spec(s3_store))
    err = exc.value
    assert (err.status_code, err.code) == (429, "capacity_unavailable")
    assert "'ml.g5.xlarge for training job usage'" in err.message
    assert err.details and err.details[0]["aws_code"] == "ResourceLimitExceeded"
    assert err.details[0]["aws_message"] == aws_message
    assert attempts == ["error"]  # a quota error is not retried
    assert JOB not in moto_sm.backend().training_jobs


def test_validation_error_is_422_with_aws_message(training: SageMakerTrainingBackend,
                                                  s3_store: S3ObjectStore) -> None:
    msg = "1 validation error detected: Value 'ml.g5.huge' at 'resourceConfig.instanceType' failed to satisfy"
    moto_sm.fail_next(training.sm, "CreateTrainingJob", "ValidationException", msg)
    with pytest.raises(AppError) as exc:
        training.submit(make_spec(s3_store))
    assert (exc.value.status_code, exc.value.code) == (422, "backend_validation_error")
    assert msg in exc.value.message and exc.value.details[0]["aws_message"] == msg  # type: ignore[index]


def test_other_aws_errors_are_502(training: SageMakerTrainingBackend, s3_store: S3ObjectStore) -> None:
    handle = training.submit(make_spec(s3_store))
    moto_sm.fail_next(training.sm, "DescribeTrainingJob", "AccessDeniedException",
                      "User is not authorized to perform: sagemaker:DescribeTrainingJob")
    with pytest.raises(AppError) as exc:
        training.describe(handle)
    assert (exc.value.status_code, exc.value.code) == (502, "backend_error")
    assert exc.value.details[0]["aws_code"] == "AccessDeniedException"  # type: ignore[index]


def test_throttling_is_retried_by_botocore_adaptive_mode(training: SageMakerTrainingBackend,
                                                         s3_store: S3ObjectStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert training.sm.meta.config.retries["mode"] == "adaptive"
    handle = training.submit(make_spec(s3_store))
    limiter = moto_sm.fast_retries(monkeypatch)
    attempts = moto_sm.fail_next(training.sm, "DescribeTrainingJob", "ThrottlingException", "Rate exceeded",
                                 times=2)
    st = training.describe(handle)
    assert st.status == "InProgress"
    assert attempts == ["error", "error", "passed"]
    assert limiter  # the adaptive mode's client-side rate limiter switched on after the throttles


def test_throttling_that_outlasts_the_retries_is_503(training: SageMakerTrainingBackend, s3_store: S3ObjectStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    handle = training.submit(make_spec(s3_store))
    moto_sm.fast_retries(monkeypatch)
    attempts = moto_sm.fail_next(training.sm, "DescribeTrainingJob", "ThrottlingException", "Rate exceeded",
                                 times=100)
    with pytest.raises(AppError) as exc:
        training.describe(handle)
    assert (exc.value.status_code, exc.value.code) == (503, "backend_throttled")
    assert exc.value.headers == {"Retry-After": "30"}
    assert len(attempts) > 2 and exc.value.details[0]["retry_attempts"] == len(attempts) - 1  # type: ignore[index]


def test_map_aws_error_names_the_quota_even_when_aws_words_it_differently() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    e = ClientError({"Error": {"Code": "ResourceLimitExceeded", "Message": "Too many endpoints"}}, "CreateEndpoint")
    err = map_aws_error(e, "create_endpoint")
    assert err.status_code == 429 and "Too many endpoints" in err.message
    err = map_aws_error(EndpointConnectionError(endpoint_url="https://api.sagemaker"), "describe")
    assert (err.status_code, err.code) == (502, "backend_unreachable")


# --------------------------------------------------------------------------- CloudWatch Logs polling


class CountingLogs:
    """A CloudWatch Logs client that counts calls and can throttle."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls, self.throttle = real, {"describe_log_streams": 0, "get_log_events": 0}, False

    def _call(self, op: str, **kw: Any) -> Any:
        from botocore.exceptions import ClientError

        self.calls[op] += 1
        if self.throttle:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, op)
        return getattr(self.real, op)(**kw)

    def describe_log_streams(self, **kw: Any) -> Any:
        return self._call("describe_log_streams", **kw)

    def get_log_events(self, **kw: Any) -> Any:
        return self._call("get_log_events", **kw)


def test_log_polling_caches_stream_names_backs_off_and_honours_throttling(
        sm_settings: Settings, s3_store: S3ObjectStore) -> None:
    from app.backends.sagemaker_logs import MAX_WAIT_SECONDS, THROTTLED_WAIT_SECONDS, LogReader

    now = [1000.0]
    logs = CountingLogs(client(sm_settings, "logs"))
    reader = LogReader(logs, clock=lambda: now[0])
    handle: dict[str, Any] = {}

    def poll(ended: bool = False) -> list[str]:
        lines, update = reader.read(JOB, handle, ended)
        handle.update(update)
        return lines

    assert poll() == [] and logs.calls == {"describe_log_streams": 1, "get_log_events": 0}  # not started yet
    put_logs(sm_settings, JOB, [SAMPLE_LOG])
    assert poll() == []  # within the wait: no call at all
    assert logs.calls["describe_log_streams"] == 1
    now[0] += handle["log_wait"]
    assert poll() == [SAMPLE_LOG]
    # The stream's name is kept: reading on costs one GetLogEvents, no more DescribeLogStreams.
    for _ in range(6):
        now[0] += handle["log_wait"]
        assert poll() == []
    assert logs.calls["describe_log_streams"] == 2 and logs.calls["get_log_events"] == 2 + 6  # a page, then its end
    assert handle["log_wait"] == MAX_WAIT_SECONDS  # nothing new: the wait grew to its cap
    put_logs(sm_settings, JOB, [SAMPLE_EVAL])
    now[0] += MAX_WAIT_SECONDS
    assert poll() == [SAMPLE_EVAL] and handle["log_wait"] == 2.0  # lines came: read soon again
    logs.throttle = True
    now[0] += 2.0
    assert poll() == [] and handle["log_wait"] >= THROTTLED_WAIT_SECONDS
    logs.throttle = False
    put_logs(sm_settings, JOB, [SAMPLE_END])
    # The job ended: the streams are listed again and read to the end, whatever the wait.
    assert poll(ended=True) == [SAMPLE_END] and logs.calls["describe_log_streams"] == 3
