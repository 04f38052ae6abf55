"""The base of every type: unknown fields from a newer server are kept (`extra="allow"`), so an older
client keeps working."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class APIModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
