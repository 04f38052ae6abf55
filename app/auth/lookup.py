"""The users row behind every authenticated request, read on every request (a deleted user's token
stops working at once), as cheaply as the database allows (bench/api_load.py).

`await user_row(sessionmaker, user_id)` gives the row as a dict of column values, converted by the
columns' own result processors as an ORM load would, or None. No Session is opened.

* PostgreSQL (psycopg): lookups that are pending on the same event loop at the same moment share
  one query, `WHERE id = ANY($1)`. Under load one worker has dozens of requests in flight; the
  first one to reach the lookup schedules the query for the end of the current pass of the event
  loop, the others that arrive in that pass join it. Every row is still read after its request
  arrived, in one round trip that is not shared with any other statement. What this saves is the
  round trip per request: the blocking wait, the two context switches and the statement on the
  server, which cost several times the Python work of a lookup on a 2-core machine. One request
  alone waits for nothing: the query runs as soon as the loop has run what was ready.
  The await is the one suspension on this path, so no request may hold a pooled connection across
  it (a dependency that queries must come after `CurrentUser`): were the pool exhausted by
  requests waiting here, the shared query could not get a connection until the pool's timeout.
  The query is a named prepared statement run through libpq (`PGconn.exec_prepared`, rows loaded
  by psycopg's own `Transformer`) on a pooled connection, outside any transaction: no BEGIN/ROLLBACK
  and no autocommit switching. psycopg sends DEALLOCATE ALL after a ROLLBACK on a connection where
  it prepared statements of its own, so a statement found missing (SQLSTATE 26000) is prepared
  again. Any database error throws the connection away and retries once through the engine.
* SQLite (in-process, no round trip to save): one statement on a DBAPI cursor, inline.
* A sessionmaker bound to a Connection (the tests: one transaction per test) runs the single-row
  statement on that connection.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import ARRAY, String, any_, bindparam, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state

from app.auth.models import User
from app.runtime import SessionFactory

_PREPARED = "llmtuner.users_by_id"  # key, in a pooled connection's `info`, of its prepared state


async def user_row(sessionmaker: SessionFactory, user_id: str) -> dict[str, Any] | None:
    """The users row with this id, read now, or None."""
    bind = sessionmaker.kw.get("bind")
    if isinstance(bind, Engine):
        lookup = _lookup(bind)
        if lookup.batched:
            if "\x00" in user_id:  # no such id can be stored; it must not fail the others' query
                return None
            return await lookup.fetch_batched(user_id)
        return lookup.fetch(user_id)
    if isinstance(bind, Connection):
        return _lookup(bind.engine).fetch_on(bind, user_id)
    with sessionmaker() as session:  # an unusual sessionmaker (no single bind): the ORM way
        user = session.get(User, user_id)
        return None if user is None else {c.key: getattr(user, c.key) for c in User.__table__.c}


def detached_user(row: dict[str, Any]) -> User:
    """A detached `User` from its row, carrying its identity: `session.add(user)` makes it
    persistent in a session without a query (do that before changing it)."""
    user = _new_user()
    instance_state(user).dict.update(row)
    make_transient_to_detached(user)
    return user


_new_user = User.__mapper__.class_manager.new_instance


class _UserLookup:
    """The statements for one engine, compiled once for its dialect."""

    def __init__(self, engine: Engine) -> None:
        configure_mappers()  # `detached_user` needs configured mappers; no ORM query may have run yet
        dialect = engine.dialect
        table = User.__table__
        one = select(table).where(table.c.id == bindparam("user_id")).compile(dialect=dialect)
        # Weak: this object is the value of a WeakKeyDictionary keyed by the engine.
        self._engine = weakref.ref(engine)
        self.sql = one.string
        self.positional = one.positional
        self.keys = [c.key for c in table.c]
        self.columns = list(table.c)
        self.dialect = dialect
        self.processors: list[Any] | None = None  # from the first result's type codes
        self.dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self.batched = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batch] = weakref.WeakKeyDictionary()
        if self.batched:
            many = select(table).where(table.c.id == any_(bindparam("ids", type_=ARRAY(String))))
            self.many_sql = many.compile(dialect=dialect).string
            assert self.many_sql.count("%") == 1, self.many_sql
            self.pg_sql = self.many_sql.replace("%(ids)s", "$1").encode()
            self.pg_name = b"llmtuner_users_by_id"

    @property
    def engine(self) -> Engine:
        engine = self._engine()
        assert engine is not None
        return engine

    async def fetch_batched(self, user_id: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            batch = self._batches[loop] = _Batch(self)
        return await batch.get(loop, user_id)

    # --- rows ---------------------------------------------------------------------------------

    def _processors(self, type_codes: list[Any]) -> list[Any]:
        self.processors = [c.type.dialect_impl(self.dialect).result_processor(self.dialect, t)
                           for c, t in zip(self.columns, type_codes, strict=True)]
        return self.processors

    def _row(self, raw: Any, processors: list[Any]) -> dict[str, Any]:
        return {k: (p(v) if p else v) for k, p, v in zip(self.keys, processors, raw, strict=True)}

    # --- one row: SQLite, or a given connection -----------------------------------------------

    def fetch(self, user_id: str) -> dict[str, Any] | None:
        conn = self.engine.raw_connection()
        try:
            cur = conn.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cur.execute(self.sql, self._params(user_id))
                raw = cur.fetchone()
                processors = self.processors or self._processors([d[1] for d in cur.description])
            finally:
                cur.close()
        except self.dbapi_error as e:
            conn.invalidate(e)  # a dropped connection most likely: retry through the engine
            conn.close()
            return self._via_engine(lambda c: self.fetch_on(c, user_id))
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        conn.close()
        return None if raw is None else self._row(raw, processors)

    def fetch_on(self, connection: Connection, user_id: str) -> dict[str, Any] | None:
        result = connection.exec_driver_sql(self.sql, self._params(user_id))
        processors = self.processors or self._processors([d[1] for d in result.cursor.description])
        raw = result.first()
        return None if raw is None else self._row(tuple(raw), processors)

    def _params(self, user_id: str) -> Any:
        return (user_id,) if self.positional else {"user_id": user_id}

    def _via_engine(self, run: Any) -> Any:
        """Run on a connection from the engine, retrying once if the first one was dead (the
        pool is then invalidated, so the retry gets a fresh connection)."""
        for attempt in (1, 2):
            try:
                with self.engine.connect() as c:
                    return run(c)
            except DBAPIError as e:
                if attempt == 2 or not e.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    # --- many rows in one round trip: PostgreSQL ----------------------------------------------

    def fetch_many(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Rows by id for those of `user_ids` that exist."""
        conn = self.engine.raw_connection()
        try:
            rows = self._fetch_libpq(conn, user_ids)
        except self.dbapi_error as e:
            conn.invalidate(e)
            conn.close()
            return self._via_engine(lambda c: self._fetch_many_on(c, user_ids))  # type: ignore[no-any-return]
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        conn.close()
        return rows

    def _fetch_libpq(self, conn: Any, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        dbapi_conn = conn.dbapi_connection
        pgconn = dbapi_conn.pgconn
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:
            # Not expected of a connection the pool hands out (it rolls back on check-in).
            raise errors.InterfaceError(f"pooled connection not idle: {pgconn.transaction_status!r}")
        tx = conn.info.get(_PREPARED)
        if tx is None:
            self._prepare(pgconn, dbapi_conn.info.encoding)
            tx = conn.info[_PREPARED] = Transformer(dbapi_conn)
        params = [bytes(tx.get_dumper(user_ids, PyFormat.TEXT).dump(user_ids))]  # an array literal
        res = pgconn.exec_prepared(self.pg_name, params)
        if (res.status == pq.ExecStatus.FATAL_ERROR
                and res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"):  # deallocated meanwhile
            self._prepare(pgconn, dbapi_conn.info.encoding)
            res = pgconn.exec_prepared(self.pg_name, params)
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise errors.error_from_result(res, encoding=dbapi_conn.info.encoding)
        if not res.ntuples:
            return {}
        processors = self.processors or self._processors([res.ftype(i) for i in range(res.nfields)])
        tx.set_pgresult(res)
        rows = (self._row(raw, processors) for raw in tx.load_rows(0, res.ntuples, tuple))
        return {row["id"]: row for row in rows}

    def _prepare(self, pgconn: Any, encoding: str) -> None:
        res = pgconn.prepare(self.pg_name, self.pg_sql)
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(res, encoding=encoding)

    def _fetch_many_on(self, connection: Connection, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        result = connection.exec_driver_sql(self.many_sql, {"ids": user_ids})
        processors = self.processors or self._processors([d[1] for d in result.cursor.description])
        rows = (self._row(tuple(raw), processors) for raw in result.all())
        return {row["id"]: row for row in rows}


class _Batch:
    """Lookups pending on one event loop: the first schedules `_run` for the end of the loop's
    current pass; those arriving before it runs join the same query."""

    def __init__(self, lookup: _UserLookup) -> None:
        self.lookup = lookup  # (no reference to the loop: this is the value of a dict keyed weakly by it)
        self.pending: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}

    def get(self, loop: asyncio.AbstractEventLoop, user_id: str) -> asyncio.Future[dict[str, Any] | None]:
        future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        waiting = self.pending.get(user_id)
        if waiting is not None:
            waiting.append(future)
            return future
        if not self.pending:
            loop.call_soon(self._run)
        self.pending[user_id] = [future]
        return future

    def _run(self) -> None:
        pending, self.pending = self.pending, {}
        try:
            rows = self.lookup.fetch_many(list(pending))
        except BaseException as e:
            error = e if isinstance(e, Exception) else RuntimeError(f"user lookup interrupted: {e!r}")
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            if error is not e:
                raise
            return
        for user_id, futures in pending.items():
            row = rows.get(user_id)
            for i, future in enumerate(futures):
                if not future.done():  # (cancelled meanwhile)
                    future.set_result(row if i == 0 or row is None else dict(row))


_LOOKUPS: weakref.WeakKeyDictionary[Engine, _UserLookup] = weakref.WeakKeyDictionary()


def _lookup(engine: Engine) -> _UserLookup:
    lookup = _LOOKUPS.get(engine)
    if lookup is None:
        lookup = _LOOKUPS[engine] = _UserLookup(engine)
    return lookup
