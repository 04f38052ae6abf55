"""Cursor pagination: `?limit=20&after=<cursor>` -> {data, has_more, next_cursor}."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.errors import BadRequest


def encode(created_at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode()


def decode(cursor: str) -> tuple[datetime, str]:
    try:
        ts, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        at = datetime.fromisoformat(ts)
    except Exception as e:
        raise BadRequest("Invalid cursor; pass next_cursor from the previous page", param="after",
                         code="invalid_cursor") from e
    if at.tzinfo is None:  # every cursor we issue carries its UTC offset
        raise BadRequest("Invalid cursor (its timestamp has no time zone); pass next_cursor from the previous "
                         "page", param="after", code="invalid_cursor")
    return at, ident


def paginate(session: Session, query: Select[Any], model: Any, limit: int, after: str | None,
             id_attr: str = "id") -> tuple[list[Any], bool, str | None]:
    """Newest first, ordered by (created_at, id) descending."""
    id_col = getattr(model, id_attr)
    if after:
        ts, ident = decode(after)
        query = query.where(or_(model.created_at < ts, and_(model.created_at == ts, id_col < ident)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), id_col.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode(rows[-1].created_at, getattr(rows[-1], id_attr)) if has_more and rows else None
    return rows, has_more, nxt
