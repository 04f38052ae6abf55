from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.evaluation.metrics import ALL_METRICS
from app.statuses import EvaluationStatus

Metric = Literal["perplexity", "bleu", "rouge_l", "exact_match", "json_valid_rate", "mean_generated_length"]
__all__ = ["ALL_METRICS", "Metric"]


class GenerationConfig(BaseModel):
    """How the models answer the evaluation prompts; greedy (temperature 0) by default, so that
    scores are reproducible."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0, le=5, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=1000)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: list[str] = Field(default_factory=list, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: list[str]) -> list[str]:
        if any(not s or len(s) > 64 for s in stop):
            raise ValueError("each stop sequence must be 1-64 characters")
        return stop


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=255, description="a job name, a model_id or a registered model name")
    dataset_id: str | None = Field(None, max_length=36, description="default: the job's validation split")
    metrics: list[Metric] | None = Field(None, min_length=1, description="default: all")
    compare_with_base: bool = True
    max_examples: int = Field(50, ge=1, le=1000)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    include_general_probe: bool = True
    instance_type: str | None = Field(None, max_length=64, description="default: the training job's")


class EvaluationError(BaseModel):
    code: str
    message: str


class Sample(BaseModel):
    prompt: str
    reference: str
    base_output: str | None
    tuned_output: str


class ProbeScore(BaseModel):
    passed: int
    total: int
    score: float | None


class GeneralCapability(BaseModel):
    tuned: ProbeScore
    base: ProbeScore | None
    forgetting: bool | None
    items: list[dict[str, Any]] = []


class EvaluationResults(BaseModel):
    """Per-model metrics; `improvement` is positive where tuned is better (base - tuned for perplexity)."""

    model_config = ConfigDict(extra="allow")

    tuned: dict[str, float | None]
    base: dict[str, float | None] | None = None
    improvement: dict[str, float | None] | None = None
    general_capability: GeneralCapability | None = None
    samples: list[Sample] = []


class EvaluationProgress(BaseModel):
    done: int
    total: int
    phase: str | None = None
    model: str | None = None


class EvaluationRead(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: EvaluationStatus
    model: str
    job_name: str
    registered_model_id: str | None
    base_model: str
    dataset_id: str | None
    dataset: str = Field(description="'validation_split' of the job, or 'dataset'")
    metrics: list[str]
    compare_with_base: bool
    max_examples: int
    generation: GenerationConfig
    include_general_probe: bool
    instance_type: str
    backend: str
    progress: EvaluationProgress | None
    results: EvaluationResults | None
    error: EvaluationError | None
    billable_seconds: int
    cost: float
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class MetricInfo(BaseModel):
    name: str
    description: str
    range: str
    higher_is_better: bool | None


class MetricList(BaseModel):
    data: list[MetricInfo]


class EvaluationList(BaseModel):
    data: list[EvaluationRead]
    has_more: bool
    next_cursor: str | None
