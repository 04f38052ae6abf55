from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.registry.models import RegisteredModel

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:/+-]{0,63}$"


class ModelCreate(BaseModel):
    """A completed job's weights under a name, versioned."""

    model_config = ConfigDict(extra="forbid")

    job_name: str = Field(min_length=1, max_length=63, description="a Completed training job of yours")
    model_name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9])*$",
                            description="letters, digits and '-' (SageMaker's naming rule); saving the same "
                            "name again makes a new version")
    description: str = Field("", max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=20,
                            description="up to 20 tags of letters, digits, space and . _ : / + -")

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        out: list[str] = []
        for t in (t.strip() for t in tags):
            if not re.match(TAG_PATTERN, t):
                raise ValueError(f"tag {t!r}: 1-64 characters, letters, digits, space and . _ : / + -")
            if t not in out:
                out.append(t)
        return out


class ModelRead(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    model_name: str
    version: int
    description: str
    tags: list[str]
    job_name: str
    base_model: str
    model_uri: str
    created_at: datetime

    @classmethod
    def of(cls, m: RegisteredModel) -> ModelRead:
        return cls(model_id=m.id, model_name=m.model_name, version=m.version, description=m.description,
                   tags=list(m.tags or []), job_name=m.job_name, base_model=m.base_model, model_uri=m.model_uri,
                   created_at=m.created_at)


class ModelList(BaseModel):
    data: list[ModelRead]
    has_more: bool
    next_cursor: str | None
