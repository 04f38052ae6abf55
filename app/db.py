"""Engine, declarative base and session factory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every database (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def make_engine(url: str, pool_size: int = 20) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # Sized for the API's concurrency so no request opens a connection of its own. No pre-ping: it
    # costs round trips on every checkout (bench/api_load.py); a connection the server dropped fails
    # once and invalidates the pool (current_user retries that once), and pool_recycle retires
    # connections before typical idle timeouts. READ COMMITTED (the default): claims are conditional
    # UPDATEs (app/leases.py), which re-check their WHERE against the newest row version.
    return create_engine(url, pool_size=pool_size, max_overflow=10, pool_recycle=1800)


def _sqlite_engine(url: str) -> Engine:
    """SQLite as an embedded database: WAL (readers never wait), a busy timeout (writers queue), and
    write transactions that take the write lock before they read.

    A deferred transaction that reads and then writes fails at once with `database is locked`
    (SQLITE_BUSY_SNAPSHOT, no busy wait) when another connection committed in between. So a
    transaction that has only read so far is ended when its first write comes and a `BEGIN IMMEDIATE`
    one takes its place: it waits its turn for the lock and reads the newest data, which is
    PostgreSQL's READ COMMITTED. A transaction that has issued anything else (DDL, a SAVEPOINT) is
    left as it is."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
        # pysqlite's own transaction handling breaks SAVEPOINT; take it over.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")
        conn.info["txn"] = "new"

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _sqlite_end(conn: Any) -> None:
        conn.info.pop("txn", None)

    @event.listens_for(engine, "before_cursor_execute")
    def _sqlite_upgrade(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        state = conn.info.get("txn")
        if state not in ("new", "read"):
            return
        verb = statement.lstrip()[:8].upper()
        if verb.startswith(("SELECT", "WITH", "PRAGMA")):
            conn.info["txn"] = "read"
        elif verb.startswith(_WRITES) and state == "read":
            cursor.execute("COMMIT")  # only reads so far: nothing of the caller's is lost
            cursor.execute("BEGIN IMMEDIATE")
            conn.info["txn"] = "write"
        elif verb != "BEGIN":
            conn.info["txn"] = "write"

    return engine


def make_sessionmaker(bind: Any) -> sessionmaker[Any]:
    return sessionmaker(bind=bind, expire_on_commit=False)
