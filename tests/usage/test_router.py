from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.auth.models import User
from app.db import utcnow
from app.deployments.models import Endpoint
from app.errors import AppError
from app.events import Event
from app.runtime import WorkerContext
from app.statuses import JOB_ENDED
from app.training.models import TrainingJob
from app.usage import days
from app.usage.service import check_budget, month_share, month_start, reconcile


@pytest.fixture
def alice(client, register):
    headers = register("alice")
    return headers, client.get("/api/auth/me", headers=headers).json()["id"]


def add_job(s, uid, name, status="Completed", billable=3600, price=1.21, actual=None, created=None):
    job = TrainingJob(job_name=name, user_id=uid, base_model="llmtuner/tiny-llama", hyperparameters={},
                      instance_type="ml.g5.xlarge", backend="sagemaker", backend_handle={}, status=status,
                      secondary_status=status, billable_seconds=billable, price_per_hour=price,
                      estimated_cost=1.0, actual_cost=actual, created_at=created or utcnow())
    s.add(job)
    if status in JOB_ENDED:  # as the worker does when a job ends
        days.refresh(s, uid, job.created_at)
    return job


def add_endpoint(s, uid, name, status="Deleted", seconds=7200.0, price=1.21, running_for=None, created=None):
    now = utcnow()
    ep = Endpoint(endpoint_name=name, user_id=uid, model_name=name, model_uri="local://x", instance_type="ml.g5.xlarge",
                  backend="sagemaker", backend_handle={}, status=status, price_per_hour=price, accrued_seconds=seconds,
                  accrual_started_at=now - running_for if running_for else None, created_at=created or now,
                  deleted_at=now if status == "Deleted" else None)
    s.add(ep)
    return ep


def set_budget(session_factory, uid, budget):
    with session_factory() as s:
        s.get(User, uid).monthly_budget = budget
        s.commit()


class TestUsage:
    def test_sums_match_recorded_costs(self, client, alice, session_factory):
        headers, uid = alice
        with session_factory() as s:
            add_job(s, uid, "job-done", actual=1.5)                       # ended: its actual cost
            add_job(s, uid, "job-running", status="InProgress", billable=1800, price=2.0)  # running: 1800 s x $2/h
            add_job(s, uid, "job-failed", status="Failed", actual=0.25)
            add_endpoint(s, uid, "ep-gone", seconds=7200.0, price=1.21)  # 2 h at $1.21
            s.commit()
        u = client.get("/api/usage", headers=headers).json()
        assert u["currency"] == "USD"
        costs = {j["job_name"]: j["cost"] for j in u["training"]["jobs"]}
        assert costs == {"job-done": 1.5, "job-running": 1.0, "job-failed": 0.25}
        assert u["training"]["total"] == pytest.approx(2.75) and u["training"]["this_month"] == pytest.approx(2.75)
        [ep] = u["inference"]["endpoints"]
        assert ep["endpoint_name"] == "ep-gone" and ep["accrued_cost"] == pytest.approx(2.42)
        assert u["inference"]["total"] == pytest.approx(2.42)
        assert u["total"] == pytest.approx(2.75 + 2.42)
        assert u["budget"] is None and u["warnings"] == []

    def test_running_endpoint_accrues(self, client, alice, session_factory):
        headers, uid = alice
        with session_factory() as s:
            add_endpoint(s, uid, "ep-live", status="InService", seconds=3600.0, price=1.0,
                         running_for=timedelta(hours=1))
            s.commit()
        [ep] = client.get("/api/usage", headers=headers).json()["inference"]["endpoints"]
        assert ep["accrued_cost"] == pytest.approx(2.0, abs=0.01)

    def test_old_jobs_are_not_this_month(self, client, alice, session_factory):
        headers, uid = alice
        old = month_start(utcnow()) - timedelta(days=3)
        with session_factory() as s:
            add_job(s, uid, "job-old", actual=4.0, created=old)
            add_job(s, uid, "job-new", actual=1.0)
            s.commit()
        u = client.get("/api/usage", headers=headers).json()
        assert u["training"]["total"] == 5.0 and u["training"]["this_month"] == 1.0

    def test_another_users_costs_are_not_shown(self, client, alice, register, session_factory):
        _, uid = alice
        with session_factory() as s:
            add_job(s, uid, "job-a", actual=3.0)
            s.commit()
        bob = register("bob")
        u = client.get("/api/usage", headers=bob).json()
        assert u["training"]["jobs"] == [] and u["total"] == 0


class TestEndpointMonthCost:
    def test_capped_by_hours_this_month(self):
        now = utcnow()
        ep = Endpoint(price_per_hour=1.0, created_at=month_start(now) - timedelta(days=40), deleted_at=None)
        hours = (now - month_start(now)).total_seconds() / 3600
        def share(total: float) -> float:
            return month_share(total, ep.price_per_hour, ep.created_at, ep.deleted_at, now)

        assert share(10_000.0) == pytest.approx(hours, rel=1e-6)
        assert share(0.5) == pytest.approx(min(0.5, hours))


class TestBudget:
    def test_no_budget_no_limit(self, alice, session_factory):
        _, uid = alice
        with session_factory() as s:
            check_budget(s, s.get(User, uid), 1e9)

    def test_refused_when_estimate_exceeds_remaining(self, alice, session_factory):
        _, uid = alice
        set_budget(session_factory, uid, 10.0)
        with session_factory() as s:
            add_job(s, uid, "job-spent", actual=7.0)
            s.commit()
            user = s.get(User, uid)
            check_budget(s, user, 2.99)
            with pytest.raises(AppError) as e:
                check_budget(s, user, 3.5)
        err = e.value
        assert err.status_code == 429 and err.code == "budget_exceeded"
        assert err.details == [{"estimated_cost": 3.5, "remaining": 3.0, "monthly_budget": 10.0}]

    def test_budget_in_usage_and_endpoint_flagged_once(self, client, alice, session_factory):
        """The report warns; the worker records the event on the endpoint, once."""
        headers, uid = alice
        set_budget(session_factory, uid, 1.0)
        with session_factory() as s:
            add_job(s, uid, "job-big", actual=2.0)
            ep = add_endpoint(s, uid, "ep-live", status="InService", seconds=0.0, price=1.0,
                              running_for=timedelta(minutes=1))
            s.commit()
            ep_id = ep.id
        u = client.get("/api/usage", headers=headers).json()
        assert u["budget"]["exceeded"] and u["budget"]["remaining"] == 0 and u["budget"]["monthly_budget"] == 1.0
        codes = [w["code"] for w in u["warnings"]]
        assert "budget_exceeded" in codes and "endpoint_over_budget" in codes
        for _ in range(2):  # the worker's passes record it, once a month
            reconcile(WorkerContext(session_factory, None, None, None, first_pass=False))  # type: ignore[arg-type]
        with session_factory() as s:
            flagged = list(s.scalars(select(Event).where(Event.resource_id == ep_id, Event.type == "budget_exceeded")))
            assert len(flagged) == 1 and flagged[0].resource_type == "endpoint"
            assert s.get(Endpoint, ep_id).status == "InService"  # never stopped for the budget


def test_lists_are_bounded_totals_and_days_are_not(client, alice, session_factory):
    """The lists hold the newest `limit` items; totals, counts and the daily series cover everything."""
    headers, uid = alice
    now = utcnow()
    with session_factory() as s:
        for i in range(30):  # one a day, the newest today: $1 each, and one running ($0.5 so far)
            add_job(s, uid, f"job-{i:02d}", actual=1.0, created=now - timedelta(days=i, microseconds=1))
        add_job(s, uid, "job-old", actual=5.0, created=now - timedelta(days=45))  # before the series
        add_job(s, uid, "job-run", status="InProgress", billable=1800, price=1.0, created=now)
        # Up for exactly the two previous days: $48 spread as $24 on each.
        day0 = now.replace(hour=0, minute=0, second=0, microsecond=0)
        ep = add_endpoint(s, uid, "ep-two-days", seconds=48 * 3600.0, price=1.0, created=day0 - timedelta(days=2))
        ep.deleted_at = day0
        s.commit()
    u = client.get("/api/usage?limit=5", headers=headers).json()
    t = u["training"]
    assert t["count"] == 32
    assert [j["job_name"] for j in t["jobs"]] == ["job-run", "job-00", "job-01", "job-02", "job-03"]
    assert t["total"] == 35.5
    assert u["inference"]["count"] == 1 and u["inference"]["total"] == 48.0
    daily = u["daily"]
    assert len(daily) == 30 and daily[-1]["day"] == f"{now:%Y-%m-%d}"
    assert [d["training"] for d in daily] == [1.0] * 29 + [1.5]
    assert [d["inference"] for d in daily[-3:]] == [24.0, 24.0, 0.0]
    assert client.get("/api/usage?limit=0", headers=headers).status_code == 422
