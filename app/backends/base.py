"""Compute seams: training jobs and inference endpoints, local or SageMaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TrainingSpec:
    job_name: str
    user_id: str
    base_model: str                  # hub id, local dir, or s3:// prefix (resolved by the catalogue)
    base_model_source: str           # where the weights come from: hub id | local path | s3://...
    hyperparameters: dict[str, Any]
    instance_type: str
    train_key: str                   # object-store keys of the canonical split files
    validation_key: str | None
    output_key: str                  # where model.tar.gz must end up
    checkpoint_prefix: str
    max_runtime_seconds: int = 24 * 3600
    entry_point: str = "train.py"    # a script in training_scripts/ (evaluate.py for evaluations)
    # More input channels: name -> object-store key (a file) or key prefix ending in "/" (a folder).
    extra_channels: dict[str, str] = field(default_factory=dict)


@dataclass
class BackendJobStatus:
    status: str                      # InProgress | Completed | Failed | Stopping | Stopped
    secondary_status: str
    log_lines: list[str] = field(default_factory=list)      # new metric/log lines since the last call
    status_transitions: list[dict[str, Any]] = field(default_factory=list)
    billable_seconds: int | None = None
    failure_reason: str | None = None
    artifact_uri: str | None = None
    handle_update: dict[str, Any] = field(default_factory=dict)
    ended_at: float | None = None    # when the job ended (unix time), as the backend recorded it


class TrainingBackend(Protocol):
    name: str

    def submit(self, spec: TrainingSpec) -> dict[str, Any]: ...
    def describe(self, handle: dict[str, Any]) -> BackendJobStatus: ...
    def stop(self, handle: dict[str, Any]) -> None: ...


@dataclass
class EndpointSpec:
    endpoint_name: str
    user_id: str
    model_uri: str                   # the store's URI of model.tar.gz
    model_key: str
    base_model_source: str | None
    instance_type: str
    instance_count: int = 1
    # A base-model endpoint (model_key ""): LoRA adapters to serve on it, name -> model.tar.gz key.
    adapters: dict[str, str] = field(default_factory=dict)


@dataclass
class BackendEndpointStatus:
    status: str                      # Creating | InService | Failed | Deleting | OutOfService | Deleted
    failure_reason: str | None = None
    handle_update: dict[str, Any] = field(default_factory=dict)


class EndpointBackend(Protocol):
    name: str

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]: ...
    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus: ...
    def invoke(self, handle: dict[str, Any], payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]: ...
    def delete(self, handle: dict[str, Any]) -> None: ...


@dataclass
class Backends:
    training: TrainingBackend
    endpoints: EndpointBackend
    name: str
    extra: dict[str, Any] = field(default_factory=dict)
