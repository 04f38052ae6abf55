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

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import events
from app.auth.models import User
from app.db import utcnow
from app.deployments.models import Endpoint
from app.deployments.service import accrued_cost
from app.errors import AppError
from app.evaluation.models import Evaluation
from app.runtime import WorkerContext
from app.statuses import ENDPOINT_LIVE, JOB_ENDED
from app.training.models import TrainingJob
from app.usage.schemas import (
    Budget,
    EndpointCost,
    EvaluationCost,
    EvaluationUsage,
    InferenceUsage,
    JobCost,
    TrainingUsage,
    Usage,
    UsageWarning,
)

log = logging.getLogger("llmtuner.usage")
BUDGET_EVENT = "budget_exceeded"
BUDGET_EXCEEDED_CODE = "budget_exceeded"


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


JOB_COST_COLUMNS = (TrainingJob.job_name, TrainingJob.status, TrainingJob.actual_cost, TrainingJob.billable_seconds,
                    TrainingJob.price_per_hour, TrainingJob.estimated_cost, TrainingJob.instance_type,
                    TrainingJob.created_at)


def job_cost(job: Any) -> float:
    """A job's cost; `job` is a TrainingJob or a row of JOB_COST_COLUMNS."""
    if job.status in JOB_ENDED and job.actual_cost is not None:
        return float(job.actual_cost)
    return round((job.billable_seconds or 0) / 3600 * (job.price_per_hour or 0.0), 4)


def endpoint_month_cost(endpoint: Endpoint, total: float, now: datetime) -> float:
    """This month's share: the accrued cost capped at price x the hours it existed this month."""
    start = max(month_start(now), endpoint.created_at)
    end = endpoint.deleted_at or now
    hours = max(0.0, (end - start).total_seconds()) / 3600
    return round(min(total, hours * (endpoint.price_per_hour or 0.0)), 6)


def evaluation_cost(ev: Evaluation) -> float:
    seconds = int((ev.backend_handle or {}).get("billable_seconds") or 0)
    return round(seconds / 3600 * float((ev.request or {}).get("price_per_hour") or 0.0), 4)


def _sum(values: list[float]) -> float:
    return round(sum(values), 4)


def usage(session: Session, user: User, now: datetime | None = None) -> Usage:
    """Everything the user has spent, per job, endpoint and evaluation, in total and this month."""
    now = now or utcnow()
    start = month_start(now)
    # The columns alone, not ORM objects, and rows built unvalidated from them: a user has
    # hundreds of jobs, and this route is polled.
    jobs = session.execute(select(*JOB_COST_COLUMNS).where(TrainingJob.user_id == user.id)
                           .order_by(TrainingJob.created_at.desc()))
    job_rows = [JobCost.model_construct(job_name=j.job_name, status=j.status, cost=job_cost(j),
                                        billable_seconds=j.billable_seconds, estimated_cost=j.estimated_cost,
                                        instance_type=j.instance_type, created_at=j.created_at)
                for j in jobs]
    endpoints = list(session.scalars(select(Endpoint).where(Endpoint.user_id == user.id)
                                     .order_by(Endpoint.created_at.desc())))
    ep_rows = []
    for ep in endpoints:
        total = float(accrued_cost(ep, now))
        ep_rows.append(EndpointCost(
            endpoint_name=ep.endpoint_name, status=ep.status, accrued_cost=total,
            this_month=endpoint_month_cost(ep, total, now), price_per_hour=ep.price_per_hour,
            instance_type=ep.instance_type, created_at=ep.created_at, deleted_at=ep.deleted_at))
    evals = list(session.scalars(select(Evaluation).where(Evaluation.user_id == user.id)
                                 .order_by(Evaluation.created_at.desc())))
    ev_rows = [EvaluationCost(id=e.id, status=e.status, cost=evaluation_cost(e),
                              billable_seconds=int((e.backend_handle or {}).get("billable_seconds") or 0),
                              created_at=e.created_at) for e in evals]
    training = TrainingUsage(total=_sum([r.cost for r in job_rows]),
                             this_month=_sum([r.cost for r in job_rows if r.created_at >= start]), jobs=job_rows)
    inference = InferenceUsage(total=_sum([r.accrued_cost for r in ep_rows]),
                               this_month=_sum([r.this_month for r in ep_rows]), endpoints=ep_rows)
    evaluation = EvaluationUsage(total=_sum([r.cost for r in ev_rows]),
                                 this_month=_sum([r.cost for r in ev_rows if r.created_at >= start]),
                                 evaluations=ev_rows)
    this_month = _sum([training.this_month, inference.this_month, evaluation.this_month])
    budget = None
    warnings: list[UsageWarning] = []
    if user.monthly_budget is not None:
        limit = float(user.monthly_budget)
        budget = Budget(monthly_budget=limit, spent_this_month=this_month,
                        remaining=round(max(0.0, limit - this_month), 4), exceeded=this_month > limit)
        if budget.exceeded:
            warnings.append(UsageWarning(code=BUDGET_EXCEEDED_CODE, message=(
                f"You have spent ${this_month:.2f} this month, over your ${limit:.2f} monthly budget; new "
                "training jobs and evaluations are refused until next month or a higher budget")))
            for ep in endpoints:
                if ep.status in ENDPOINT_LIVE:
                    warnings.append(UsageWarning(code="endpoint_over_budget", endpoint_name=ep.endpoint_name,
                                                 message=_endpoint_message(ep, limit)))
    return Usage(month=f"{start:%Y-%m}", training=training, inference=inference, evaluation=evaluation,
                 total=_sum([training.total, inference.total, evaluation.total]), this_month=this_month,
                 budget=budget, warnings=warnings)



def _endpoint_message(ep: Endpoint, limit: float) -> str:
    return (f"Endpoint {ep.endpoint_name} is still running at ${ep.price_per_hour:.2f}/hour past your "
            f"${limit:.2f} monthly budget; it is not stopped for you: delete it to stop the cost")


def month_spend(session: Session, user: User, now: datetime | None = None) -> float:
    return usage(session, user, now).this_month


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
                      level="warning", message=_endpoint_message(ep, limit),
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


class UsageService:
    def __init__(self, session: Session, user: User) -> None:
        self.session, self.user = session, user

    def summary(self) -> Usage:
        now = utcnow()
        report = usage(self.session, self.user, now)
        if report.budget is not None and report.budget.exceeded and flag_endpoints_over_budget(
                self.session, self.user, now):
            self.session.commit()
        return report
