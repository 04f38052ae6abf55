"""`alembic upgrade head` on an empty database gives exactly the models' schema (no drift)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import app.models_registry  # noqa: F401
from app.db import Base


def test_migrated_schema_matches_the_models(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_every_table_is_migrated_and_names_follow_the_convention(engine):
    insp = inspect(engine)
    assert set(Base.metadata.tables) <= set(insp.get_table_names())
    for table in Base.metadata.tables:
        pk = insp.get_pk_constraint(table)["name"]
        assert pk in (f"pk_{table}", None)  # SQLite does not name primary keys
        for fk in insp.get_foreign_keys(table):
            assert fk["name"] is None or fk["name"].startswith(f"fk_{table}_")
