"""Request and response shapes of deployment and inference."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# `{model_name}-endpoint` must fit SageMaker's 63-character endpoint names.
MODEL_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$"
MAX_NEW_TOKENS = 4096  # serve.py's own limit (training_scripts/modeling.py)


class AdapterRef(BaseModel):
    """A LoRA adapter for a base-model endpoint: a Completed job or a registered model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    job_name: str | None = Field(None, min_length=1, max_length=63)
    model_id: str | None = Field(None, min_length=1, max_length=63, description="a registered model's model_id")
    name: str | None = Field(None, min_length=1, max_length=63, pattern=MODEL_NAME_PATTERN,
                             description="what `model` names it in requests (default: the job name, or the "
                             "registered model's name)")

    @model_validator(mode="after")
    def _one_source(self) -> AdapterRef:
        if (self.job_name is None) == (self.model_id is None):
            raise ValueError("give exactly one of job_name or model_id")
        return self


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_model: str | None = Field(None, min_length=1, max_length=255,
                                   description="deploy this base model once and serve adapters on it")
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=100,
                                       description="adapters of base_model to attach at start")
    model_s3_uri: str | None = Field(None, min_length=1, max_length=1024)
    job_name: str | None = Field(None, min_length=1, max_length=63)
    model_id: str | None = Field(None, min_length=1, max_length=63,
                                 description="a registered model's model_id")
    model_name: str = Field(min_length=1, max_length=50, pattern=MODEL_NAME_PATTERN)
    instance_type: str = Field("ml.g5.xlarge", min_length=1, max_length=64)
    initial_instance_count: int = Field(1, ge=1, le=10, strict=True)

    @model_validator(mode="after")
    def _one_source(self) -> DeployRequest:
        given = [n for n in ("model_s3_uri", "job_name", "model_id", "base_model") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of model_s3_uri, job_name, model_id or base_model"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.adapters and self.base_model is None:
            raise ValueError("adapters need base_model: the endpoint serves them on that base model")
        return self


class DeploymentSummary(BaseModel):
    endpoint_name: str
    status: str
    instance_type: str
    estimated_cost_per_hour: float


class DeployResponse(BaseModel):
    message: str = "Model deployment initiated"
    deployment: DeploymentSummary


class AdapterRead(BaseModel):
    name: str
    status: Literal["attached", "detached"]
    job_name: str | None
    registered_model_id: str | None
    base_model: str | None
    created_at: datetime
    detached_at: datetime | None


class AdapterUsage(BaseModel):
    adapter: str | None
    requests: int
    streamed: int
    prompt_tokens: int
    completion_tokens: int


class EndpointRead(BaseModel):
    endpoint_name: str
    status: str
    failure_reason: str | None
    instance_type: str
    initial_instance_count: int
    estimated_cost_per_hour: float
    accrued_cost: float
    currency: Literal["USD"] = "USD"
    created_at: datetime
    in_service_at: datetime | None
    deleted_at: datetime | None
    model_name: str
    model_uri: str
    base_model: str | None
    job_name: str | None
    registered_model_id: str | None
    backend: str
    adapters: list[AdapterRead] = Field(default_factory=list, description="a base-model endpoint's adapters")


class EndpointList(BaseModel):
    data: list[EndpointRead]
    has_more: bool
    next_cursor: str | None



class GenerationParameters(BaseModel):
    """Bounds match serve.py's, so a bad value is named here before any endpoint is called."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, strict=True)
    temperature: float | None = Field(None, ge=0.0, le=5.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=1_000_000, strict=True)
    do_sample: bool | None = Field(None, strict=True)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, strict=True, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, strict=True)

    @model_validator(mode="after")
    def _stop_sequences(self) -> GenerationParameters:
        items = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        for s in items:
            if not 1 <= len(s) <= 64:
                raise ValueError("each stop sequence must be 1 to 64 characters")
        return self

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_name: str = Field(min_length=1, max_length=63)
    input_text: str = Field(min_length=1, max_length=100_000)
    parameters: GenerationParameters | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class InvokeResult(BaseModel):
    input_text: str
    generated_text: str
    endpoint_name: str
    timestamp: datetime
    usage: Usage
    parameters: dict[str, Any]


class InvokeResponse(BaseModel):
    result: InvokeResult
    status: Literal["success"] = "success"


class GenerateRequest(BaseModel):
    """`/api/v1/generate`: `model_id` names an endpoint or a deployed registered model."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prompt: str = Field(min_length=1, max_length=100_000)
    model_id: str = Field(min_length=1, max_length=255)
    max_tokens: int = Field(100, ge=1, le=MAX_NEW_TOKENS, strict=True)
    temperature: float = Field(0.7, ge=0.0, le=5.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, max_length=8)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, strict=True)

    def parameters(self) -> GenerationParameters:
        return GenerationParameters(max_new_tokens=self.max_tokens, temperature=self.temperature,
                                    top_p=self.top_p, stop=self.stop, seed=self.seed)


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    text: str
    model_id: str
    endpoint_name: str
    usage: GenerateUsage
