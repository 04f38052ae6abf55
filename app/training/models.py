from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    # Names are unique per user: nobody learns or takes another user's names. The backends get a
    # globally unique one (app/training/service.py: backend_job_name).
    # The indexes serve the job list's order (newest first, per user) without a sort, and a user's
    # active jobs (the usage report, the per-user caps).
    __table_args__ = (UniqueConstraint("user_id", "job_name"),
                      Index("ix_training_jobs_user_id_created_at", "user_id", "created_at", "id"),
                      Index("ix_training_jobs_user_id_status", "user_id", "status"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_name: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))  # indexed below
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True, index=True
    )
    base_model: Mapped[str] = mapped_column(String(255))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    instance_type: Mapped[str] = mapped_column(String(64))
    validation_split: Mapped[float] = mapped_column(Float, default=0.2)
    backend: Mapped[str] = mapped_column(String(16))
    backend_handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    secondary_status: Mapped[str] = mapped_column(String(32))
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    billable_seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    price_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    estimated_cost: Mapped[float] = mapped_column(Float, default=0.0)
    actual_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_artifacts_uri: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    final_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The last value of each metric so far, kept as points arrive: what a job read shows before the
    # final metrics, without aggregating the job's points on every read.
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The id of its newest metric point (points are append-only): whether a cached series is current,
    # without asking the points table, whose planner may walk every newer job's points to find it.
    last_metric_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)  # split keys, counts, log offset


class JobMetric(Base):
    __tablename__ = "job_metrics"
    # A job's points in order, and its newest point's id at once (app/training/reads.py).
    __table_args__ = (Index("ix_job_metrics_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    metric_name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    value: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
