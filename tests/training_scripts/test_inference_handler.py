"""training_scripts/inference.py: the PyTorch inference toolkit's handler contract, in process
(tests/parity runs it through the toolkit itself)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.training_scripts.test_serve import make_trained_adapter

SCRIPTS = Path(__file__).resolve().parents[2] / "training_scripts"
sys.path.insert(0, str(SCRIPTS))

import inference  # noqa: E402
import modeling  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """The tiny model gains nothing from intra-op threads, and on a busy shared CPU extra
    threads spin and make every step several times slower. Restored after this module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> modeling.Loaded:
    _, model_dir = make_trained_adapter(tmp_path_factory.mktemp("handler-model"))
    return inference.model_fn(str(model_dir))


def test_model_fn_and_predict_fn(model: modeling.Loaded) -> None:
    assert model.kind == "lora" and model.apply_template
    data = inference.input_fn(json.dumps({"inputs": "Hello", "parameters": {"max_new_tokens": 6}}),
                              "application/json")
    out = inference.predict_fn(data, model)
    assert isinstance(out, list) and len(out) == 1
    assert out[0]["generated_text"].startswith("Hello")
    assert out[0]["details"]["completion_tokens"] == 6
    assert out[0]["details"]["finish_reason"] == "length"
    body = inference.output_fn(out, "application/json")
    assert json.loads(body) == out


def test_predict_fn_list_matches_modeling(model: modeling.Loaded) -> None:
    prompts = ["Hello", "How do I reset my password?"]
    params = {"max_new_tokens": 8, "return_full_text": False}
    out = inference.predict_fn({"inputs": prompts, "parameters": params}, model)
    p = modeling.GenerationParams.from_dict(params)
    expected = [modeling.generate_batch(model, [t], [p])[0]["generated_text"] for t in prompts]
    assert [o["generated_text"] for o in out] == expected


def _error_body(e: inference.InvokeError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.message)["error"]
    return body


def test_bad_params_are_400_naming_each_parameter(model: modeling.Loaded) -> None:
    from sagemaker_inference.errors import BaseInferenceToolkitError

    with pytest.raises(inference.InvokeError) as ei:
        inference.predict_fn({"inputs": "hi", "parameters": {"temperature": -1, "top_k": "a"}}, model)
    # The toolkit answers a BaseInferenceToolkitError with its status (anything else is a 500).
    assert isinstance(ei.value, BaseInferenceToolkitError) and ei.value.status_code == 400
    body = _error_body(ei.value)
    assert body["code"] == "invalid_parameters" and body["param"] in ("parameters.temperature", "parameters.top_k")
    assert {d["param"] for d in body["details"]} == {"parameters.temperature", "parameters.top_k"}
    with pytest.raises(inference.InvokeError) as ei:
        inference.input_fn(b"{oops", "application/json")
    assert ei.value.status_code == 400 and _error_body(ei.value)["param"] == "body"


def test_out_of_memory_is_503_not_a_bad_request(model: modeling.Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def oom(*a: Any, **kw: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(modeling, "generate_batch", oom)
    with pytest.raises(inference.InvokeError) as ei:
        inference.predict_fn({"inputs": "hi"}, model)
    assert ei.value.status_code == 503 and _error_body(ei.value)["code"] == "endpoint_out_of_memory"


def test_generation_stops_at_the_deadline_with_504(model: modeling.Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """SageMaker stops waiting after 60 s; the worker must not keep generating for nobody."""
    monkeypatch.setenv("LLMTUNER_GENERATION_DEADLINE_SECONDS", "0.000001")
    with pytest.raises(inference.InvokeError) as ei:
        inference.predict_fn({"inputs": "hi", "parameters": {"max_new_tokens": 64, "ignore_eos": True}}, model)
    assert ei.value.status_code == 504 and _error_body(ei.value)["code"] == "generation_timeout"


def test_base_model_not_on_the_hub_comes_from_s3_never_a_training_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter whose summary names the training container's channel (/opt/ml/input/data/model)
    cannot load on an endpoint: the base comes from LLMTUNER_BASE_MODEL_S3_URI instead."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("LLMTUNER_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMTUNER_BASE_MODEL", raising=False)
    monkeypatch.delenv("LLMTUNER_BASE_MODEL_S3_URI", raising=False)
    for var, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    container_path = {"base_model": "/opt/ml/input/data/model"}
    with pytest.raises(modeling.ModelLoadError, match="LLMTUNER_BASE_MODEL_S3_URI"):
        modeling._pick_base(adapter, None, container_path, {})
    # A name that is not a path is taken as a hub id.
    assert modeling._pick_base(adapter, None, {"base_model": "gpt2"}, container_path) == "gpt2"
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="users/u/models/_base_models/abc/config.json", Body=b"{}")
        s3.put_object(Bucket="models", Key="users/u/models/_base_models/abc/sub/tokenizer.json", Body=b"[]")
        s3.put_object(Bucket="models", Key="users/u/models/_base_models/abcdef.complete", Body=b"x")
        monkeypatch.setenv("LLMTUNER_BASE_MODEL_S3_URI", "s3://models/users/u/models/_base_models/abc/")
        base = Path(modeling._pick_base(adapter, None, container_path, {}))
        assert (base / "config.json").read_text() == "{}" and (base / "sub" / "tokenizer.json").exists()
        assert not (base.parent / "abcdef.complete").exists() and base.is_relative_to(tmp_path / "cache")
        assert modeling._pick_base(adapter, None, container_path, {}) == str(base)  # downloaded once
        # A bundled base_model/ wins over the download.
        (adapter / "base_model").mkdir()
        (adapter / "base_model" / "config.json").write_text("{}")
        assert modeling._pick_base(adapter, None, container_path, {}) == str(adapter / "base_model")
