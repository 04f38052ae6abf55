from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]


class Hyperparameters(BaseModel):
    """Seed 002's TrainingConfig; every field is honoured by training_scripts/train.py."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1, le=100, description="passes over the training split")
    batch_size: int = Field(4, ge=1, le=512, description="examples per device step")
    learning_rate: float = Field(2e-4, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0, le=1_000_000)
    warmup_ratio: float = Field(0.0, ge=0, le=0.5)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_length: int = Field(512, ge=16, le=32768, description="tokens; longer examples are truncated")
    use_lora: bool = True
    lora_rank: int = Field(16, ge=1, le=256)
    lora_alpha: float = Field(32, gt=0, le=1024)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0, le=1000)
    lr_scheduler_type: Scheduler = "linear"
    early_stopping_patience: int | None = Field(None, ge=1, le=1000)
    early_stopping_threshold: float = Field(0.0, ge=0)
    eval_steps: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    logging_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(2, ge=1, le=100)
    fp16: bool = False
    bf16: bool = False
    load_in_4bit: bool = False
    train_on_inputs: bool = False
    seed: int = Field(42, ge=0, le=2**31 - 1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    merge_adapter: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> Hyperparameters:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 cannot both be true")
        if self.load_in_4bit and not self.use_lora:
            raise ValueError("load_in_4bit (QLoRA) needs use_lora: true")
        if self.save_steps and self.eval_steps and self.early_stopping_patience and \
                self.save_steps % self.eval_steps:
            raise ValueError("with early stopping, save_steps must be a multiple of eval_steps")
        return self


class TrainingJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    base_model: str | None = Field(None, max_length=255, description="catalogue id; default per backend")
    hyperparameters: Hyperparameters = Hyperparameters()
    instance_type: str | None = Field(None, max_length=64, description="default: local / ml.g5.xlarge")
    validation_split: float = Field(0.2, ge=0, le=0.5)
    name: str | None = Field(None, max_length=63, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$",
                             description="job name instead of the generated llm-tune-... one")


class CostEstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    base_model: str | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    instance_type: str | None = None
    validation_split: float = Field(0.2, ge=0, le=0.5)


class CostEstimate(BaseModel):
    estimated_tokens: int
    estimated_seconds: int
    estimated_cost: float
    currency: str = "USD"
    instance_type: str
    price_per_hour: float
    assumptions: dict[str, Any]


class MetricValue(BaseModel):
    metric_name: str
    value: float


class JobError(BaseModel):
    code: str
    message: str


class TrainingJobRead(BaseModel):
    job_name: str
    status: str
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
    progress: dict[str, Any]
    error: JobError | None


class TrainingJobList(BaseModel):
    data: list[TrainingJobRead]
    has_more: bool
    next_cursor: str | None



class MetricPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    metric_name: str
    step: int | None
    epoch: float | None
    value: float
    timestamp: datetime


class ModelDownload(BaseModel):
    download_url: str
    model_s3_uri: str
    job_name: str
    expires_in: int = 3600


class Action(BaseModel):
    name: str
    available: bool
    method: str
    path: str
    reason: str | None = None
    body: dict[str, Any] | None = None


class JobActions(BaseModel):
    job_name: str
    status: str
    actions: list[Action]
