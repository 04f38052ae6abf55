from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    status: str
    format: str | None
    size_bytes: int
    sha256: str
    num_examples: int
    created_at: datetime
    report: dict[str, Any]


class DatasetList(BaseModel):
    data: list[DatasetRead]
    has_more: bool
    next_cursor: str | None


class DatasetPreview(BaseModel):
    dataset_id: str
    format: str | None
    training_format: str = "canonical messages JSONL (docs/datasets.md)"
    data: list[dict[str, Any]]
