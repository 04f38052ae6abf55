"""Events of any resource (training job, endpoint, evaluation): status changes, epochs, errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base, utcnow


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(36), index=True)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class EventRead(BaseModel):
    """How an event is shown: [{timestamp, level, type, message, data}]."""

    model_config = ConfigDict(from_attributes=True)

    timestamp: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any]


def record(
    session: Session,
    *,
    user_id: str,
    resource_type: str,
    resource_id: str,
    type: str,
    message: str,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> Event:
    ev = Event(
        user_id=user_id, resource_type=resource_type, resource_id=resource_id,
        type=type, message=message, level=level, data=data or {},
    )
    session.add(ev)
    return ev


def list_for(session: Session, resource_type: str, resource_id: str, limit: int = 1000) -> list[Event]:
    q = (
        select(Event)
        .where(Event.resource_type == resource_type, Event.resource_id == resource_id)
        .order_by(Event.id)
        .limit(limit)
    )
    return list(session.scalars(q))
