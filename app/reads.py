"""Reads for the routes a dashboard polls (job list, job, metrics, events, endpoint list, usage):
one statement per query, outside any transaction, rows as tuples, and the response written by orjson
with no ORM objects or response models in between (bench/api_load.py: the ORM path spent 1.5-11 ms
of CPU per request on these routes, most of it turning rows into objects and objects into JSON).

None of them blocks the event loop (`ReadDb.rows`):
* PostgreSQL: psycopg's async connections, from a small pool of autocommit connections the app
  opens at start-up (`open_pool`), and the reads issued in one pass of the event loop share one
  pipelined round trip (`_Pipeline`). For one job under load: 251 µs of CPU per request, against
  595 µs for the same reads in threads and 540 µs with a round trip each (docs/performance.md).
  Results come back in binary format, and each connection keeps one generic plan per statement.
* SQLite (in-process, nothing to wait for but the disk): the sync read in one of READ_THREADS threads.
* A connection given instead of an engine (the tests' transaction): the sync read, inline.

`Query(select(...))` compiles once per dialect, with the values written in the statement (its
constants) as SQL literals: per-request values are named bind parameters. Columns come back
converted as an ORM load would (the columns' own result processors: aware UTC datetimes on SQLite
too), except JSON columns cast to text in the select, which `loads` parses (orjson; the standard
library for what orjson refuses, such as NaN that SQLite kept)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio.to_thread
import orjson
import psycopg
from anyio import CapacityLimiter
from fastapi import Request, Response
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import BindParameter, Select, literal_column
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.visitors import replacement_traverse

from app.db import UTCDateTime

Bind = Engine | Connection
READ_THREADS = 8
READ_CONNECTIONS = 4  # per API process: the reads are short, and the machine's cores are the bound


def dumps(body: Any) -> bytes:
    """`body` (plain data, aware datetimes) as the API's JSON: UTC times end in Z, as pydantic writes them."""
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def json_response(body: Any, status_code: int = 200) -> Response:
    return Response(body if isinstance(body, bytes) else dumps(body), status_code=status_code,
                    media_type="application/json")


def loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _inline(stmt: Select[*tuple[Any, ...]], dialect: Dialect) -> Select[*tuple[Any, ...]]:
    """`stmt` with its bound constants (a status compared with, a number) written into the SQL as
    literals: the driver then converts only the request's own values on every execution."""
    def literal(element: Any) -> Any:
        if isinstance(element, BindParameter) and element.value is not None and element.callable is None:
            render = element.type.dialect_impl(dialect).literal_processor(dialect)
            if render is not None:
                return literal_column(render(element.value), type_=element.type)
        return None

    return replacement_traverse(stmt, {}, literal)  # type: ignore[call-overload,no-any-return]


class _Compiled:
    def __init__(self, stmt: Select[*tuple[Any, ...]], dialect: Dialect) -> None:
        compiled = _inline(stmt, dialect).compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = list(compiled.positiontup or []) if compiled.positional else None
        self.defaults = {k: v.value for k, v in compiled.binds.items() if v.value is not None}  # (SQLite's OFFSET)
        binds = {k: b.type.dialect_impl(dialect).bind_processor(dialect) for k, b in compiled.binds.items()}
        self.bind_processors = {k: p for k, p in binds.items() if p is not None}
        self.types = [c.type for c in stmt.selected_columns]
        self.dialect = dialect
        # (column, processor) from the first result; `native`: for the read pool's connections, whose
        # time zone is UTC, so that timestamps come back as the UTC datetimes UTCDateTime would make.
        self.processors: dict[bool, list[tuple[int, Any]]] = {}

    def params(self, given: dict[str, Any]) -> Any:
        values = {**self.defaults, **given}
        for k, p in self.bind_processors.items():
            values[k] = p(values[k])
        return values if self.positional is None else tuple(values[k] for k in self.positional)

    def convert(self, raw: Sequence[Any], description: Callable[[], Any], native: bool = False) -> list[Any]:
        """Rows with the columns that have a result processor converted (only the first result's
        description is read: building it costs more than the rows of a small page)."""
        processors = self.processors.get(native)
        if processors is None:
            processors = self.processors[native] = [
                (i, p) for i, (t, d) in enumerate(zip(self.types, description(), strict=True))
                if not (native and isinstance(t, UTCDateTime))
                and (p := t.dialect_impl(self.dialect).result_processor(self.dialect, d[1]))]
        if not processors:
            return list(raw)
        rows = [list(r) for r in raw]
        for row in rows:
            for i, p in processors:
                row[i] = p(row[i])
        return rows


class Query:
    """A SELECT with named bind parameters (`bindparam("user_id")`), compiled once per dialect."""

    def __init__(self, stmt: Select[*tuple[Any, ...]]) -> None:
        self.stmt = stmt
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        c = self._compiled.get(dialect.name)
        if c is None:
            c = self._compiled[dialect.name] = _Compiled(self.stmt, dialect)
        return c

    def rows(self, bind: Bind, params: dict[str, Any]) -> list[Any]:
        """Synchronously, on a connection of `bind`'s pool (or on the connection given)."""
        c = self.compiled(bind.dialect)
        if isinstance(bind, Connection):
            result = bind.exec_driver_sql(c.sql, c.params(params))
            description = result.cursor.description
            return c.convert([tuple(r) for r in result.all()], lambda: description)
        conn = bind.raw_connection()
        try:
            cur = conn.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cur.execute(c.sql, c.params(params))
                return c.convert(cur.fetchall(), lambda: cur.description)
            finally:
                cur.close()
        except BaseException:
            conn.invalidate()  # a dropped connection most likely: the next checkout gets a fresh one
            raise
        finally:
            conn.close()


class _Pipeline:
    """The reads issued in one pass of the event loop, sent to PostgreSQL together on one pooled
    connection in pipeline mode: one round trip for all of them. Under load a worker has dozens of
    requests in flight, and the round trip (the wait, two context switches and the server's work
    per statement) costs several times the Python work of a read on a small machine; one request
    alone waits for nothing (the batch starts as soon as the loop has run what was ready)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.pending: list[tuple[_Compiled, dict[str, Any], asyncio.Future[list[Any]]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, c: _Compiled, params: dict[str, Any]) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._start)
        self.pending.append((c, params, future))
        return future

    def _start(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.tasks.add(task)  # (a reference until it is done)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[_Compiled, dict[str, Any], asyncio.Future[list[Any]]]]) -> None:
        reads = []
        for c, given, future in batch:
            try:
                reads.append((c, c.params(given), future))
            except Exception as e:  # a value its column refuses: that read alone fails
                _settle(future, error=e)
        if not reads:
            return
        try:
            async with self.pool.connection() as conn:
                if len(reads) == 1:
                    c, params, future = reads[0]
                    cur = await conn.execute(c.sql, params, binary=True)
                    _settle(future, c.convert(await cur.fetchall(), lambda: cur.description, native=True))
                    return
                try:
                    async with conn.pipeline():
                        curs = [await conn.execute(c.sql, params, binary=True) for c, params, _ in reads]
                except psycopg.Error:
                    curs = None  # one of them failed (and aborted the rest): each on its own below
                for i, (c, params, future) in enumerate(reads):
                    try:
                        cur = curs[i] if curs is not None else await conn.execute(c.sql, params, binary=True)
                        rows = c.convert(await cur.fetchall(), lambda: cur.description, native=True)  # noqa: B023
                        _settle(future, rows)
                    except Exception as e:
                        _settle(future, error=e)
        except Exception as e:  # no connection: every read of the batch fails with the reason
            for _, _, future in reads:
                _settle(future, error=e)


def _done(rows: list[Any] | None = None, error: Exception | None = None) -> asyncio.Future[list[Any]]:
    future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    _settle(future, rows, error)
    return future


def _settle(future: asyncio.Future[list[Any]], rows: list[Any] | None = None, error: Exception | None = None) -> None:
    if future.done():  # (cancelled meanwhile)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(rows or [])


class ReadDb:
    """Where the polled reads run (see the module docstring). The pool's connections belong to the
    event loop that opened it, as does this object."""

    def __init__(self, bind: Bind, pool: AsyncConnectionPool | None = None) -> None:
        self.bind, self.dialect = bind, bind.dialect
        self.pipeline = None if pool is None else _Pipeline(pool)
        self._limiter: CapacityLimiter | None = None  # made on first use: it needs the running loop

    def rows(self, query: Query, **params: Any) -> Awaitable[list[Any]]:
        """The rows, to await. On PostgreSQL a future of the pipeline: `asyncio.gather` of several
        reads then makes no task per read (a task costs about as much CPU as the read's own work)."""
        if any(isinstance(v, str) and "\x00" in v for v in params.values()):
            return _done([])  # no stored name holds one, and PostgreSQL refuses it in a statement
        if self.pipeline is not None:
            return self.pipeline.submit(query.compiled(self.dialect), params)
        if isinstance(self.bind, Connection):
            try:
                return _done(query.rows(self.bind, params))
            except Exception as e:
                return _done(error=e)
        return asyncio.ensure_future(self._in_thread(query, params))

    async def _in_thread(self, query: Query, params: dict[str, Any]) -> list[Any]:
        if self._limiter is None:  # at most READ_THREADS at once: more only contend for the GIL
            self._limiter = CapacityLimiter(READ_THREADS)
        return await anyio.to_thread.run_sync(query.rows, self.bind, params, limiter=self._limiter)

    async def first(self, query: Query, **params: Any) -> Any:
        rows = await self.rows(query, **params)
        return rows[0] if rows else None


async def open_pool(bind: Bind) -> AsyncConnectionPool | None:
    """The async connections for reads, when `bind` is a PostgreSQL engine (None otherwise)."""
    if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
        return None
    conninfo = bind.url.set(drivername="postgresql").render_as_string(hide_password=False)
    pool = AsyncConnectionPool(conninfo, min_size=READ_CONNECTIONS, max_size=READ_CONNECTIONS,
                               kwargs={"autocommit": True}, configure=_configure, open=False, name="llmtuner-reads")
    await pool.open(wait=False)  # connections are made in the background; a read waits for the first
    return pool


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # SETs rather than the `options` connection parameter, which would replace the URL's own (a
    # search_path, say).
    await conn.execute("SET TIME ZONE 'UTC'")
    # Every read is a keyed lookup whose best plan does not depend on the values, and psycopg
    # prepares it after a few runs: plan it once per connection. Left to choose, PostgreSQL plans a
    # page read (`LIMIT $n`, whose generic plan it rates costlier) again on every run: 30 µs of its
    # CPU per job list.
    await conn.execute("SET plan_cache_mode = force_generic_plan")


def read_db(request: Request) -> ReadDb:
    state = request.app.state
    db: ReadDb | None = getattr(state, "read_db", None)
    if db is None:  # an app whose lifespan did not run: no pool, sync reads
        db = state.read_db = ReadDb(state.sessionmaker.kw["bind"])
    return db
