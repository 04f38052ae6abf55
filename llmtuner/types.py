"""Typed objects that mirror the API's schemas (tests/client checks them against /openapi.json).

Unknown fields from a newer server are kept (`extra="allow"`), so an older client keeps working."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class APIModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


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


class Usage(APIModel):
    currency: str = "USD"
    month: str
    training: TrainingUsage
    inference: InferenceUsage
    evaluation: EvaluationUsage
    total: float
    this_month: float
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
