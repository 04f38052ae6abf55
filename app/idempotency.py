"""Idempotency-Key on creates: the same key and body within 24 h returns the first response."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base, utcnow
from app.errors import Conflict

WINDOW = timedelta(hours=24)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "route", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    route: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def lookup(session: Session, user_id: str, route: str, key: str, req_hash: str) -> IdempotencyRecord | None:
    """The stored response for this key, None when new; 409 when reused with another body."""
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - WINDOW))
    rec = session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.user_id == user_id, IdempotencyRecord.route == route,
            IdempotencyRecord.key == key,
        )
    )
    if rec is not None and rec.request_hash != req_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused", param="Idempotency-Key",
        )
    return rec


def remember(
    session: Session, user_id: str, route: str, key: str, req_hash: str, status_code: int, response: Any
) -> None:
    session.add(IdempotencyRecord(
        user_id=user_id, route=route, key=key, request_hash=req_hash,
        status_code=status_code, response=json.loads(json.dumps(response, default=str)),
    ))
