from __future__ import annotations

import importlib.util
import sys
from datetime import datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

_CONTRACT = Path(__file__).resolve().parents[2] / "training_scripts" / "config.py"


def _load_contract() -> ModuleType:
    """training_scripts/config.py, the one definition of the hyperparameters train.py takes (standard
    library only, so the API needs no torch for it)."""
    name = "llmtuner_training_config"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _CONTRACT)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {_CONTRACT}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while a class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


contract = _load_contract()
_TYPES: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "modules": list[str]}


def _field(p: Any) -> tuple[Any, Any]:
    """A pydantic field checked by the contract's own `coerce` (so both accept the same values); the
    type and bounds are repeated for the OpenAPI schema."""
    typ = Literal[p.choices] if p.kind == "choice" else _TYPES[p.kind]
    if p.nullable:
        typ = typ | None
    items = {"min_length": 1, "max_length": contract.MAX_TARGET_MODULES} if p.kind == "modules" else {}
    info = Field(p.default, description=p.help, ge=p.ge, gt=p.gt, le=p.le, lt=p.lt, **items)
    return Annotated[typ, BeforeValidator(partial(contract.coerce, p))], info


_HyperparametersFields: Any = create_model(  # type: ignore[call-overload]
    "HyperparametersFields", __config__=ConfigDict(extra="forbid"),
    **{p.name: _field(p) for p in contract.PARAMS if p.api},
)


class Hyperparameters(_HyperparametersFields):
    """What users may set of training_scripts/config.py's hyperparameters (the rest the platform sets)."""

    if TYPE_CHECKING:  # the fields come from the contract at run time

        def __getattr__(self, name: str) -> Any: ...

    @model_validator(mode="after")
    def _coherent(self) -> Hyperparameters:
        values = self.model_dump()
        problems = contract.cross_field_problems(values)
        if problems:
            raise ValueError("; ".join(problems))
        if values["learning_rate"] is None:  # shown as the value train.py will use
            self.__dict__["learning_rate"] = contract.default_learning_rate(values["use_lora"])
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


class BaseModelInfo(BaseModel):
    """A catalogue entry (where its weights come from is the server's business). Entries added by the
    `extra_base_models` setting may carry more fields; they are passed through."""

    model_config = ConfigDict(extra="allow")

    id: str
    family: str
    parameters: int | None
    task: str
    max_length: int
    default_target_modules: list[str] | None
    recommended_instance_types: list[str]
    offline: bool
    description: str


class BaseModelList(BaseModel):
    data: list[BaseModelInfo]


class InstanceType(BaseModel):
    name: str
    accelerator: str
    gpus: int
    gpu_memory_gib: float
    training_price_per_hour: float | None = Field(description="USD; null: not offered for training")
    inference_price_per_hour: float | None = Field(description="USD; null: not offered for inference")
    backends: list[str]
    available: bool = Field(description="offered by this server's backend")


class InstanceTypeList(BaseModel):
    data: list[InstanceType]
    currency: Literal["USD"]
    backend: str
