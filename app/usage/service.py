"""Usage and budgets: what each user has spent, and an optional monthly budget.

Costs: a training job costs its `actual_cost` once ended, else billable seconds x price so far;
an endpoint its accrued cost (deployments' `accrued_cost`); an evaluation its billable seconds
x its instance's training price. "This month" is the current UTC calendar month: jobs and
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
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Numeric, Text, and_, bindparam, case, cast, func, literal_column, or_, select
from sqlalchemy.orm import Session

from app import events
from app.auth.models import User
from app.db import utcnow
from app.deployments.models import Endpoint
from app.deployments.reads import accrued_cost
from app.errors import AppError
from app.evaluation.models import Evaluation
from app.reads import DaysSince, Query, ReadDb, loads
from app.runtime import WorkerContext
from app.statuses import ENDPOINT_LIVE, JOB_ENDED
from app.training.models import TrainingJob

log = logging.getLogger("llmtuner.usage")
BUDGET_EVENT = "budget_exceeded"
BUDGET_EXCEEDED_CODE = "budget_exceeded"


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def endpoint_month_cost(endpoint: Endpoint, total: float, now: datetime) -> float:
    return _month_share(total, endpoint.price_per_hour, endpoint.created_at, endpoint.deleted_at, now)


def _sum(values: Any) -> float:
    return round(float(sum(values)), 4)


# --- what a usage report reads (app/reads.py): the same queries serve GET /api/usage (async) and the
# budget checks inside a create (sync, in the caller's transaction) --------------------------------

J, E, V = TrainingJob, Endpoint, Evaluation
DAYS = 30  # the daily series: the last 30 UTC days, today included
# A job's cost: its actual cost once ended, else billable time x price so far. The database computes
# it, for the newest jobs' list and for the totals, which then need no row per job.
_JOB_COST = case((and_(or_(*(J.status == s.value for s in JOB_ENDED)), J.actual_cost.is_not(None)), J.actual_cost),
                 else_=func.round(cast(J.billable_seconds / 3600.0 * J.price_per_hour, Numeric), 4))
_MONTH = bindparam("month_start", type_=J.created_at.type)
_SINCE = bindparam("since", type_=J.created_at.type)
_JOB_TOTALS = Query(select(func.count(), func.coalesce(func.sum(_JOB_COST), 0.0),
                           func.coalesce(func.sum(case((J.created_at >= _MONTH, _JOB_COST), else_=0.0)), 0.0))
                    .where(J.user_id == bindparam("user_id")))
_JOB_DAYS = Query(select(DaysSince(J.created_at, _SINCE), func.sum(_JOB_COST))
                  .where(J.user_id == bindparam("user_id"), J.created_at >= _SINCE).group_by(literal_column("1")))
_NEWEST_JOBS = Query(select(J.job_name, J.status, _JOB_COST, J.billable_seconds, J.estimated_cost, J.instance_type,
                            J.created_at).where(J.user_id == bindparam("user_id"))
                     .order_by(J.created_at.desc(), J.id.desc()).limit(bindparam("limit")))
# Endpoints and evaluations are few per user (each is a deployment or a model evaluation): all of them.
_ENDPOINTS = Query(select(E.endpoint_name, E.status, E.accrued_seconds, E.accrual_started_at, E.price_per_hour,
                          E.instance_type, E.created_at, E.deleted_at)
                   .where(E.user_id == bindparam("user_id")).order_by(E.created_at.desc(), E.id.desc()))
_EVALUATIONS = Query(select(V.id, V.status, cast(V.backend_handle, Text), cast(V.request, Text), V.created_at)
                     .where(V.user_id == bindparam("user_id")).order_by(V.created_at.desc(), V.id.desc()))


def _params(user_id: str, now: datetime, limit: int) -> dict[str, Any]:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"user_id": user_id, "month_start": month_start(now), "since": today - timedelta(days=DAYS - 1),
            "limit": limit}


async def read_usage(db: ReadDb, user: User, limit: int, now: datetime | None = None) -> dict[str, Any]:
    """GET /api/usage's body: totals over everything, the newest `limit` items of each kind."""
    now = now or utcnow()
    p = _params(user.id, now, limit)
    totals, days, jobs, endpoints, evaluations = await asyncio.gather(
        db.first(_JOB_TOTALS, **p), db.rows(_JOB_DAYS, **p), db.rows(_NEWEST_JOBS, **p), db.rows(_ENDPOINTS, **p),
        db.rows(_EVALUATIONS, **p))
    return _report(user, now, p["since"], limit, totals, days, jobs, endpoints, evaluations)


def usage(session: Session, user: User, now: datetime | None = None, limit: int = 20) -> dict[str, Any]:
    """The same report, read in `session`'s transaction."""
    now = now or utcnow()
    p, conn = _params(user.id, now, limit), session.connection()
    return _report(user, now, p["since"], limit, _JOB_TOTALS.rows(conn, p)[0], _JOB_DAYS.rows(conn, p),
                   _NEWEST_JOBS.rows(conn, p), _ENDPOINTS.rows(conn, p), _EVALUATIONS.rows(conn, p))


def _report(user: User, now: datetime, first_day: datetime, limit: int, totals: Any, days: list[Any],
            jobs: list[Any], endpoints: list[Any], evaluations: list[Any]) -> dict[str, Any]:
    start = month_start(now)
    daily: list[dict[str, Any]] = [
        {"day": (first_day + timedelta(days=i)).date(), "training": 0.0, "inference": 0.0, "evaluation": 0.0}
        for i in range(DAYS)]

    def add(kind: str, day: int, value: float) -> None:
        if 0 <= day < DAYS:
            daily[day][kind] += value

    count, job_total, job_month = totals
    for day, value in days:
        add("training", int(day), float(value or 0.0))
    job_rows = [{"job_name": name, "status": status, "cost": round(float(cost or 0.0), 4), "billable_seconds": seconds,
                 "estimated_cost": estimated, "instance_type": instance, "created_at": created}
                for name, status, cost, seconds, estimated, instance, created in jobs]

    ep_rows = []
    for name, status, seconds, started, price, instance, created, deleted in endpoints:
        total = accrued_cost(status, seconds, started, price, now)
        ep_rows.append({"endpoint_name": name, "status": status, "accrued_cost": total,
                        "this_month": _month_share(total, price, created, deleted, now), "price_per_hour": price,
                        "instance_type": instance, "created_at": created, "deleted_at": deleted})
        _spread(add, total, created, deleted or now, first_day)

    ev_rows = []
    for ident, status, handle, request, created in evaluations:
        seconds = int((loads(handle) or {}).get("billable_seconds") or 0)
        cost = round(seconds / 3600 * float((loads(request) or {}).get("price_per_hour") or 0.0), 4)
        ev_rows.append({"id": ident, "status": status, "cost": cost, "billable_seconds": seconds,
                        "created_at": created})
        add("evaluation", (created - first_day).days, cost)

    training = {"total": round(float(job_total), 4), "this_month": round(float(job_month), 4), "count": count,
                "jobs": job_rows}
    inference = {"total": _sum(r["accrued_cost"] for r in ep_rows),
                 "this_month": _sum(r["this_month"] for r in ep_rows), "count": len(ep_rows),
                 "endpoints": ep_rows[:limit]}
    evaluation = {"total": _sum(r["cost"] for r in ev_rows),
                  "this_month": _sum(r["cost"] for r in ev_rows if r["created_at"] >= start),
                  "count": len(ev_rows), "evaluations": ev_rows[:limit]}
    for d in daily:
        for kind in ("training", "inference", "evaluation"):
            d[kind] = round(d[kind], 6)
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


def _month_share(total: float, price: float | None, created: datetime, deleted: datetime | None,
                 now: datetime) -> float:
    """This month's share: the accrued cost capped at price x the hours it existed this month."""
    start = max(month_start(now), created)
    hours = max(0.0, ((deleted or now) - start).total_seconds()) / 3600
    return round(min(total, hours * (price or 0.0)), 6)


def _spread(add: Any, total: float, start: datetime, end: datetime, first_day: datetime) -> None:
    """An endpoint's accrued cost spread evenly over the time it was up, over the days of the series."""
    t0, a, b = first_day.timestamp(), start.timestamp(), end.timestamp()
    rate = total / max(b - a, 1e-6)  # USD per second up
    a, b = max(a, t0), min(b, t0 + DAYS * 86400)
    day = int((a - t0) // 86400)
    while a < b:  # day by day: a partial first and last day, whole days between
        day_end = min(b, t0 + (day + 1) * 86400)
        add("inference", day, rate * (day_end - a))
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
