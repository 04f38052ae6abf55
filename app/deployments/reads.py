"""How an endpoint reads (`endpoint_body`: the one definition of EndpointRead's values), and the
polled reads: the endpoint list and one endpoint (app/reads.py, app/user_cache.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select

from app import pagination
from app.auth.models import User
from app.db import utcnow
from app.deployments.adapters import BASE_URI_PREFIX
from app.deployments.models import Endpoint, EndpointAdapter
from app.errors import NotFound
from app.reads import Query, ReadDb
from app.statuses import EndpointStatus
from app.training.models import TrainingJob
from app.user_cache import cache as user_cache

E, A, T = Endpoint, EndpointAdapter, TrainingJob
COLUMNS = (E.endpoint_name, E.status, E.failure_reason, E.instance_type, E.instance_count, E.price_per_hour,
           E.accrued_seconds, E.accrual_started_at, E.created_at, E.in_service_at, E.deleted_at, E.model_name,
           E.model_uri, E.base_model, E.registered_model_id, E.backend)
_KEYS = [c.key for c in COLUMNS]
_URI, _CREATED = _KEYS.index("model_uri"), _KEYS.index("created_at")


def accrued_cost(status: str, seconds: float | None, started: datetime | None, price: float | None,
                 now: datetime | None = None) -> float:
    """USD spent so far: banked seconds plus the running InService stretch, at the endpoint's price."""
    seconds = seconds or 0.0
    if status == EndpointStatus.IN_SERVICE and started is not None:
        seconds += max(0.0, ((now or utcnow()) - started).total_seconds())
    return round(seconds * (price or 0.0) / 3600.0, 6)


def endpoint_body(v: tuple[Any, ...], job_name: str | None, now: datetime | None,
                  adapters: list[dict[str, Any]] | None) -> dict[str, Any]:
    """An endpoint as the API shows it (EndpointRead), from the values of COLUMNS."""
    (name, status, reason, instance, count, price, seconds, started, created, in_service, deleted, model_name,
     uri, base, registered, backend) = v
    return {
        "endpoint_name": name, "status": status, "failure_reason": reason, "instance_type": instance,
        "initial_instance_count": count, "estimated_cost_per_hour": price,
        "accrued_cost": accrued_cost(status, seconds, started, price, now), "currency": "USD",
        "created_at": created, "in_service_at": in_service, "deleted_at": deleted, "model_name": model_name,
        "model_uri": uri, "base_model": base, "job_name": job_name, "registered_model_id": registered,
        "backend": backend, "adapters": adapters or [],
    }


_ADAPTERS = Query(
    select(A.name, A.status, T.job_name, A.registered_model_id, A.base_model, A.created_at, A.detached_at)
    .select_from(A).outerjoin(T, T.id == A.job_id)
    .where(A.endpoint_id == bindparam("endpoint_id"), A.status == "attached").order_by(A.created_at, A.name))
_ADAPTER_KEYS = ("name", "status", "job_name", "registered_model_id", "base_model", "created_at", "detached_at")


async def _read(db: ReadDb, row: Any) -> tuple[tuple[Any, ...], str | None, list[dict[str, Any]] | None]:
    """`row`: COLUMNS, then the endpoint's id and its job's name. What `endpoint_body` takes but the
    time: the cached part (app/user_cache.py), since a live endpoint's cost moves with the clock."""
    values, endpoint_id, job_name = tuple(row[:len(COLUMNS)]), row[-2], row[-1]
    adapters = None
    if values[_URI].startswith(BASE_URI_PREFIX):  # few endpoints are: a query each
        adapters = [dict(zip(_ADAPTER_KEYS, a, strict=True)) for a in await db.rows(_ADAPTERS, endpoint_id=endpoint_id)]
    return values, job_name, adapters


def _select() -> Any:
    return select(*COLUMNS, E.id, T.job_name).select_from(E).outerjoin(T, T.id == E.job_id)


_ONE = Query(_select().where(E.user_id == bindparam("user_id"), E.endpoint_name == bindparam("endpoint_name")))


async def endpoint(db: ReadDb, user: User, endpoint_name: str) -> dict[str, Any]:
    read = user_cache.get(user, ("endpoint", endpoint_name))
    if read is None:
        row = await db.first(_ONE, user_id=user.id, endpoint_name=endpoint_name)
        if row is None:
            raise NotFound(f"No endpoint {endpoint_name!r}", param="endpoint_name")
        read = await _read(db, row)
        user_cache.put(user, ("endpoint", endpoint_name), read)
    values, job_name, adapters = read
    return endpoint_body(values, job_name, utcnow(), adapters)


def _page_query(which: str, after: bool) -> Query:
    q = _select().where(E.user_id == bindparam("user_id"))
    if which == "status":
        q = q.where(E.status == bindparam("status"))
    elif which == "live":
        q = q.where(E.status != EndpointStatus.DELETED.value)
    if after:
        ts, ident = bindparam("after_ts", type_=E.created_at.type), bindparam("after_id", type_=E.id.type)
        q = q.where(pagination.after(E.created_at, E.id, ts, ident))
    return Query(q.order_by(E.created_at.desc(), E.id.desc()).limit(bindparam("limit")))


_PAGES = {(w, a): _page_query(w, a) for w in ("status", "live", "all") for a in (False, True)}


async def endpoint_page(db: ReadDb, user: User, status: str | None, include_deleted: bool, limit: int,
                        after: str | None) -> dict[str, Any]:
    """The caller's endpoints, newest first (Deleted ones only when asked for)."""
    key = ("endpoints", status, include_deleted, limit, after)
    page = user_cache.get(user, key)
    if page is None:
        params: dict[str, Any] = {"user_id": user.id, "limit": limit + 1}
        which = "status" if status else "all" if include_deleted else "live"
        if status:
            params["status"] = status
        if after:
            params["after_ts"], params["after_id"] = pagination.decode(after)
        rows, more, cursor = pagination.page(await db.rows(_PAGES[(which, bool(after))], **params), limit,
                                             lambda r: (r[_CREATED], r[-2]))
        # (gathered: the adapter reads of several base-model endpoints share one round trip)
        page = list(await asyncio.gather(*(_read(db, r) for r in rows))), more, cursor
        user_cache.put(user, key, page)
    reads, more, cursor = page
    now = utcnow()
    return {"data": [endpoint_body(values, job_name, now, adapters) for values, job_name, adapters in reads],
            "has_more": more, "next_cursor": cursor}
