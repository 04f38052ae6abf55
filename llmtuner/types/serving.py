"""Endpoints, invocations, the registry, evaluations, usage and API keys, as the API returns them."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from llmtuner.types.base import APIModel

# --- deployments ------------------------------------------------------------------------------

class Adapter(APIModel):
    """An adapter served by a base-model endpoint (`model` names it in requests)."""

    name: str
    status: str  # attached | detached
    job_name: str | None
    registered_model_id: str | None
    base_model: str | None
    created_at: datetime
    detached_at: datetime | None


class Endpoint(APIModel):
    endpoint_name: str
    status: str  # Creating | InService | Updating | Failed | Deleting | OutOfService | Deleted
    failure_reason: str | None
    instance_type: str
    initial_instance_count: int
    estimated_cost_per_hour: float
    accrued_cost: float
    currency: str = "USD"
    created_at: datetime
    in_service_at: datetime | None
    deleted_at: datetime | None
    model_name: str
    model_uri: str
    base_model: str | None
    job_name: str | None
    registered_model_id: str | None
    backend: str
    adapters: list[Adapter] = []


class DeploymentSummary(APIModel):
    endpoint_name: str
    status: str
    instance_type: str
    estimated_cost_per_hour: float


class Deployment(APIModel):
    message: str = "Model deployment initiated"
    deployment: DeploymentSummary


class GenerationParameters(APIModel):
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class TokenUsage(APIModel):
    prompt_tokens: int
    completion_tokens: int


class InvokeResult(APIModel):
    input_text: str
    generated_text: str
    endpoint_name: str
    timestamp: datetime
    usage: TokenUsage
    parameters: dict[str, Any]


class InvokeResponse(APIModel):
    result: InvokeResult
    status: str = "success"


# --- registry and evaluation ------------------------------------------------------------------

class RegisteredModel(APIModel):
    model_id: str
    model_name: str
    version: int
    description: str
    tags: list[str]
    job_name: str
    base_model: str
    model_uri: str
    created_at: datetime


class GenerationConfig(APIModel):
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = []
    seed: int | None = None


class EvaluationProgress(APIModel):
    done: int
    total: int
    phase: str | None = None
    model: str | None = None


class ProbeScore(APIModel):
    passed: int
    total: int
    score: float | None


class GeneralCapability(APIModel):
    tuned: ProbeScore
    base: ProbeScore | None
    forgetting: bool | None
    items: list[dict[str, Any]] = []


class Sample(APIModel):
    prompt: str
    reference: str
    base_output: str | None
    tuned_output: str


class EvaluationResults(APIModel):
    tuned: dict[str, Any]
    base: dict[str, Any] | None = None
    improvement: dict[str, Any] | None = None
    general_capability: GeneralCapability | None = None
    samples: list[Sample] = []


class EvaluationError(APIModel):
    code: str
    message: str


class Evaluation(APIModel):
    id: str
    status: Literal["Pending", "InProgress", "Completed", "Failed"] | str
    model: str
    job_name: str
    registered_model_id: str | None
    base_model: str
    dataset_id: str | None
    dataset: str
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


# --- usage ------------------------------------------------------------------------------------

class JobCost(APIModel):
    job_name: str
    status: str
    cost: float
    billable_seconds: int
    estimated_cost: float
    instance_type: str
    created_at: datetime


class TrainingUsage(APIModel):
    total: float
    this_month: float
    count: int  # how many in all; the list holds the newest only
    jobs: list[JobCost]


class EndpointCost(APIModel):
    endpoint_name: str
    status: str
    accrued_cost: float
    this_month: float
    price_per_hour: float
    instance_type: str
    created_at: datetime
    deleted_at: datetime | None


class InferenceUsage(APIModel):
    total: float
    this_month: float
    count: int  # how many in all; the list holds the newest only
    endpoints: list[EndpointCost]


class EvaluationCost(APIModel):
    id: str
    status: str
    cost: float
    billable_seconds: int
    created_at: datetime


class EvaluationUsage(APIModel):
    total: float
    this_month: float
    count: int  # how many in all; the list holds the newest only
    evaluations: list[EvaluationCost]


class Budget(APIModel):
    monthly_budget: float
    spent_this_month: float
    remaining: float
    exceeded: bool


class UsageWarning(APIModel):
    code: str
    message: str
    endpoint_name: str | None = None


class DailySpend(APIModel):
    day: date  # a UTC day
    training: float
    inference: float
    evaluation: float


class Usage(APIModel):
    currency: str = "USD"
    month: str
    training: TrainingUsage
    inference: InferenceUsage
    evaluation: EvaluationUsage
    total: float
    this_month: float
    daily: list[DailySpend]  # the last 30 UTC days, oldest first, today last
    budget: Budget | None
    warnings: list[UsageWarning]



# --- API keys ---------------------------------------------------------------------------------

class ApiKey(APIModel):
    id: str
    name: str
    prefix: str
    scope: str  # inference | full
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str  # the secret (`llmt_...`), shown in this response only
