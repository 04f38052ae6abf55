"""Usage and budgets: what each user has spent, and an optional monthly budget.

Costs: a training job costs its `actual_cost` once ended, else billable seconds x price so far;
an endpoint its accrued cost (deployments' `accrued_cost`); an evaluation its billable seconds
x its instance's training price (app/usage/days.py: `JOB_COST`, and the ended jobs' cost per day that
a report reads instead of every job). "This month" is the current UTC calendar month: jobs and
evaluations count in the month they were created; an endpoint's share of the month is its
accrued cost capped at its price x the hours it existed this month (exact for endpoints created
this month, an upper bound for older ones, whose accrual history is not kept per month).

A user's optional `monthly_budget` refuses new spending that would exceed what is left
(`check_budget`, 429 budget_exceeded). Running endpoints are never stopped for the budget: an
endpoint running past it is reported in `warnings` and recorded once per month as an event.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, Text, bindparam, case, cast, func, literal_column, or_, select, union_all
from sqlalchemy.orm import Session

from app import events
from app.auth.models import User
from app.db import utcnow
from app.deployments.models import Endpoint
from app.deployments.reads import accrued_cost
from app.errors import AppError
from app.evaluation.models import Evaluation
from app.reads import Query, ReadDb, dumps, loads
from app.runtime import WorkerContext
from app.statuses import ENDPOINT_LIVE, JOB_ACTIVE
from app.training.models import TrainingJob
from app.usage.days import JOB_COST, JobCostDay, UTCDay
from app.user_cache import cache as user_cache

log = logging.getLogger("llmtuner.usage")
BUDGET_EVENT = "budget_exceeded"
BUDGET_EXCEEDED_CODE = "budget_exceeded"


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _sum(values: Any) -> float:
    return round(float(sum(values)), 4)


# --- what a usage report reads (app/reads.py): the same queries serve GET /api/usage (async) and the
# budget checks inside a create (sync, in the caller's transaction) --------------------------------

J, E, V, D = TrainingJob, Endpoint, Evaluation, JobCostDay
DAYS = 30  # the daily series: the last 30 UTC days, today included
# Training by day of creation: the ended jobs' daily rows and the active jobs (a few at most, each
# user's queue is capped), grouped into the days of the series and the rest, each split at the
# month's start: (day or None, in this month, jobs, cost), at most 32 rows.
_SINCE_DAY, _MONTH_DAY = bindparam("since_day", type_=Date), bindparam("month_day", type_=Date)
_BY_DAY = union_all(
    select(D.day.label("day"), D.jobs.label("jobs"), D.cost.label("cost")).where(D.user_id == bindparam("user_id")),
    select(UTCDay(J.created_at), literal_column("1"), JOB_COST)
    .where(J.user_id == bindparam("user_id"), or_(*(J.status == s.value for s in JOB_ACTIVE)))).subquery()
_TRAINING = Query(select(case((_BY_DAY.c.day >= _SINCE_DAY, _BY_DAY.c.day)), _BY_DAY.c.day >= _MONTH_DAY,
                         func.sum(_BY_DAY.c.jobs), func.sum(_BY_DAY.c.cost))
                  .group_by(literal_column("1"), literal_column("2")))
_NEWEST_JOBS = Query(select(J.job_name, J.status, JOB_COST, J.billable_seconds, J.estimated_cost, J.instance_type,
                            J.created_at).where(J.user_id == bindparam("user_id"))
                     .order_by(J.created_at.desc(), J.id.desc()).limit(bindparam("limit")))
# Endpoints and evaluations are few per user (each is a deployment or a model evaluation): all of them.
_ENDPOINTS = Query(select(E.endpoint_name, E.status, E.accrued_seconds, E.accrual_started_at, E.price_per_hour,
                          E.instance_type, E.created_at, E.deleted_at)
                   .where(E.user_id == bindparam("user_id")).order_by(E.created_at.desc(), E.id.desc()))
_EVALUATIONS = Query(select(V.id, V.status, cast(V.backend_handle, Text), cast(V.request, Text), V.created_at)
                     .where(V.user_id == bindparam("user_id")).order_by(V.created_at.desc(), V.id.desc()))
_QUERIES = (_TRAINING, _NEWEST_JOBS, _ENDPOINTS, _EVALUATIONS)


def _params(user_id: str, now: datetime, limit: int) -> dict[str, Any]:
    first_day = now.astimezone(UTC).date() - timedelta(days=DAYS - 1)
    return {"user_id": user_id, "month_day": month_start(now).date(), "since_day": first_day, "limit": limit}


async def read_usage(db: ReadDb, user: User, limit: int, now: datetime | None = None) -> bytes:
    """GET /api/usage's body (JSON): totals over everything, the newest `limit` items of each kind.

    Reported as of the current whole second (`now` truncated): a write shows at once (the user's
    data version moves, app/user_cache.py), while live endpoints' accrual, which moves with the
    clock, is computed at most once a second per process."""
    second = int((now or utcnow()).timestamp())
    now = datetime.fromtimestamp(second, UTC)
    as_of = (second, user.monthly_budget)  # (the budget is the users row's own, not versioned)
    body: bytes | None = user_cache.get_at(user, ("usage", limit), as_of)
    if body is not None:
        return body
    p = _params(user.id, now, limit)
    # The rows change with the user's data and the day (the month's first day follows from the series').
    rows = user_cache.get_at(user, ("usage rows", limit), p["since_day"])
    if rows is None:
        rows = await asyncio.gather(*(db.rows(q, **p) for q in _QUERIES))
        user_cache.put_at(user, ("usage rows", limit), p["since_day"], rows)
    body = dumps(_report(user, now, p["since_day"], limit, *rows))
    user_cache.put_at(user, ("usage", limit), as_of, body)
    return body


def usage(session: Session, user: User, now: datetime | None = None, limit: int = 20) -> dict[str, Any]:
    """The same report, read in `session`'s transaction."""
    now = now or utcnow()
    p, conn = _params(user.id, now, limit), session.connection()
    return _report(user, now, p["since_day"], limit, *(q.rows(conn, p) for q in _QUERIES))


def _report(user: User, now: datetime, first_day: date, limit: int, by_day: list[Any], jobs: list[Any],
            endpoints: list[Any], evaluations: list[Any]) -> dict[str, Any]:
    start = month_start(now)
    series: dict[str, list[float]] = {"training": [0.0] * DAYS, "inference": [0.0] * DAYS, "evaluation": [0.0] * DAYS}

    count, job_total, job_month = 0, 0.0, 0.0
    for day, in_month, jobs_that_day, cost in by_day:
        count, job_total = count + int(jobs_that_day), job_total + float(cost or 0.0)
        job_month += float(cost or 0.0) if in_month else 0.0
        if day is not None and 0 <= (i := (day - first_day).days) < DAYS:
            series["training"][i] += float(cost or 0.0)
    job_rows = [{"job_name": name, "status": status, "cost": round(float(cost or 0.0), 4), "billable_seconds": seconds,
                 "estimated_cost": estimated, "instance_type": instance, "created_at": created}
                for name, status, cost, seconds, estimated, instance, created in jobs]

    series_start = datetime.combine(first_day, time(), UTC).timestamp()
    ep_rows = []
    for name, status, seconds, started, price, instance, created, deleted in endpoints:
        total = accrued_cost(status, seconds, started, price, now)
        ep_rows.append({"endpoint_name": name, "status": status, "accrued_cost": total,
                        "this_month": month_share(total, price, created, deleted, now, start),
                        "price_per_hour": price, "instance_type": instance, "created_at": created,
                        "deleted_at": deleted})
        _spread(series["inference"], total, created.timestamp(), (deleted or now).timestamp(), series_start)

    ev_rows = []
    for ident, status, handle, request, created in evaluations:
        seconds = int((loads(handle) or {}).get("billable_seconds") or 0)
        cost = round(seconds / 3600 * float((loads(request) or {}).get("price_per_hour") or 0.0), 4)
        ev_rows.append({"id": ident, "status": status, "cost": cost, "billable_seconds": seconds,
                        "created_at": created})
        if 0 <= (i := (created.astimezone(UTC).date() - first_day).days) < DAYS:
            series["evaluation"][i] += cost

    training = {"total": round(job_total, 4), "this_month": round(job_month, 4), "count": count, "jobs": job_rows}
    inference = {"total": _sum(r["accrued_cost"] for r in ep_rows),
                 "this_month": _sum(r["this_month"] for r in ep_rows), "count": len(ep_rows),
                 "endpoints": ep_rows[:limit]}
    evaluation = {"total": _sum(r["cost"] for r in ev_rows),
                  "this_month": _sum(r["cost"] for r in ev_rows if r["created_at"] >= start),
                  "count": len(ev_rows), "evaluations": ev_rows[:limit]}
    daily = [{"day": first_day + timedelta(days=i), "training": round(tr, 6) if tr else 0.0,
              "inference": round(inf, 6) if inf else 0.0, "evaluation": round(ev, 6) if ev else 0.0}
             for i, (tr, inf, ev) in enumerate(zip(series["training"], series["inference"], series["evaluation"],
                                                   strict=True))]
    this_month = _sum([training["this_month"], inference["this_month"], evaluation["this_month"]])
    budget, warnings = None, []
    if user.monthly_budget is not None:
        limit_usd = float(user.monthly_budget)
        budget = {"monthly_budget": limit_usd, "spent_this_month": this_month,
                  "remaining": round(max(0.0, limit_usd - this_month), 4), "exceeded": this_month > limit_usd}
        if budget["exceeded"]:
            warnings.append({"code": BUDGET_EXCEEDED_CODE, "endpoint_name": None, "message": (
                f"You have spent ${this_month:.2f} this month, over your ${limit_usd:.2f} monthly budget; new "
                "training jobs and evaluations are refused until next month or a higher budget")})
            for r in ep_rows:
                if r["status"] in ENDPOINT_LIVE:
                    warnings.append({"code": "endpoint_over_budget", "endpoint_name": r["endpoint_name"],
                                     "message": _endpoint_message(r["endpoint_name"], r["price_per_hour"], limit_usd)})
    return {"currency": "USD", "month": f"{start:%Y-%m}", "training": training, "inference": inference,
            "evaluation": evaluation, "daily": daily,
            "total": _sum([training["total"], inference["total"], evaluation["total"]]), "this_month": this_month,
            "budget": budget, "warnings": warnings}


def month_share(total: float, price: float | None, created: datetime, deleted: datetime | None,
                 now: datetime, month: datetime | None = None) -> float:
    """This month's share: the accrued cost capped at price x the hours it existed this month."""
    month = month or month_start(now)
    if deleted is not None and deleted <= month:
        return 0.0  # (most of a long history: said without the arithmetic)
    start = max(month, created)
    hours = max(0.0, ((deleted or now) - start).total_seconds()) / 3600
    return round(min(total, hours * (price or 0.0)), 6)


def _spread(days: list[float], total: float, start: float, end: float, t0: float) -> None:
    """An endpoint's accrued cost spread evenly over the time it was up (unix seconds), over the days
    of the series, which begins at `t0`."""
    if end <= t0:
        return
    rate = total / max(end - start, 1e-6)  # USD per second up
    a, b = max(start, t0), min(end, t0 + DAYS * 86400)
    day = int((a - t0) // 86400)
    while a < b:  # day by day: a partial first and last day, whole days between
        day_end = min(b, t0 + (day + 1) * 86400)
        days[day] += rate * (day_end - a)
        a, day = day_end, day + 1


def _endpoint_message(name: str, price: float, limit: float) -> str:
    return (f"Endpoint {name} is still running at ${price:.2f}/hour past your "
            f"${limit:.2f} monthly budget; it is not stopped for you: delete it to stop the cost")


def month_spend(session: Session, user: User, now: datetime | None = None) -> float:
    return float(usage(session, user, now, limit=1)["this_month"])


def check_budget(session: Session, user: User, estimate: float, reserved: float = 0.0) -> None:
    """Refuse (429 budget_exceeded) new spending whose estimate exceeds what is left this month,
    after what `reserved` holds (the still-expected cost of queued and running work).

    No budget set means no limit.
    """
    if user.monthly_budget is None:
        return
    limit = float(user.monthly_budget)
    remaining = round(limit - month_spend(session, user) - reserved, 4)
    if estimate > remaining + 1e-9:
        left = max(remaining, 0.0)
        raise AppError(
            f"The estimated cost ${estimate:.2f} exceeds the ${left:.2f} left of your ${limit:.2f} monthly "
            "budget" + (f" (${reserved:.2f} of it is held by your queued and running jobs)" if reserved else "")
            + "; choose a smaller job or instance type, or raise the budget",
            status_code=429, code="budget_exceeded",
            details=[{"estimated_cost": round(estimate, 4), "remaining": left, "monthly_budget": limit,
                      **({"reserved": round(reserved, 4)} if reserved else {})}])


def flag_endpoints_over_budget(session: Session, user: User, now: datetime | None = None) -> int:
    """Record a `budget_exceeded` event (once per endpoint per month) on each live endpoint of a
    user who is over budget. Returns how many events were recorded; the caller commits."""
    now = now or utcnow()
    if user.monthly_budget is None:
        return 0
    live = list(session.scalars(select(Endpoint).where(
        Endpoint.user_id == user.id, Endpoint.status.in_(ENDPOINT_LIVE))))
    if not live:
        return 0
    spent = month_spend(session, user, now)
    limit = float(user.monthly_budget)
    if spent <= limit:
        return 0
    month = f"{month_start(now):%Y-%m}"
    recorded = 0
    for ep in live:
        seen = session.scalars(select(events.Event).where(
            events.Event.resource_type == "endpoint", events.Event.resource_id == ep.id,
            events.Event.type == BUDGET_EVENT))
        if any((e.data or {}).get("month") == month for e in seen):
            continue
        events.record(session, user_id=user.id, resource_type="endpoint", resource_id=ep.id, type=BUDGET_EVENT,
                      level="warning", message=_endpoint_message(ep.endpoint_name, ep.price_per_hour, limit),
                      data={"month": month, "spent_this_month": spent, "monthly_budget": limit})
        recorded += 1
    return recorded


def reconcile(ctx: WorkerContext) -> None:
    """Worker pass: flag endpoints over budget."""
    with ctx.sessionmaker() as session:
        user_ids = set(session.scalars(select(Endpoint.user_id).where(
            Endpoint.status.in_(ENDPOINT_LIVE))))
        for uid in user_ids:
            user = session.get(User, uid)
            if user is not None and flag_endpoints_over_budget(session, user):
                session.commit()
