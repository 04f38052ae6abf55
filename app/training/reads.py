"""How a training job reads (`job_body`: the one definition of TrainingJobRead's values), and the
polled reads: the job list, one job, its events and its metric points (app/reads.py)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Text, and_, bindparam, cast, select, tuple_

from app import pagination
from app.auth.models import User
from app.errors import NotFound
from app.events import Event
from app.reads import Query, ReadDb, dumps, loads
from app.training.models import JobMetric, TrainingJob
from app.user_cache import cache as user_cache

RESOURCE = "training_job"
T = TrainingJob
COLUMNS = (T.job_name, T.status, T.secondary_status, T.model_artifacts_uri, T.estimated_cost, T.actual_cost,
           T.billable_seconds, T.base_model, T.dataset_id, T.hyperparameters, T.instance_type, T.backend,
           T.validation_split, T.created_at, T.started_at, T.ended_at, T.progress, T.error_code, T.error_message,
           T.final_metrics, T.latest_metrics)
_JSON = frozenset(i for i, c in enumerate(COLUMNS) if c.key in
                  ("hyperparameters", "progress", "final_metrics", "latest_metrics"))


_ID = len(COLUMNS)  # where a select that adds the id has it


def job_body(v: Any, load: Callable[[Any], Any] = loads) -> dict[str, Any]:
    """A job as the API shows it (TrainingJobRead), from the values of COLUMNS (more may follow),
    its JSON columns as text (`load` parses them). Its metrics are the final ones once recorded,
    else the last value of each metric so far."""
    (name, status, secondary, uri, estimated, actual, billable, base, dataset, hyper, instance, backend,
     split, created, started, ended, progress, error_code, error_message, final, latest) = v[:_ID]
    return {
        "job_name": name, "status": status, "secondary_status": secondary, "model_artifacts_s3_uri": uri,
        "training_metrics": [{"metric_name": k, "value": x} for k, x in (load(final) or load(latest) or {}).items()],
        "estimated_cost": estimated, "actual_cost": actual, "currency": "USD", "billable_seconds": billable,
        "base_model": base, "dataset_id": dataset, "hyperparameters": load(hyper) or {}, "instance_type": instance,
        "backend": backend, "validation_split": split, "created_at": created, "started_at": started,
        "ended_at": ended, "progress": load(progress) or {},
        "error": {"code": error_code, "message": error_message or ""} if error_code else None,
    }


def orm_job_body(job: TrainingJob) -> dict[str, Any]:
    return job_body(tuple(getattr(job, c.key) for c in COLUMNS), load=lambda x: x)


def _select(*extra: Any) -> Any:
    cols = [cast(c, Text) if i in _JSON else c for i, c in enumerate(COLUMNS)]
    return select(*cols, *extra)


# --- the job list: newest first, by (created_at, id), as app/pagination.py pages --------------------

def _page_query(status: bool, after: bool) -> Query:
    q = _select(T.id).where(T.user_id == bindparam("user_id"))
    if status:
        q = q.where(T.status == bindparam("status"))
    if after:
        ts, ident = bindparam("after_ts", type_=T.created_at.type), bindparam("after_id", type_=T.id.type)
        q = q.where(pagination.after(T.created_at, T.id, ts, ident))
    return Query(q.order_by(T.created_at.desc(), T.id.desc()).limit(bindparam("limit")))


_PAGES = {(s, a): _page_query(s, a) for s in (False, True) for a in (False, True)}
_CREATED = [c.key for c in COLUMNS].index("created_at")


async def job_page(db: ReadDb, user: User, limit: int, after: str | None, status: str | None) -> bytes:
    """The page as the API's JSON (TrainingJobList), from the cache while the user's data is unchanged."""
    key = ("jobs", limit, after, status)
    body: bytes | None = user_cache.get(user, key)
    if body is not None:
        return body
    params: dict[str, Any] = {"user_id": user.id, "limit": limit + 1}
    if status:
        params["status"] = status
    if after:
        params["after_ts"], params["after_id"] = pagination.decode(after)
    rows, more, cursor = pagination.page(await db.rows(_PAGES[(bool(status), bool(after))], **params), limit,
                                         lambda r: (r[_CREATED], r[_ID]))
    body = dumps({"data": [job_body(r) for r in rows], "has_more": more, "next_cursor": cursor})
    user_cache.put(user, key, body)
    return body


# --- one job, its events, its metric points --------------------------------------------------------

_ONE = Query(_select().where(T.user_id == bindparam("user_id"), T.job_name == bindparam("job_name")))


def not_found(job_name: str) -> NotFound:
    return NotFound(f"No training job {job_name!r}", param="job_name", code="job_not_found")


async def job(db: ReadDb, user: User, job_name: str) -> bytes:
    """The job as the API's JSON (TrainingJobRead), from the cache while the user's data is unchanged."""
    body: bytes | None = user_cache.get(user, ("job", job_name))
    if body is None:
        row = await db.first(_ONE, user_id=user.id, job_name=job_name)
        if row is None:
            raise not_found(job_name)
        body = dumps(job_body(row))
        user_cache.put(user, ("job", job_name), body)
    return body


# The job's row joined to its events: no row means no such job of the caller's; a row of nulls, no events.
_EVENTS = Query(
    select(Event.timestamp, Event.level, Event.type, Event.message, cast(Event.data, Text))
    .select_from(T).outerjoin(Event, and_(Event.resource_id == T.id, Event.resource_type == RESOURCE))
    .where(T.user_id == bindparam("user_id"), T.job_name == bindparam("job_name"))
    .order_by(Event.id).limit(1000))


async def job_events(db: ReadDb, user: User, job_name: str) -> bytes:
    """The job's events (EventRead) as the API's JSON list, from the cache while the user's data is unchanged."""
    body: bytes | None = user_cache.get(user, ("events", job_name))
    if body is None:
        rows = await db.rows(_EVENTS, user_id=user.id, job_name=job_name)
        if not rows:
            raise not_found(job_name)
        body = dumps([{"timestamp": at, "level": level, "type": typ, "message": message, "data": loads(data) or {}}
                      for at, level, typ, message, data in rows if at is not None])
        user_cache.put(user, ("events", job_name), body)
    return body


M = JobMetric
_LAST_POINT = Query(select(T.id, T.last_metric_id)
                    .where(T.user_id == bindparam("user_id"), T.job_name == bindparam("job_name")))
# The job's points after one id up to another, as row comparisons on (job_id, id): one range of that
# index whatever the planner estimates (with `job_id = $1 AND id > $2`, a generic plan walks the
# primary key through every other job's points and filters them out).
_JOB = bindparam("job_id", type_=M.job_id.type)
_AFTER, _UPTO = bindparam("after", type_=M.id.type), bindparam("upto", type_=M.id.type)
_POINTS = {named: Query(select(M.metric_name, M.step, M.epoch, M.value, M.timestamp).where(
    tuple_(M.job_id, M.id) > tuple_(_JOB, _AFTER), tuple_(M.job_id, M.id) <= tuple_(_JOB, _UPTO),
    *([M.metric_name == bindparam("metric_name")] if named else [])).order_by(M.job_id, M.id))
    for named in (False, True)}


class _Series:
    """Serialized metric series by (job id, metric filter), each with the id of the last point in it.
    Points are only ever appended, so a body is extended with the newer points rather than rebuilt:
    a chart polling a running job costs one lookup and the new points. Bounded by total bytes."""

    MAX_BYTES = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._bodies: OrderedDict[tuple[str, str], tuple[int, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[int, bytes]:
        with self._lock:
            hit = self._bodies.get(key)
            if hit is not None:
                self._bodies.move_to_end(key)
            return hit or (0, b"[]")

    def put(self, key: tuple[str, str], last: int, body: bytes) -> None:
        with self._lock:
            old = self._bodies.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            if old is not None and old[0] > last:  # another thread stored a newer one meanwhile
                last, body = old
            self._bodies[key] = (last, body)
            self._bytes += len(body)
            while self._bytes > self.MAX_BYTES and len(self._bodies) > 1:
                self._bytes -= len(self._bodies.popitem(last=False)[1][1])


_series = _Series()


async def job_metrics(db: ReadDb, user: User, job_name: str, metric_name: str | None) -> bytes:
    """The job's metric points (MetricPoint) as the API's JSON list, oldest first."""
    row = user_cache.get(user, ("last point", job_name))  # (the worker records it on the job's row)
    if row is None:
        row = await db.first(_LAST_POINT, user_id=user.id, job_name=job_name)
        if row is None:
            raise not_found(job_name)
        user_cache.put(user, ("last point", job_name), row)
    job_id, last = row[0], row[1] or 0
    key = (job_id, metric_name or "")
    have, body = _series.get(key)
    if have >= last:
        return body
    params: dict[str, Any] = {"job_id": job_id, "after": have, "upto": last}
    if metric_name:
        params["metric_name"] = metric_name
    new = [{"metric_name": n, "step": s, "epoch": e, "value": v, "timestamp": t}
           for n, s, e, v, t in await db.rows(_POINTS[bool(metric_name)], **params)]
    if new:
        more = dumps(new)
        body = more if body == b"[]" else body[:-1] + b"," + more[1:]
    _series.put(key, last, body)
    return body
