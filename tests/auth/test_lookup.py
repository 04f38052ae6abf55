"""app/auth/lookup.py on a real engine (what a served app uses), on SQLite and PostgreSQL: the row
equals an ORM load, a deleted user is gone at once, and on PostgreSQL concurrent lookups share one
query that survives deallocated statements and dead connections. Rows here are committed, so each
test deletes what it created."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, event, text
from sqlalchemy.orm import Session, sessionmaker

from app.auth import lookup as lookup_module
from app.auth.lookup import detached_user, user_row
from app.auth.models import User
from app.auth.schemas import UserRead
from app.config import AuthSettings, WorkerSettings
from app.db import make_engine
from app.main import create_app
from tests.settings import make_test_settings

PREFIX = "lk-"


@pytest.fixture
def live_engine(db_url: str) -> Iterator[Any]:
    # One pooled connection, so that consecutive lookups reuse it (prepared statement state).
    eng = make_engine(db_url, pool_size=1)
    yield eng
    with eng.begin() as c:
        c.execute(delete(User).where(User.username.like(PREFIX + "%")))
    eng.dispose()


def add_user(engine: Any, budget: float | None = None) -> dict[str, Any]:
    name = PREFIX + uuid.uuid4().hex[:12]
    with Session(engine) as s:
        user = User(username=name, email=f"{name}@example.com", password_hash="x", monthly_budget=budget)
        s.add(user)
        s.commit()
        return {c.key: getattr(user, c.key) for c in User.__table__.c}  # as the ORM loads it back


def delete_user(engine: Any, user_id: str) -> None:
    with engine.begin() as c:
        c.execute(delete(User).where(User.id == user_id))


def is_postgres(engine: Any) -> bool:
    return bool(engine.dialect.name == "postgresql")


def test_row_equals_the_orm_load_on_every_path(live_engine: Any) -> None:
    orm = add_user(live_engine, budget=12.5)
    via_engine = asyncio.run(user_row(sessionmaker(bind=live_engine), orm["id"]))
    with live_engine.connect() as conn:
        via_connection = asyncio.run(user_row(sessionmaker(bind=conn), orm["id"]))
    assert via_engine == via_connection == orm
    assert via_engine is not None and via_engine["created_at"].tzinfo is UTC
    # The /me body built from the row is the one built from an ORM-loaded User.
    with Session(live_engine) as s:
        loaded = s.get(User, orm["id"])
        as_orm = UserRead.model_validate(loaded).model_dump_json()
        assert UserRead.model_validate(via_engine).model_dump_json() == as_orm
    user = detached_user(via_engine)
    assert user.id == orm["id"] and user.monthly_budget == 12.5
    with Session(live_engine) as s:  # detached with its identity: add() makes it persistent, no INSERT
        s.add(user)
        user.monthly_budget = 3.0
        s.commit()
    assert asyncio.run(user_row(sessionmaker(bind=live_engine), orm["id"]))["monthly_budget"] == 3.0  # type: ignore[index]


def test_deleted_user_is_gone_at_once(live_engine: Any) -> None:
    sm = sessionmaker(bind=live_engine)
    user = add_user(live_engine)
    assert asyncio.run(user_row(sm, user["id"])) == user
    delete_user(live_engine, user["id"])
    assert asyncio.run(user_row(sm, user["id"])) is None
    assert asyncio.run(user_row(sm, "no-such-id")) is None


def test_concurrent_lookups(live_engine: Any) -> None:
    a, b = add_user(live_engine), add_user(live_engine, budget=1.0)
    checkouts = []
    event.listen(live_engine, "checkout", lambda *args: checkouts.append(1))
    ids = [a["id"], b["id"], a["id"], "missing", b["id"], a["id"], "no\x00such"]

    async def many() -> list[dict[str, Any] | None]:
        sm = sessionmaker(bind=live_engine)
        return list(await asyncio.gather(*(user_row(sm, i) for i in ids)))

    rows = asyncio.run(many())
    assert rows == [a, b, a, None, b, a, None]
    assert rows[0] is not rows[2] and rows[0] is not rows[5]  # each caller gets its own dict
    if is_postgres(live_engine):
        assert len(checkouts) == 1, "one query for the lookups pending together"
    else:
        assert len(checkouts) == len(ids), "SQLite: inline, one statement each"


def test_an_error_reaches_every_waiter(live_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if not is_postgres(live_engine):
        pytest.skip("SQLite lookups are inline, not batched")

    def broken(self: Any, user_ids: list[str]) -> Any:
        raise RuntimeError("database gone")

    monkeypatch.setattr(lookup_module._UserLookup, "fetch_many", broken)

    async def many() -> list[Any]:
        sm = sessionmaker(bind=live_engine)
        return list(await asyncio.gather(*(user_row(sm, i) for i in ("a", "b", "a")), return_exceptions=True))

    assert [type(r) for r in asyncio.run(many())] == [RuntimeError] * 3


def backend_pid(engine: Any) -> int:
    with engine.connect() as c:
        return int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


@pytest.fixture
def looked_up(live_engine: Any) -> tuple[Any, dict[str, Any], int]:
    """PostgreSQL: a user looked up once (statement prepared on the one pooled connection), that
    connection's backend pid."""
    if not is_postgres(live_engine):
        pytest.skip("PostgreSQL connections and prepared statements")
    sm = sessionmaker(bind=live_engine)
    user = add_user(live_engine)
    assert asyncio.run(user_row(sm, user["id"])) == user
    return sm, user, backend_pid(live_engine)


def test_statement_deallocated_by_psycopg_is_prepared_again(live_engine: Any, looked_up: Any) -> None:
    sm, user, pid = looked_up
    with live_engine.connect() as c:
        names = c.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars().all()
        assert "llmtuner_users_by_id" in names
        # psycopg prepares a statement run 5 times, and sends DEALLOCATE ALL on the ROLLBACK after.
        for _ in range(6):
            c.execute(text("SELECT count(*) FROM users WHERE username = :u"), {"u": "x"})
        c.rollback()
        assert c.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one() == 0
    assert backend_pid(live_engine) == pid, "the same pooled connection"
    assert asyncio.run(user_row(sm, user["id"])) == user


def test_dead_connection_is_replaced(live_engine: Any, looked_up: Any) -> None:
    sm, user, pid = looked_up
    other = make_engine(live_engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        with other.connect() as c:
            assert c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar_one()
    finally:
        other.dispose()
    assert asyncio.run(user_row(sm, user["id"])) == user
    assert backend_pid(live_engine) != pid


def test_served_app_refuses_a_deleted_users_token_at_once(live_engine: Any, db_url: str, tmp_path: Any) -> None:
    """The app as served (its own engine, no test transaction), many /me requests in flight."""
    settings = make_test_settings(data_dir=tmp_path / "data", database_url=db_url,
                                  worker=WorkerSettings(enabled=False), public_base_url="http://testserver",
                                  auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192))
    app = create_app(settings)
    names = [PREFIX + uuid.uuid4().hex[:12] for _ in range(2)]

    async def scenario() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            headers = []
            for name in names:
                r = await c.post("/api/auth/register",
                                 json={"username": name, "email": f"{name}@example.com", "password": "long password 1"})
                assert r.status_code == 201, r.text
                r = await c.post("/api/auth/token", data={"username": name, "password": "long password 1"})
                headers.append({"Authorization": f"Bearer {r.json()['access_token']}"})
            replies = await asyncio.gather(*(c.get("/api/auth/me", headers=headers[i % 2]) for i in range(20)))
            assert [r.json()["username"] for r in replies] == [names[i % 2] for i in range(20)]
            me = replies[0].json()
            with Session(live_engine) as s:
                orm = s.get(User, me["id"])
                assert replies[0].content == UserRead.model_validate(orm).model_dump_json().encode()
            delete_user(live_engine, me["id"])
            replies = await asyncio.gather(*(c.get("/api/auth/me", headers=headers[i % 2]) for i in range(6)))
            assert [r.status_code for r in replies] == [401, 200] * 3
            assert replies[0].json()["error"]["code"] == "invalid_token"
            # CurrentUser routes read the row the same way.
            assert (await c.get("/api/usage", headers=headers[0])).status_code == 401
            assert (await c.get("/api/usage", headers=headers[1])).status_code == 200

    asyncio.run(scenario())


def test_logins_queued_for_hashing_hold_no_connection(db_url: str, tmp_path: Any) -> None:
    """Requests waiting for a hashing slot (or its thread) must not hold pooled connections: with a
    one-connection pool, concurrent logins and registrations all succeed."""
    from sqlalchemy import create_engine

    from app.db import make_sessionmaker

    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=3)
    settings = make_test_settings(data_dir=tmp_path / "data", database_url=db_url,
                                  worker=WorkerSettings(enabled=False), public_base_url="http://testserver",
                                  auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192,
                                                    max_concurrent_logins=1))
    app = create_app(settings, sessionmaker=make_sessionmaker(engine))
    names = [PREFIX + uuid.uuid4().hex[:12] for _ in range(4)]

    async def scenario() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            replies = await asyncio.gather(*(c.post("/api/auth/register", json={
                "username": n, "email": f"{n}@example.com", "password": "long password 1"}) for n in names))
            assert [r.status_code for r in replies] == [201] * 4, [r.text for r in replies]
            replies = await asyncio.gather(*(c.post("/api/auth/token", data={
                "username": n, "password": "long password 1"}) for n in names * 2))
            assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]

    try:
        asyncio.run(scenario())
    finally:
        with engine.begin() as conn:
            conn.execute(delete(User).where(User.username.like(PREFIX + "%")))
        engine.dispose()


def test_lookups_keep_no_engine_or_event_loop_alive(db_url: str) -> None:
    engine = make_engine(db_url, pool_size=1)
    loops = []

    async def look(sm: Any) -> dict[str, Any] | None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await user_row(sm, "nobody")

    assert asyncio.run(look(sessionmaker(bind=engine))) is None
    engine_ref = weakref.ref(engine)
    engine.dispose()
    del engine
    gc.collect()
    assert engine_ref() is None and loops[0]() is None
