"""Idempotency-Key on creates: the same key and body within 24 h returns the first response.

The key is claimed before the work starts, by inserting it under a unique constraint, so that of
concurrent requests with one key exactly one creates the resource and the others return its
response (or wait for it)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.exc import IntegrityError
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


PENDING = 0  # status_code of a key whose first request is still running
PENDING_INFO = "idempotency_pending"  # session.info: keys this request claimed and has not finished
STALE_PENDING = timedelta(minutes=10)  # a claim left by a process that died is taken over after this


def _claim(session: Session, user_id: str, route: str, key: str, req_hash: str) -> bool:
    """Insert the key as pending in its own committed transaction; False when it is already there."""
    session.add(IdempotencyRecord(user_id=user_id, route=route, key=key, request_hash=req_hash,
                                  status_code=PENDING, response={}))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    session.info.setdefault(PENDING_INFO, []).append((user_id, route, key))
    return True


def lookup(session: Session, user_id: str, route: str, key: str, req_hash: str,
           wait_seconds: float = 0.0) -> IdempotencyRecord | None:
    """Claim the key for this request (a unique constraint decides between concurrent requests).

    None: this request is the first; it creates the resource and calls `remember` (a request that
    ends without doing so gives the key back, see `abandon_unfinished`). Else the first request's
    stored response. 409 when the key was used with another body, or while the first request is
    still running after `wait_seconds` (callers on the event loop pass 0 and the client retries)."""
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - WINDOW))
    session.commit()
    deadline = time.monotonic() + wait_seconds
    while True:
        if _claim(session, user_id, route, key, req_hash):
            return None
        rec = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.user_id == user_id, IdempotencyRecord.route == route, IdempotencyRecord.key == key,
        ).execution_options(populate_existing=True))
        session.commit()  # end the read: the next look must see the first request's outcome
        if rec is None:
            continue  # the first request gave the key back meanwhile: claim it again
        if rec.request_hash != req_hash:
            raise Conflict("This Idempotency-Key was already used with a different request body",
                           code="idempotency_key_reused", param="Idempotency-Key")
        if rec.status_code != PENDING:
            return rec
        if rec.created_at < utcnow() - STALE_PENDING:  # its request's process died: take over
            _drop(session, user_id, route, key)
            continue
        if time.monotonic() >= deadline:
            raise Conflict("A request with this Idempotency-Key is still being processed; retry shortly",
                           code="idempotency_key_in_progress", param="Idempotency-Key",
                           headers={"Retry-After": "1"})
        time.sleep(0.1)


def remember(
    session: Session, user_id: str, route: str, key: str, req_hash: str, status_code: int, response: Any
) -> None:
    """Store the first request's response on its claimed key (the caller commits)."""
    session.execute(
        update(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.route == route,
                                        IdempotencyRecord.key == key, IdempotencyRecord.request_hash == req_hash)
        .values(status_code=status_code, response=json.loads(json.dumps(response, default=str)))
        .execution_options(synchronize_session=False))
    pending = session.info.get(PENDING_INFO) or []
    if (user_id, route, key) in pending:
        pending.remove((user_id, route, key))


def abandon_unfinished(session: Session) -> None:
    """Give back the keys a request claimed but did not `remember` (it failed): a retry starts afresh."""
    pending = session.info.pop(PENDING_INFO, None)
    if not pending:
        return
    session.rollback()
    for user_id, route, key in pending:
        session.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.user_id == user_id, IdempotencyRecord.route == route, IdempotencyRecord.key == key,
            IdempotencyRecord.status_code == PENDING))
    session.commit()


def _drop(session: Session, user_id: str, route: str, key: str) -> None:
    session.execute(delete(IdempotencyRecord).where(
        IdempotencyRecord.user_id == user_id, IdempotencyRecord.route == route, IdempotencyRecord.key == key))
    session.commit()
