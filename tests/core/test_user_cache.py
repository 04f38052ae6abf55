"""The polled reads' cache (app/user_cache.py): every write to a user's jobs, endpoints and their
adapters, evaluations, events or usage days moves `users.data_version` (database triggers), so a
cached answer is never served after a write, whoever made it; a user never sees another's entries."""

from __future__ import annotations

import threading
import time
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from app.auth.models import User
from app.db import make_engine, new_id, utcnow
from app.deployments.models import Endpoint, EndpointAdapter
from app.evaluation.models import Evaluation
from app.events import Event
from app.training.models import TrainingJob
from app.usage.days import JobCostDay
from app.user_cache import UserCache, sizeof
from tests.usage.test_router import add_endpoint, add_job, set_budget


def _version(conn: Any, uid: str) -> int:
    return int(conn.execute(select(User.data_version).where(User.id == uid)).scalar_one())


def _user(conn: Any, name: str, uid: str | None = None) -> str:
    uid = uid or new_id()
    conn.execute(User.__table__.insert().values(id=uid, username=name, email=f"{name}@example.com",
                                                password_hash="x", is_admin=False, created_at=utcnow()))
    return uid


def _job_row(job_id: str, uid: str, name: str) -> Any:
    return TrainingJob.__table__.insert().values(
        id=job_id, job_name=name, user_id=uid, base_model="m", instance_type="local", backend="local",
        status="InProgress", secondary_status="Training", hyperparameters={}, backend_handle={}, progress={},
        final_metrics={}, latest_metrics={}, stop_requested=False, created_at=utcnow())


def test_every_write_to_a_users_rows_moves_its_version(connection: Any) -> None:
    uid, other = _user(connection, "versioned"), _user(connection, "bystander")
    job_id, ep_id, ev_id = new_id(), new_id(), new_id()
    now = utcnow()
    writes = [
        _job_row(job_id, uid, "j"),
        update(TrainingJob).where(TrainingJob.id == job_id).values(progress={"step": 1}),
        Endpoint.__table__.insert().values(
            id=ep_id, endpoint_name="e", user_id=uid, model_name="e", model_uri="local://x", instance_type="local",
            instance_count=1, backend="local", backend_handle={}, status="Creating", price_per_hour=0.0,
            accrued_seconds=0.0, created_at=now),
        update(Endpoint).where(Endpoint.id == ep_id).values(status="InService"),
        EndpointAdapter.__table__.insert().values(id=new_id(), endpoint_id=ep_id, user_id=uid, name="a",
                                                  model_uri="local://a", status="attached", created_at=now),
        update(EndpointAdapter).where(EndpointAdapter.endpoint_id == ep_id).values(status="detached"),
        delete(EndpointAdapter).where(EndpointAdapter.endpoint_id == ep_id),
        Evaluation.__table__.insert().values(id=ev_id, user_id=uid, status="Pending", model_ref="m", request={},
                                             backend_handle={}, created_at=now),
        update(Evaluation).where(Evaluation.id == ev_id).values(status="Completed"),
        Event.__table__.insert().values(user_id=uid, resource_type="training_job", resource_id=job_id, level="info",
                                        type="status", message="m", data={}, timestamp=now),
        update(Event).where(Event.user_id == uid).values(message="n"),
        delete(Event).where(Event.user_id == uid),
        JobCostDay.__table__.insert().values(user_id=uid, day=date(2026, 1, 1), jobs=1, cost=1.0),
        update(JobCostDay).where(JobCostDay.user_id == uid).values(jobs=2),
        delete(JobCostDay).where(JobCostDay.user_id == uid),
        delete(Evaluation).where(Evaluation.id == ev_id),
        delete(Endpoint).where(Endpoint.id == ep_id),
        delete(TrainingJob).where(TrainingJob.id == job_id),
    ]
    for stmt in writes:
        before = _version(connection, uid)
        connection.execute(stmt)
        assert _version(connection, uid) > before, stmt  # (a migration that recreated the table lost them)
    assert _version(connection, other) == 0


def test_a_cached_answer_is_not_served_after_a_write(client: Any, register: Any, session_factory: Any) -> None:
    headers, other = register("cached"), register("cached-other")
    uid = client.get("/api/auth/me", headers=headers).json()["id"]
    with session_factory() as s:
        add_job(s, uid, "first", status="InProgress", billable=3600, price=1.0)
        s.commit()

    def names() -> list[str]:
        r = client.get("/api/training-jobs", headers=headers)
        assert r.status_code == 200
        return [j["job_name"] for j in r.json()["data"]]

    assert names() == ["first"] and names() == ["first"]  # (the second from the cache)
    assert client.get("/api/training-job/first", headers=headers).json()["billable_seconds"] == 3600
    assert client.get("/api/usage", headers=headers).json()["training"]["total"] == pytest.approx(1.0)
    with session_factory() as s:  # as the worker would, in another process
        s.execute(update(TrainingJob).where(TrainingJob.user_id == uid).values(billable_seconds=7200))
        add_job(s, uid, "second", actual=0.5, created=utcnow() + timedelta(seconds=1))
        s.commit()
    assert names() == ["second", "first"]
    assert client.get("/api/training-job/first", headers=headers).json()["billable_seconds"] == 7200
    assert client.get("/api/usage", headers=headers).json()["training"]["total"] == pytest.approx(2.5)
    assert client.get("/api/endpoints", headers=headers).json()["data"] == []
    with session_factory() as s:
        add_endpoint(s, uid, "ep-up", status="InService", seconds=0.0, price=1.0, running_for=timedelta(hours=1))
        s.commit()
    [ep] = client.get("/api/endpoints", headers=headers).json()["data"]
    assert ep["endpoint_name"] == "ep-up" and ep["accrued_cost"] == pytest.approx(1.0, abs=0.001)
    assert client.get("/api/endpoint-status/ep-up", headers=headers).json()["status"] == "InService"
    # Another user asking the same is answered from their own data, never from this user's entries.
    assert client.get("/api/training-jobs", headers=other).json()["data"] == []
    assert client.get("/api/training-job/first", headers=other).status_code == 404
    assert client.get("/api/usage", headers=other).json()["training"]["count"] == 0
    assert client.get("/api/endpoints", headers=other).json()["data"] == []
    assert client.get("/api/endpoint-status/ep-up", headers=other).status_code == 404


def test_usage_shows_a_new_budget_and_endpoint_at_once(client: Any, register: Any, session_factory: Any) -> None:
    headers = register("budgeted")
    uid = client.get("/api/auth/me", headers=headers).json()["id"]
    assert client.get("/api/usage", headers=headers).json()["budget"] is None
    set_budget(session_factory, uid, 5.0)  # the users row's own column: no data version
    assert client.get("/api/usage", headers=headers).json()["budget"]["monthly_budget"] == 5.0
    with session_factory() as s:
        add_endpoint(s, uid, "ep-new", status="InService", seconds=3600.0, price=1.0)
        s.commit()
    assert client.get("/api/usage", headers=headers).json()["inference"]["count"] == 1


class _U:
    def __init__(self, uid: str, version: int) -> None:
        self.id, self.data_version = uid, version


def test_entries_are_bounded_and_never_go_back_a_version() -> None:
    cache = UserCache(max_bytes=2000)
    cache.put(_U("a", 2), "k", "new")  # type: ignore[arg-type]
    cache.put(_U("a", 1), "k", "old")  # type: ignore[arg-type]  # (read by a request that started earlier)
    assert cache.get(_U("a", 2), "k") == "new" and cache.get(_U("a", 1), "k") is None  # type: ignore[arg-type]
    assert cache.get(_U("b", 2), "k") is None  # type: ignore[arg-type]
    for i in range(100):  # small values under many keys (a page per cursor, say): the keys count too
        cache.put(_U("b", 0), ("page", str(i)), b"[]")  # type: ignore[arg-type]
    assert cache._bytes <= 2000 and len(cache._entries) < 20
    assert cache.get(_U("b", 0), ("page", "99")) == b"[]" and cache.get(_U("a", 2), "k") is None  # type: ignore[arg-type]
    assert sizeof([("name", 1.5, {"k": "v" * 100})]) > 100


def test_concurrent_writers_of_one_user_do_not_deadlock_on_its_row(engine: Any) -> None:
    """On PostgreSQL the users row is bumped at commit (deferred triggers). One transaction updates a
    job, another the user's other job, then the first that job too: without the counter the first
    waits for the second's commit, and both commit. Bumped at each write instead, the second would
    wait for the first's lock on the users row while holding its job: a deadlock."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's (SQLite has one writer at a time)")
    eng = make_engine(engine.url.render_as_string(hide_password=False), pool_size=3)
    uid, ids = new_id(), [new_id(), new_id()]
    try:
        with eng.begin() as c:
            _user(c, f"dl-{uid[:8]}", uid)
            for i, job_id in enumerate(ids):
                c.execute(_job_row(job_id, uid, f"j{i}"))
        with eng.connect() as c:
            start = _version(c, uid)
        second_wrote = threading.Event()
        errors: list[BaseException] = []

        def second() -> None:
            try:
                with eng.begin() as c:
                    c.execute(update(TrainingJob).where(TrainingJob.id == ids[1]).values(progress={"b": 1}))
                    second_wrote.set()
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=second)
        with eng.begin() as c:
            c.execute(update(TrainingJob).where(TrainingJob.id == ids[0]).values(progress={"a": 1}))
            t.start()
            deadline = time.monotonic() + 10
            while (not second_wrote.is_set() and time.monotonic() < deadline
                   and not c.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar()):
                time.sleep(0.01)
            c.execute(update(TrainingJob).where(TrainingJob.id == ids[1]).values(progress={"a": 2}))
        t.join(30)
        assert not errors, errors
        with eng.connect() as c:
            assert _version(c, uid) == start + 3
    finally:
        with eng.begin() as c:
            c.execute(delete(User).where(User.id == uid))
        eng.dispose()
