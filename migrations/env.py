"""Alembic environment: the URL comes from LLMTUNER_DATABASE_URL (or -x url=..., or a given connection)."""

from __future__ import annotations

from alembic import context

import app.models_registry  # noqa: F401  (fills Base.metadata)
from app.config import Settings
from app.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or Settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = _url()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, pool_size=1)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # A batch operation rebuilds a table (copy, drop, rename), and with foreign keys on,
            # dropping the old table deletes every row that references it (a job's metric points).
            # The pragma does nothing inside a transaction: set on the driver's connection, before any.
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        _run(conn)
    engine.dispose()  # (the connection with foreign keys off goes with it)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
