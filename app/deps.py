"""Request-scoped dependencies. Routes are `async def` and call the sync session inline:
no thread hop holds a pooled connection while waiting for a thread (see PERF-NOTES).

`current_user` is on every authenticated request (bench/api_load.py): it checks the token, then
reads the user row with one precompiled statement on a pooled connection (PostgreSQL: autocommit,
one round trip, no BEGIN/ROLLBACK), without a Session. The row is read on every request: a
deleted user's token stops working at once."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state

from app.auth.models import User
from app.config import Settings
from app.errors import Unauthorized
from app.storage import ObjectStore


async def get_session(request: Request) -> AsyncIterator[Session]:
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> ObjectStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_backends(request: Request) -> Any:
    return request.app.state.backends


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BackendsDep = Annotated[Any, Depends(get_backends)]


class _UserLookup:
    """One users row by id, per engine: the statement compiled once for the dialect, run on a pooled
    DBAPI connection (PostgreSQL: in autocommit, one round trip; psycopg prepares it after a few
    uses), values converted by the columns' own result processors. About a fifth of the CPU of
    `Session.get` (bench/api_load.py)."""

    def __init__(self, engine: Engine) -> None:
        configure_mappers()  # `_new_user` needs configured mappers; no ORM query may have run yet
        dialect = engine.dialect
        table = User.__table__
        compiled = select(table).where(table.c.id == bindparam("user_id")).compile(dialect=dialect)
        self.engine = engine
        self.sql = compiled.string
        self.positional = compiled.positional
        self.keys = [c.key for c in table.c]
        self.columns = list(table.c)
        self.dialect = dialect
        self.processors: list[Any] | None = None  # from the first result's type codes
        self.autocommit = dialect.name == "postgresql"
        self.dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def _params(self, user_id: str) -> Any:
        return (user_id,) if self.positional else {"user_id": user_id}

    def _row(self, raw: Any, description: Any) -> dict[str, Any] | None:
        if self.processors is None:
            self.processors = [c.type.dialect_impl(self.dialect).result_processor(self.dialect, d[1])
                               for c, d in zip(self.columns, description, strict=True)]
        if raw is None:
            return None
        return {k: (p(v) if p else v) for k, p, v in zip(self.keys, self.processors, raw, strict=True)}

    def fetch(self, user_id: str) -> dict[str, Any] | None:
        conn = self.engine.raw_connection()
        dbapi_conn = conn.dbapi_connection
        try:
            if self.autocommit:
                dbapi_conn.autocommit = True  # type: ignore[union-attr]
            cur = dbapi_conn.cursor()  # type: ignore[union-attr]
            try:
                cur.execute(self.sql, self._params(user_id))
                raw = cur.fetchone()
                description = cur.description
            finally:
                cur.close()
            if self.autocommit:
                dbapi_conn.autocommit = False  # type: ignore[union-attr]
        except self.dbapi_error as e:
            # Whatever failed (a dropped connection most likely): throw this connection away and
            # let the engine's own path handle it (pool invalidation on disconnect, one retry).
            conn.invalidate(e)
            conn.close()
            return self.fetch_via_engine(user_id)
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        conn.close()
        return self._row(raw, description)

    def fetch_via_engine(self, user_id: str) -> dict[str, Any] | None:
        for attempt in (1, 2):
            try:
                with self.engine.connect() as c:
                    return self._run(c, user_id)
            except DBAPIError as e:
                if attempt == 2 or not e.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def fetch_on(self, connection: Connection, user_id: str) -> dict[str, Any] | None:
        """On a given connection (tests bind the sessionmaker to one inside a transaction)."""
        return self._run(connection, user_id)

    def _run(self, connection: Connection, user_id: str) -> dict[str, Any] | None:
        result = connection.exec_driver_sql(self.sql, self._params(user_id))
        description = result.cursor.description
        raw = result.first()
        return self._row(tuple(raw) if raw is not None else None, description)


_LOOKUPS: weakref.WeakKeyDictionary[Engine, _UserLookup] = weakref.WeakKeyDictionary()


def load_user(sessionmaker: Any, user_id: str) -> User | None:
    """The user row as a detached `User` that carries its identity: `session.add(user)` makes it
    persistent in a session without a query (do that before changing it)."""
    bind = sessionmaker.kw.get("bind")
    if isinstance(bind, Connection):
        row = _lookup(bind.engine).fetch_on(bind, user_id)
    elif isinstance(bind, Engine):
        row = _lookup(bind).fetch(user_id)
    else:  # an unusual sessionmaker (no single bind): the ORM way
        with sessionmaker() as session:
            user = session.get(User, user_id)
            if user is not None:
                session.expunge(user)
            return user  # type: ignore[no-any-return]
    if row is None:
        return None
    user = _new_user()
    instance_state(user).dict.update(row)
    make_transient_to_detached(user)
    return user


def _lookup(engine: Engine) -> _UserLookup:
    lookup = _LOOKUPS.get(engine)
    if lookup is None:
        lookup = _LOOKUPS[engine] = _UserLookup(engine)
    return lookup


_new_user = User.__mapper__.class_manager.new_instance


async def current_user(request: Request, authorization: Annotated[str | None, Header()] = None) -> User:
    """The caller, from a bearer token. The row is read on every request, so a deleted user's token
    stops working at once. The `User` is detached (no session is opened for it): `session.add(user)`
    before changing it."""
    if not authorization:
        raise Unauthorized("Missing Authorization header: send `Authorization: Bearer <token>`",
                           code="missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be `Bearer <token>`", code="invalid_token")
    user_id = request.app.state.tokens.subject(token.strip())
    user = load_user(request.app.state.sessionmaker, user_id)
    if user is None:
        raise Unauthorized("The user this token was issued to no longer exists", code="invalid_token")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
