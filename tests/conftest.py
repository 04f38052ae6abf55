"""Shared fixtures: every test runs in a transaction rolled back at the end, on SQLite and,
when TEST_DATABASE_URL is set, on PostgreSQL too."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from app.config import AuthSettings, Settings, WorkerSettings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.storage.local import LocalObjectStore
from tests.settings import make_test_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_URL = os.environ.get("TEST_DATABASE_URL")
DB_PARAMS = ["sqlite"] + (["postgresql"] if PG_URL else [])
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    """In CI nothing is skipped for want of a database or the real datasets: it fails instead."""
    if IN_CI and not PG_URL:
        raise pytest.UsageError("CI=true but TEST_DATABASE_URL is unset: the PostgreSQL half of the suite "
                                "must run in CI (.ci/run sets it)")
    if IN_CI and not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"CI=true but the real datasets folder {SHARED_DATA} is absent")


def migrate(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # type: ignore[assignment]
    command.upgrade(cfg, "head")


def fresh_database(kind: str, tmp_dir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_dir / 'test.db'}"
    assert PG_URL
    eng = make_engine(PG_URL, pool_size=1)
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    return PG_URL


@pytest.fixture(scope="session", params=DB_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = fresh_database(request.param, tmp_path_factory.mktemp(f"db-{request.param}"))
    migrate(url)
    return url


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Any]:
    eng = make_engine(db_url, pool_size=5)
    yield eng
    eng.dispose()


@pytest.fixture
def connection(engine: Any) -> Iterator[Any]:
    conn = engine.connect()
    trans = conn.begin()
    if conn.dialect.name == "postgresql":
        # This transaction never commits: let the deferred triggers (users.data_version, migration
        # 0009) fire after each statement instead, as each of the app's commits would make them.
        conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
    yield conn
    trans.rollback()
    conn.close()


@pytest.fixture
def session_factory(connection: Any) -> sessionmaker[Any]:
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


def own_database(tmp_path: Path) -> Iterator[sessionmaker[Any]]:
    """For a module's `session_factory` override: a database file of its own with pooled connections,
    as the app runs. The shared test connection above cannot serve two threads at once, and a real
    server answering over HTTP may overlap a request's database work with the next one's."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_test_settings(
        data_dir=tmp_path / "data", database_url="sqlite://",
        worker=WorkerSettings(enabled=False),
        # Cheap hashes in tests; the real parameters are the defaults.
        auth=AuthSettings(argon2_time_cost=1, argon2_memory_kib=8192),
        public_base_url="http://testserver",
    )


@pytest.fixture
def store(settings: Settings) -> LocalObjectStore:
    return LocalObjectStore(settings.data_path / "objects", b"test-signing-key", settings.public_base_url)


@pytest.fixture
def backends() -> Any:
    """None: the app builds the backends its settings name. Override per test module."""
    return None


@pytest.fixture
def app(settings: Settings, session_factory: Any, store: Any, backends: Any) -> Any:
    return create_app(settings, sessionmaker=session_factory, store=store, backends=backends)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def user_id(client: TestClient) -> Callable[[dict[str, str]], str]:
    """The user id behind a set of auth headers."""
    return lambda headers: str(client.get("/api/auth/me", headers=headers).json()["id"])


@pytest.fixture
def register(client: TestClient) -> Callable[..., dict[str, str]]:
    """Register a user, log in, return auth headers."""

    def _register(username: str = "alice", password: str = "correct horse battery") -> dict[str, str]:
        r = client.post("/api/auth/register",
                        json={"username": username, "email": f"{username}@example.com", "password": password})
        assert r.status_code == 201, r.text
        r = client.post("/api/auth/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    return _register


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets folder {SHARED_DATA} is absent")
    return SHARED_DATA


def assert_error(resp: Any, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"code", "message", "param", "details"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return dict(err)
