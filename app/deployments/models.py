from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class Endpoint(Base):
    __tablename__ = "endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint_name: Mapped[str] = mapped_column(String(63), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
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
