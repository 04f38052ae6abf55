"""Handler for the HuggingFace inference toolkit on SageMaker (code/inference.py in model.tar.gz).

The toolkit calls model_fn(model_dir[, context]) once, then for each request
input_fn(body, content_type) -> predict_fn(data, model) -> output_fn(prediction, accept).
Loading and generation are modeling.py's, the same code serve.py runs, so both give the
same answers.

predict_fn takes {"inputs": str | [str, ...], "parameters": {...}} (parameters as in
modeling.py) and returns what serve.py's /invocations returns: one
{"generated_text", "details": {"prompt_tokens", "completion_tokens", "finish_reason"}}
per input, in order. Invalid requests raise modeling.ParamError (a ValueError; the
toolkit answers 400 with its message, which names each bad parameter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import modeling  # noqa: E402

ParamError = modeling.ParamError


def model_fn(model_dir: str, context: Any = None) -> modeling.Loaded:
    return modeling.load_model(model_dir)


def input_fn(input_data: Any, content_type: str | None = "application/json", context: Any = None) -> Any:
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if isinstance(input_data, bytes | bytearray):
        input_data = input_data.decode("utf-8")
    if ctype in ("application/json", "application/x-json", "*/*", ""):
        if isinstance(input_data, str):
            try:
                return json.loads(input_data)
            except ValueError as e:
                raise ParamError([("body", f"not valid JSON: {e}")]) from e
        return input_data
    if ctype.startswith("text/"):
        return {"inputs": str(input_data)}
    raise ParamError([("content_type", f"unsupported content type {content_type!r}; use application/json")])


def predict_fn(data: Any, model: modeling.Loaded, context: Any = None) -> list[dict[str, Any]]:
    texts, params, _ = modeling.parse_request(data)
    results = modeling.generate_batch(model, texts, [params] * len(texts))
    return [modeling.format_result(r) for r in results]


def output_fn(prediction: Any, accept: str | None = "application/json", context: Any = None) -> str:
    return json.dumps(prediction, ensure_ascii=False)
