"""Handler for SageMaker's PyTorch inference container (code/inference.py in model.tar.gz).

The toolkit (sagemaker-inference's Transformer, run by TorchServe) calls model_fn(model_dir[,
context]) once when the worker starts, then for each request input_fn(body, content_type) ->
predict_fn(data, model) -> output_fn(prediction, accept). Loading and generation are modeling.py's,
the same code serve.py runs, so both give the same answers.

predict_fn takes {"inputs": str | [str, ...], "parameters": {...}} (parameters as in modeling.py)
and returns what serve.py's /invocations returns: one {"generated_text", "details":
{"prompt_tokens", "completion_tokens", "finish_reason"}} per input, in order.

Errors are the toolkit's `BaseInferenceToolkitError(status, message, phrase)`, whose status the
model server answers with (any other exception becomes a 500) and whose message is a JSON object
{"error": {"code", "message", "param", "details"}} that the service reads back:

  400  invalid request (modeling.ParamError: each bad parameter named)
  503  the GPU ran out of memory for this request (retry with fewer or shorter inputs)
  504  generation ran past LLMTUNER_GENERATION_DEADLINE_SECONDS (set a little under SageMaker's
       60 s invoke limit, so the single worker is free again when SageMaker gives up)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import modeling  # noqa: E402

ParamError = modeling.ParamError

try:  # in the container; tests without the toolkit get a stand-in with the same fields
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - the toolkit is installed wherever the tests run

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)


class InvokeError(_ToolkitError):
    """An error answer with its HTTP status and a JSON body in the service's error shape."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 details: Any = None) -> None:
        self.code, self.param, self.details = code, param, details
        body = json.dumps({"error": {"code": code, "message": message, "param": param, "details": details}})
        super().__init__(status, body, code)


def model_fn(model_dir: str, context: Any = None) -> modeling.Loaded:
    # A failure here fails the worker's start and so the endpoint's health check, with the
    # reason in the endpoint's CloudWatch log.
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
                raise InvokeError(400, "invalid_json", f"the body is not valid JSON: {e}", "body") from e
        return input_data
    if ctype.startswith("text/"):
        return {"inputs": str(input_data)}
    raise InvokeError(400, "unsupported_content_type",
                      f"unsupported content type {content_type!r}; use application/json", "content_type")


def _deadline_check() -> Any:
    limit = float(os.environ.get("LLMTUNER_GENERATION_DEADLINE_SECONDS") or 0)
    if limit <= 0:
        return None, None
    end = time.monotonic() + limit
    return (lambda: time.monotonic() > end), limit


def predict_fn(data: Any, model: modeling.Loaded, context: Any = None) -> list[dict[str, Any]]:
    import torch

    try:
        texts, params, _ = modeling.parse_request(data)
        check, limit = _deadline_check()
        results = modeling.generate_batch(model, texts, [params] * len(texts), cancel_check=check)
    except ParamError as e:
        raise InvokeError(400, "invalid_parameters", str(e), e.param, e.details()) from e
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        raise InvokeError(503, "endpoint_out_of_memory", "the GPU ran out of memory for this request; send "
                          "fewer or shorter inputs, or ask for fewer max_new_tokens") from e
    if check is not None and check():
        raise InvokeError(504, "generation_timeout", f"generation ran past the endpoint's {limit:g} s limit; "
                          "ask for fewer max_new_tokens", "parameters.max_new_tokens")
    return [modeling.format_result(r) for r in results]


def output_fn(prediction: Any, accept: str | None = "application/json", context: Any = None) -> str:
    return json.dumps(prediction, ensure_ascii=False)
