"""The cloud shape run as SageMaker would run it (tests/parity/container.py): the backend's own
requests against moto, then the real toolkits on an /opt/ml-shaped tree.

One module-scoped moto server and tiny model; the three runs build on each other in order:
a training job (train.py), an evaluation job of its model (evaluate.py, with the channels the
evaluation service sends) and an endpoint serving it (inference.py through the PyTorch inference
toolkit), the base model coming from a local folder as the built-in tiny model does, i.e. not from
the hub: the endpoint must find it without the training container's paths.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app import catalog
from app.backends.base import EndpointSpec, TrainingSpec
from app.backends.sagemaker import SageMakerEndpointBackend, SageMakerTrainingBackend
from app.config import AWSSettings, WorkerSettings
from app.evaluation import reconcile as evaluation_reconcile
from app.storage.s3 import S3ObjectStore
from app.training.schemas import Hyperparameters
from tests.backends import moto_sagemaker as moto_sm
from tests.parity import container
from tests.settings import make_test_settings

USER = str(uuid.UUID(int=7))
BUCKET = "llmtuner-parity"
BASE = "llmtuner/tiny-llama"
JOB = "llm-tune-parity-tiny-20260101-000000"
ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = (ROOT / "training_scripts" / "inference_requirements.txt").read_text()


def _records(n: int) -> bytes:
    qa = [("What is the capital of France?", "Paris."), ("How many legs has a cat?", "Four."),
          ("Name a primary colour.", "Red."), ("What is 2 + 2?", "4.")]
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
             for q, a in (qa * n)[:n]]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as mp, moto_sm.moto_server(mp) as url:
        settings = make_test_settings(data_dir=tmp / "data", backend="sagemaker", storage="s3",
                                      database_url="sqlite://", worker=WorkerSettings(enabled=False),
                                      aws=AWSSettings(region="us-east-1", s3_bucket=BUCKET, endpoint_url=url,
                                                      role_arn="arn:aws:iam::123456789012:role/LLMTunerSageMakerExecution"))
        s3 = container.s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        store = S3ObjectStore(s3, BUCKET)
        data = f"users/{USER}/datasets/d1/"
        store.put_stream(data + "train.jsonl", io.BytesIO(_records(16)))
        store.put_stream(data + "validation.jsonl", io.BytesIO(_records(4)))
        yield SimpleNamespace(url=url, settings=settings, store=store, tmp=tmp, data=data, state={},
                              training=SageMakerTrainingBackend(settings, store),
                              endpoints=SageMakerEndpointBackend(settings, store))


def _tail(proc: Any) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-8000:]}"


def test_training_job_runs_in_the_training_toolkit(cloud: SimpleNamespace) -> None:
    entry = catalog.base_model(cloud.settings, BASE)
    # As app/training/service.submit builds it, with a run of a few steps.
    hps = Hyperparameters(max_steps=2, batch_size=2, max_length=64, logging_steps=1, lora_rank=4, lora_alpha=8,
                          epochs=1).model_dump()
    spec = TrainingSpec(
        job_name=JOB, user_id=USER, base_model=BASE, base_model_source=catalog.resolve_source(cloud.settings, entry),
        hyperparameters={**hps, "task": entry["task"]}, instance_type="ml.g5.xlarge",
        train_key=cloud.data + "train.jsonl", validation_key=cloud.data + "validation.jsonl",
        output_key=f"users/{USER}/models/{JOB}/output/model.tar.gz",
        checkpoint_prefix=f"users/{USER}/models/{JOB}/checkpoints/")
    handle = cloud.training.submit(spec)
    request = cloud.training.training_request(spec, handle["source_uri"])  # what submit sent (moto drops some)
    proc, opt_ml = container.run_training_job(request, cloud.tmp / "train", cloud.url)
    assert proc.returncode == 0, _tail(proc)
    model_dir = opt_ml / "model"
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / "code" / "inference.py").is_file()
    # SageMaker packs /opt/ml/model into {S3OutputPath}/{job}/output/model.tar.gz.
    cloud.store.put_stream(spec.output_key, io.BytesIO(container.model_tarball(model_dir)))
    cloud.state["model_key"] = spec.output_key
    # The model's code/requirements.txt is what the inference container installs: the pinned set.
    assert (model_dir / "code" / "requirements.txt").read_text() == REQUIREMENTS
    # The model names its base by the name the user chose, never by a path of the container.
    summary = json.loads((model_dir / "training_summary.json").read_text())
    assert summary["base_model"] == BASE
    for name in ("training_summary.json", "adapter_config.json"):
        assert "/opt/ml" not in (model_dir / name).read_text() and str(cloud.tmp) not in (model_dir / name).read_text()


def test_evaluation_job_runs_with_the_channels_the_service_sends(cloud: SimpleNamespace) -> None:
    if "model_key" not in cloud.state:
        pytest.skip("the training run failed")
    specs: list[TrainingSpec] = []
    backends = SimpleNamespace(training=SimpleNamespace(submit=lambda spec: specs.append(spec) or {"job": 1}))
    ev = SimpleNamespace(id=str(uuid.UUID(int=9)), user_id=USER, backend_handle={}, created_at=datetime.now(UTC),
                         request={
        "base_model": BASE, "model_key": cloud.state["model_key"], "data_key": cloud.data + "validation.jsonl",
        "metrics": ["perplexity", "exact_match"], "compare_with_base": True, "max_examples": 4,
        "generation": {"max_new_tokens": 4}, "include_general_probe": False, "instance_type": "ml.g5.xlarge"})
    evaluation_reconcile.submit(SimpleNamespace(settings=cloud.settings, store=cloud.store, backends=backends), ev)
    [spec] = specs
    request = cloud.training.training_request(spec, cloud.training.upload_source(USER))  # raised ValueError before
    proc, opt_ml = container.run_training_job(request, cloud.tmp / "evaluate", cloud.url)
    assert proc.returncode == 0, _tail(proc)
    result = json.loads((opt_ml / "model" / "evaluation.json").read_text())
    assert result["tuned"]["perplexity"] > 0 and result["base"]["perplexity"] > 0, result


OK = {"inputs": "What is the capital of France?", "parameters": {"max_new_tokens": 5, "temperature": 0}}


def _serve(request: dict[str, Any], cloud: SimpleNamespace) -> Any:
    bad = {"inputs": "hi", "parameters": {"temperature": -1}}
    return container.run_endpoint(request, cloud.tmp / "endpoint", cloud.url,
                                  [{"body": json.dumps(OK)}, {"body": json.dumps(bad)}, {"body": "{oops"}],
                                  keep=lambda name: not name.startswith("base_model"))


def test_endpoint_serves_through_the_inference_toolkit(cloud: SimpleNamespace) -> None:
    """The model.tar.gz of a base too big to bundle (base_model/ left out): the endpoint gets the base
    from its content-addressed copy in S3, not from the training container's channel path."""
    if "model_key" not in cloud.state:
        pytest.skip("the training run failed")
    key = cloud.state["model_key"]
    entry = catalog.base_model(cloud.settings, BASE)
    spec = EndpointSpec(endpoint_name="parity-ep", user_id=USER, model_uri=cloud.store.uri(key), model_key=key,
                        base_model_source=catalog.resolve_source(cloud.settings, entry), instance_type="ml.g5.xlarge")
    request = cloud.endpoints.model_request(spec, "parity-model")
    # An endpoint never sees the machine that trained the model nor the service's own disk: what the
    # model records as paths of either must not be what makes it load here.
    for gone in (cloud.tmp / "train", cloud.tmp / "evaluate"):
        shutil.rmtree(gone, ignore_errors=True)
    hidden = cloud.settings.data_path.with_name("data-hidden")
    cloud.settings.data_path.rename(hidden)
    try:
        proc, answers = _serve(request, cloud)
    finally:
        hidden.rename(cloud.settings.data_path)
    assert proc.returncode == 0, _tail(proc)
    first, invalid, not_json = answers
    assert first["status"] == 200, first
    [result] = json.loads(first["body"])
    assert result["generated_text"].startswith(OK["inputs"]) and result["details"]["completion_tokens"] >= 1
    # The toolkit answers inference.py's errors with their status, and the service reads the JSON back.
    assert invalid["status"] == 400
    error, _ = json.JSONDecoder().raw_decode(invalid["body"])
    assert error["error"]["code"] == "invalid_parameters" and error["error"]["param"] == "parameters.temperature"
    assert not_json["status"] == 400 and '"param": "body"' in not_json["body"]
