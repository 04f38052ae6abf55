"""The polled reads as the app serves them (its own engine and, on PostgreSQL, its pipelined async
connections): many at once get each caller's own rows; a failing read fails alone; a slow read
never delays a request that does not need it (the event loop is never blocked by one)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Text, bindparam, cast, column, delete, func, select, table

from app.auth.models import User
from app.config import AuthSettings, WorkerSettings
from app.db import UTCDateTime, make_engine
from app.main import create_app
from app.reads import Query, ReadDb, open_pool
from app.training import reads as job_reads
from app.training.models import TrainingJob
from tests.settings import make_test_settings


@pytest.fixture
def served(db_url: str, tmp_path: Any) -> Iterator[Any]:
    settings = make_test_settings(data_dir=tmp_path / "data", database_url=db_url,
                                  worker=WorkerSettings(enabled=False), public_base_url="http://testserver",
                                  auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192))
    yield create_app(settings)
    engine = make_engine(db_url, pool_size=1)  # the session's database is shared: leave nothing behind
    with engine.begin() as c:
        c.execute(delete(User).where(User.username.like(PREFIX + "%")))
    engine.dispose()


async def _user(c: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    name = PREFIX + uuid.uuid4().hex[:10]
    r = await c.post("/api/auth/register", json={"username": name, "email": f"{name}@example.com",
                                                 "password": "long password 1"})
    assert r.status_code == 201, r.text
    r = await c.post("/api/auth/token", data={"username": name, "password": "long password 1"})
    return r.json()["access_token"], {"Authorization": f"Bearer {r.json()['access_token']}"}


PREFIX = "rd-"


def insert_job(sessionmaker: Any, user_id: str, name: str) -> str:
    with sessionmaker() as s:
        s.add(TrainingJob(job_name=name, user_id=user_id, base_model="llmtuner/tiny-llama", instance_type="local",
                          backend="local", status="Completed", secondary_status="Completed"))
        s.commit()
    return name


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=30)


def test_many_reads_at_once_each_get_their_own(served: Any) -> None:
    async def scenario() -> None:
        async with served.router.lifespan_context(served), _client(served) as c:
            users = [await _user(c) for _ in range(3)]
            names = []
            for i, (_, auth) in enumerate(users):
                me = (await c.get("/api/auth/me", headers=auth)).json()
                names.append(insert_job(served.state.sessionmaker, me["id"], name=f"job-{i}"))
            paths = [(i, p) for i in range(3) for p in (f"/api/training-job/{names[i]}", "/api/training-jobs",
                                                          f"/api/training-job/{names[i]}/events",
                                                          f"/api/training-job/{names[i]}/metrics", "/api/endpoints",
                                                          "/api/usage")]
            replies = await asyncio.gather(*(c.get(p, headers=users[i][1]) for i, p in paths * 4))
            assert [r.status_code for r in replies] == [200] * len(replies)
            for (i, path), r in zip(paths * 4, replies, strict=True):
                if path == "/api/training-jobs":
                    assert [j["job_name"] for j in r.json()["data"]] == [names[i]]
                elif path == "/api/usage":
                    assert [j["job_name"] for j in r.json()["training"]["jobs"]] == [names[i]]
                elif path.endswith(names[i]):
                    assert r.json()["job_name"] == names[i]
            # Another user's job, and a name no job can have, are not found: in the same batch as others.
            others = await asyncio.gather(c.get(f"/api/training-job/{names[1]}", headers=users[0][1]),
                                          c.get("/api/training-job/a%00b", headers=users[0][1]),
                                          c.get(f"/api/training-job/{names[0]}", headers=users[0][1]))
            assert [r.status_code for r in others] == [404, 404, 200]

    asyncio.run(scenario())


def test_a_slow_read_does_not_delay_other_requests(served: Any, db_url: str, monkeypatch: Any) -> None:
    if db_url.startswith("postgresql"):  # the database itself is slow: pg_sleep in the statement
        slow = job_reads._select().where(job_reads.T.user_id == job_reads.bindparam("user_id"),
                                          job_reads.T.job_name == job_reads.bindparam("job_name"),
                                          cast(func.pg_sleep(1.0), Text) == "")
        monkeypatch.setattr(job_reads, "_ONE", Query(slow))
    else:  # SQLite reads run in threads: a read that takes a second there
        rows = Query.rows

        def slow_rows(self: Query, bind: Any, params: dict[str, Any]) -> list[Any]:
            time.sleep(1.0)
            return rows(self, bind, params)

        monkeypatch.setattr(Query, "rows", slow_rows)

    async def scenario() -> None:
        async with served.router.lifespan_context(served), _client(served) as c:
            _, auth = await _user(c)
            me = (await c.get("/api/auth/me", headers=auth)).json()
            name = insert_job(served.state.sessionmaker, me["id"], name="slow-job")
            t0 = time.monotonic()
            job = asyncio.ensure_future(c.get(f"/api/training-job/{name}", headers=auth))
            await asyncio.sleep(0.2)  # the slow read is under way
            health = await c.get("/api/health")
            health_done = time.monotonic() - t0
            r = await job
            assert r.status_code == 200 and health.status_code == 200
            assert time.monotonic() - t0 >= 1.0
            assert health_done < 0.9, f"/api/health waited for the slow read ({health_done:.2f} s)"

    asyncio.run(scenario())


def test_a_failing_read_fails_alone(db_url: str) -> None:
    """On PostgreSQL reads issued together share one pipeline: an error in one of them (which aborts
    the rest of the pipeline) must reach that one only."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the pipeline is PostgreSQL's")
    engine = make_engine(db_url, pool_size=1)
    good = Query(select(func.length(cast(job_reads.bindparam("text"), Text))))
    bad = Query(select(column("x")).select_from(table("no_such_table")))
    since = Query(select(func.now()).where(bindparam("at", type_=UTCDateTime()) < func.now()))

    async def scenario() -> None:
        pool = await open_pool(engine)
        assert pool is not None
        db = ReadDb(engine, pool)
        try:
            out = await asyncio.gather(db.rows(good, text="ab"), db.rows(bad), db.rows(good, text="abc"),
                                       db.rows(since, at=datetime(2026, 1, 1)), return_exceptions=True)
            assert out[0] == [(2,)] and out[2] == [(3,)]
            assert "no_such_table" in str(out[1])
            assert isinstance(out[3], ValueError)  # refused before it was sent (a naive time)
            assert await db.rows(good, text="abcd") == [(4,)]  # the connection is still good
        finally:
            await pool.close()
            engine.dispose()

    asyncio.run(scenario())


def test_read_connections_keep_the_urls_options(db_url: str) -> None:
    """The read pool's connections use what the database URL says (its search_path here), UTC and
    generic plans."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the read pool is PostgreSQL's")
    admin = make_engine(db_url, pool_size=1)
    with admin.begin() as c:
        c.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS reads_probe")
    sep = "&" if "?" in db_url else "?"
    engine = make_engine(f"{db_url}{sep}options=-csearch_path%3Dreads_probe", pool_size=1)
    probe = Query(select(func.current_schema(), func.current_setting("TimeZone"),
                         func.current_setting("plan_cache_mode")))

    async def scenario() -> None:
        pool = await open_pool(engine)
        assert pool is not None
        try:
            assert await ReadDb(engine, pool).rows(probe) == [("reads_probe", "UTC", "force_generic_plan")]
        finally:
            await pool.close()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.exec_driver_sql("DROP SCHEMA reads_probe")
        admin.dispose()


def test_constants_are_written_into_the_sql_and_only_the_callers_values_are_sent(db_url: str) -> None:
    """A statement's constants (a status compared with, a number) are literals in its SQL, quoted as
    the dialect quotes them: each execution converts only the request's own values."""
    engine = make_engine(db_url, pool_size=1)
    q = Query(select(func.count()).select_from(TrainingJob).where(
        TrainingJob.user_id == bindparam("user_id"), TrainingJob.status != "It's", TrainingJob.price_per_hour >= 0.5))
    c = q.compiled(engine.dialect)
    assert "'It''s'" in c.sql and "0.5" in c.sql
    assert c.positional == ["user_id"] if c.positional is not None else c.sql.count("%(") == 1

    async def scenario() -> list[Any]:
        pool = await open_pool(engine)
        try:
            return await ReadDb(engine, pool).rows(q, user_id="nobody")
        finally:
            if pool is not None:
                await pool.close()

    try:
        assert asyncio.run(scenario()) == [(0,)]
    finally:
        engine.dispose()
