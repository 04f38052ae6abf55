"""SageMaker's training-container contract, shared by train.py and evaluate.py (imports nothing
from app/): hyperparameters come from SM_HPS or /opt/ml/input/config/hyperparameters.json, and
SageMaker passes every value as a string, so each string is JSON-decoded when it parses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_hyperparameters(env: dict[str, str], error: Callable[[str], Exception]) -> dict[str, Any]:
    """The hyperparameters without SageMaker's own `sagemaker_*` keys; `error(message)` is raised
    when the source is not a JSON object."""
    if env.get("SM_HPS"):
        text, where = env["SM_HPS"], "SM_HPS"
    else:
        path = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "hyperparameters.json"
        text, where = (path.read_text() if path.exists() else "{}"), str(path)
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{where} must hold a JSON object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("sagemaker_"):
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out
