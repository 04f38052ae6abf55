"""Cursor pagination: `?limit=20&after=<cursor>` -> {data, has_more, next_cursor}."""

from __future__ import annotations

import base64
from collections.abc import Callable
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


def after(created_at: Any, ident: Any, ts: Any, ident_value: Any) -> Any:
    """The rows after a cursor's (created_at, id), newest first: the columns (or bind parameters) given."""
    return or_(created_at < ts, and_(created_at == ts, ident < ident_value))


def page(rows: list[Any], limit: int, key: Callable[[Any], tuple[datetime, str]]) -> tuple[list[Any], bool, str | None]:
    """`rows`: up to `limit + 1` of them, newest first; `key`: a row's (created_at, id)."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    return rows, has_more, encode(*key(rows[-1])) if has_more and rows else None


def paginate(session: Session, query: Select[Any], model: Any, limit: int, cursor: str | None,
             id_attr: str = "id") -> tuple[list[Any], bool, str | None]:
    """Newest first, ordered by (created_at, id) descending."""
    id_col = getattr(model, id_attr)
    if cursor:
        query = query.where(after(model.created_at, id_col, *decode(cursor)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), id_col.desc()).limit(limit + 1)))
    return page(rows, limit, lambda r: (r.created_at, getattr(r, id_attr)))
