"""SageMaker's training-container contract, shared by train.py and evaluate.py (imports nothing
from app/): hyperparameters come from SM_HPS or /opt/ml/input/config/hyperparameters.json, and
SageMaker passes every value as a string, so each string is JSON-decoded when it parses. Inputs
and outputs are the SM_CHANNEL_* and SM_*_DIR folders; a failure leaves "{code}: {message}" in
the failure file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TrainError(Exception):
    """A failure with a stable code and a message telling the user what to change."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


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


@dataclass
class Paths:
    train_dir: Path
    validation_dir: Path | None
    model_channel: Path | None
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    failure_file: Path

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Paths:
        """Checkpoints go to $SM_CHECKPOINT_DIR, /opt/ml/checkpoints when it exists (SageMaker syncs it
        to S3), else $SM_OUTPUT_DATA_DIR/checkpoints."""
        out_data = Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
        if env.get("SM_CHECKPOINT_DIR"):
            ckpt = Path(env["SM_CHECKPOINT_DIR"])
        elif Path("/opt/ml/checkpoints").is_dir():
            ckpt = Path("/opt/ml/checkpoints")
        else:
            ckpt = out_data / "checkpoints"
        val = env.get("SM_CHANNEL_VALIDATION")
        return cls(
            train_dir=Path(env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")),
            validation_dir=Path(val) if val else None,
            model_channel=Path(env["SM_CHANNEL_MODEL"]) if env.get("SM_CHANNEL_MODEL") else None,
            model_dir=Path(env.get("SM_MODEL_DIR", "/opt/ml/model")),
            output_data_dir=out_data,
            checkpoint_dir=ckpt,
            failure_file=Path(env.get("SM_OUTPUT_DIR") or out_data.parent) / "failure",
        )


def write_failure(env: dict[str, str], code: str, message: str) -> None:
    """The one line SageMaker shows as the job's FailureReason."""
    failure = Paths.from_env(env).failure_file
    failure.parent.mkdir(parents=True, exist_ok=True)
    failure.write_text(f"{code}: {message}"[:1000] + "\n")
