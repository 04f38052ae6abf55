"""Accounts, datasets and training jobs, as the API returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from llmtuner.types.base import APIModel

# --- auth -------------------------------------------------------------------------------------

class User(APIModel):
    id: str
    username: str
    email: str
    is_admin: bool
    monthly_budget: float | None
    created_at: datetime


class Token(APIModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


# --- datasets ---------------------------------------------------------------------------------

class Issue(APIModel):
    """One problem, located in the uploaded file (`line` is 1-based)."""

    line: int | None = None
    field: str | None = None
    code: str
    message: str
    severity: str = "error"
    record: int | None = None


class DatasetReport(APIModel):
    """The validation report of an upload."""

    is_valid: bool
    format: str | None = None
    total_examples: int = 0
    valid_examples: int = 0
    avg_prompt_length: float = 0.0
    avg_response_length: float = 0.0
    duplicates: int = 0
    issues: list[Issue] = []
    issues_truncated: int = 0
    errors_count: int = 0
    warnings_count: int = 0
    token_stats: dict[str, Any] | None = None


class Dataset(APIModel):
    id: str
    name: str
    filename: str
    status: str
    format: str | None
    size_bytes: int
    sha256: str
    num_examples: int
    created_at: datetime
    report: DatasetReport


class DatasetPreview(APIModel):
    dataset_id: str
    format: str | None
    training_format: str = ""
    data: list[dict[str, Any]]


# --- training ---------------------------------------------------------------------------------

class TrainingConfig(APIModel):
    """A job's hyperparameters. Leave a field unset for the server's default."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    gradient_accumulation_steps: int | None = None
    max_length: int | None = None
    use_lora: bool | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    lr_scheduler_type: str | None = None
    early_stopping_patience: int | None = None
    early_stopping_threshold: float | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int | None = None
    save_total_limit: int | None = None
    fp16: bool | None = None
    bf16: bool | None = None
    load_in_4bit: bool | None = None
    train_on_inputs: bool | None = None
    seed: int | None = None
    max_steps: int | None = None
    merge_adapter: bool | None = None
    cpu_accel: bool | None = None


class MetricValue(APIModel):
    metric_name: str
    value: float


class JobError(APIModel):
    code: str
    message: str


class JobProgress(APIModel):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    epochs: float | None = None
    percent: float | None = None


class TrainingJob(APIModel):
    job_name: str
    status: str  # InProgress | Completed | Failed | Stopping | Stopped
    secondary_status: str
    model_artifacts_s3_uri: str | None
    training_metrics: list[MetricValue]
    estimated_cost: float
    actual_cost: float | None
    currency: str = "USD"
    billable_seconds: int
    base_model: str
    dataset_id: str | None
    hyperparameters: dict[str, Any]
    instance_type: str
    backend: str
    validation_split: float
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    progress: JobProgress
    error: JobError | None

    @property
    def ended(self) -> bool:
        return self.status in ("Completed", "Failed", "Stopped")

    def metric(self, name: str) -> float | None:
        """The latest value of a summary metric (e.g. `train_loss`), or None."""
        return next((m.value for m in reversed(self.training_metrics) if m.metric_name == name), None)


class MetricPoint(APIModel):
    metric_name: str
    step: int | None
    epoch: float | None
    value: float
    timestamp: datetime


class Event(APIModel):
    timestamp: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


class Action(APIModel):
    name: str
    available: bool
    method: str
    path: str
    reason: str | None = None
    body: dict[str, Any] | None = None


class JobActions(APIModel):
    job_name: str
    status: str
    actions: list[Action]


class ModelDownload(APIModel):
    download_url: str
    model_s3_uri: str
    job_name: str
    expires_in: int = 3600


class CostEstimate(APIModel):
    estimated_tokens: int
    estimated_seconds: int
    estimated_cost: float
    currency: str = "USD"
    instance_type: str
    price_per_hour: float
    assumptions: dict[str, Any]
