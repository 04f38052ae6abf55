"""`alembic upgrade head` on an empty database gives exactly the models' schema (no drift)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import app.models_registry  # noqa: F401
from app.auth.models import User
from app.db import Base, make_engine, new_id, utcnow
from app.training.models import JobMetric, TrainingJob
from tests.conftest import ROOT, migrate


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


def _alembic(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # type: ignore[assignment]
    return cfg


def _counts(url: str) -> list[int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = [int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() or 0)
                  for t in ("users", "training_jobs", "job_metrics")]
    engine.dispose()
    return counts


def test_upgrading_an_existing_database_keeps_the_data(tmp_path: Path) -> None:
    """On SQLite a batch operation rebuilds a table and drops the old one, and with foreign keys on
    (as the app's engine sets them) dropping a parent deletes every child row: 0007 rebuilds
    training_jobs, which took every metric point with it."""
    url = f"sqlite:///{tmp_path / 'up.db'}"
    command.upgrade(_alembic(url), "0006_endpoint_names_per_user")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, username, email, password_hash, is_admin, created_at) "
                             "VALUES ('u', 'old', 'old@example.com', 'x', 0, '2026-01-01 00:00:00')")
        conn.exec_driver_sql(
            "INSERT INTO training_jobs (id, job_name, user_id, base_model, hyperparameters, instance_type, "
            "validation_split, backend, backend_handle, status, secondary_status, stop_requested, created_at, "
            "billable_seconds, price_per_hour, estimated_cost, progress, final_metrics, data) VALUES ('j', 'old', "
            "'u', 'm', '{}', 'local', 0.1, 'local', '{}', 'Completed', 'Completed', 0, '2026-01-01 00:00:00', 0, "
            "0.0, 0.0, '{}', '{}', '{}')")
        conn.exec_driver_sql("INSERT INTO job_metrics (job_id, metric_name, value, timestamp) "
                             "VALUES ('j', 'train_loss', 1.0, '2026-01-01 00:00:00')")
    engine.dispose()
    migrate(url)
    assert _counts(url) == [1, 1, 1]


def test_downgrading_the_latest_migrations_keeps_the_data(tmp_path: Path) -> None:
    """The same for a downgrade (0008 and 0009 drop columns)."""
    url = f"sqlite:///{tmp_path / 'down.db'}"
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        uid, job_id = new_id(), new_id()
        conn.execute(User.__table__.insert().values(id=uid, username="keep", email="keep@example.com",
                                                    password_hash="x", is_admin=False, created_at=utcnow()))
        conn.execute(TrainingJob.__table__.insert().values(
            id=job_id, job_name="kept", user_id=uid, base_model="m", instance_type="local", backend="local",
            status="InProgress", secondary_status="Training", hyperparameters={}, backend_handle={}, progress={},
            final_metrics={}, latest_metrics={}, stop_requested=False, created_at=utcnow()))
        conn.execute(JobMetric.__table__.insert().values(job_id=job_id, metric_name="train_loss", value=1.0,
                                                         timestamp=utcnow()))
    engine.dispose()
    command.downgrade(_alembic(url), "0007_dashboard_reads")
    assert _counts(url) == [1, 1, 1]
    migrate(url)  # and up again
    assert _counts(url) == [1, 1, 1]
