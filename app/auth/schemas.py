from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from app.auth.ratelimit import normalise_username


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$",
                          description="lower-case letters, digits, '-' and '_'")
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)

    @field_validator("username", mode="before")
    @classmethod
    def _one_spelling(cls, v: object) -> object:
        return normalise_username(v) if isinstance(v, str) else v  # " Carol " registers "carol"


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str
    is_admin: bool
    monthly_budget: float | None
    created_at: datetime


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class BudgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_budget: float | None = Field(None, ge=0)
