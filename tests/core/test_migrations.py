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


def test_downgrading_the_latest_migrations_keeps_the_data(tmp_path: Path) -> None:
    """On SQLite a batch operation rebuilds a table and drops the old one, and with foreign keys on
    (as the app's engine sets them) dropping a parent deletes every child row: a downgrade must not."""
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
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # type: ignore[assignment]
    command.downgrade(cfg, "0007_dashboard_reads")
    engine = make_engine(url)
    with engine.connect() as conn:
        counts = [conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() for t in ("users", "training_jobs",
                                                                                       "job_metrics")]
    engine.dispose()
    assert counts == [1, 1, 1]
    migrate(url)  # and up again
