from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    monthly_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Moved on by database triggers whenever the user's jobs, endpoints (and their adapters),
    # evaluations, events or usage days change (migration 0009): what app/user_cache.py keys its
    # entries by. Never written by the app.
    data_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
