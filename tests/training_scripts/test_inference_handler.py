"""training_scripts/inference.py: the HF inference toolkit handler, in process."""

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


def test_predict_fn_bad_params(model: modeling.Loaded) -> None:
    with pytest.raises(ValueError) as ei:
        inference.predict_fn({"inputs": "hi", "parameters": {"temperature": -1, "top_k": "a"}}, model)
    assert isinstance(ei.value, modeling.ParamError)
    assert {p for p, _ in ei.value.errors} == {"parameters.temperature", "parameters.top_k"}
    assert "parameters.temperature" in str(ei.value)
    with pytest.raises(modeling.ParamError):
        inference.input_fn(b"{oops", "application/json")
