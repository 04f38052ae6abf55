from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class Endpoint(Base):
    __tablename__ = "endpoints"
    # Names are unique per user: nobody learns or takes another user's names. The backends get a
    # globally unique one (app/deployments/service.py: backend_endpoint_name).
    # The index serves the endpoint list's order (newest first, per user) without a sort.
    __table_args__ = (UniqueConstraint("user_id", "endpoint_name"),
                      Index("ix_endpoints_user_id_created_at", "user_id", "created_at", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_name: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))  # indexed below
    model_name: Mapped[str] = mapped_column(String(63))
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), nullable=True
    )
    registered_model_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    model_uri: Mapped[str] = mapped_column(String(1024))
    base_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    instance_type: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=1)
    backend: Mapped[str] = mapped_column(String(16))
    backend_handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    price_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    accrued_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    accrual_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_service_at: Mapped[datetime | None] = mapped_column(nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class EndpointAdapter(Base):
    """A LoRA adapter attached to a base-model endpoint; `name` selects it per request (`model` in /v1)."""

    __tablename__ = "endpoint_adapters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), nullable=True
    )
    registered_model_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    model_uri: Mapped[str] = mapped_column(String(1024))
    base_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # attached | detached
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    detached_at: Mapped[datetime | None] = mapped_column(nullable=True)


class InferenceRecord(Base):
    """One answered generation request: which endpoint and adapter served it, and its tokens."""

    __tablename__ = "inference_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    adapter: Mapped[str | None] = mapped_column(String(63), nullable=True)  # None: the endpoint's own model
    model: Mapped[str] = mapped_column(String(255))  # as the caller named it
    route: Mapped[str] = mapped_column(String(32))
    api_key_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
