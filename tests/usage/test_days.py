"""The ended jobs' cost per user and day (app/usage/days.py): recomputed from the jobs, idempotent,
exact when two transactions end jobs of one day at once, and filled in by the migration (with each
job's newest metric point)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.auth.models import User
from app.db import make_engine, new_id
from app.statuses import JobStatus
from app.training.models import TrainingJob
from app.training.reconcile import _end
from app.usage import days
from app.usage.days import JobCostDay
from tests.conftest import ROOT, migrate
from tests.settings import SECRET_ENV

DAY = datetime(2026, 11, 3, 23, 30, tzinfo=UTC)  # late on the 3rd: a day's edge in UTC


def user(s: Session) -> str:
    uid = new_id()
    s.add(User(id=uid, username=f"u-{uid[:8]}", email=f"{uid[:8]}@example.com", password_hash="x"))
    s.flush()
    return uid


def job(s: Session, uid: str, status: str, created: datetime, actual: float | None = None,
        billable: int = 0, price: float = 0.0) -> TrainingJob:
    j = TrainingJob(job_name=f"j-{new_id()[:8]}", user_id=uid, base_model="llmtuner/tiny-llama", hyperparameters={},
                    instance_type="ml.g5.xlarge", backend="sagemaker", backend_handle={}, status=status,
                    secondary_status=status, created_at=created, actual_cost=actual, billable_seconds=billable,
                    price_per_hour=price)
    s.add(j)
    s.flush()
    return j


def rows(s: Session, uid: str) -> dict[date, tuple[int, float]]:
    return {d: (n, round(c, 6)) for d, n, c in s.execute(
        select(JobCostDay.day, JobCostDay.jobs, JobCostDay.cost).where(JobCostDay.user_id == uid))}


def test_a_day_counts_its_ended_jobs_once_at_their_cost(session_factory: Any) -> None:
    with session_factory() as s:
        uid = user(s)
        job(s, uid, "Completed", DAY, actual=1.5)
        job(s, uid, "Failed", DAY.replace(hour=0), billable=3600, price=2.0)  # no actual cost: 1 h x $2
        job(s, uid, "InProgress", DAY, billable=3600, price=2.0)  # active: not a day's row
        job(s, uid, "Stopped", DAY + timedelta(hours=1), actual=0.25)  # the 4th in UTC
        days.refresh(s, uid, DAY)
        days.refresh(s, uid, DAY)  # again: the same row
        days.refresh(s, uid, DAY + timedelta(hours=1))
        expected = {date(2026, 11, 3): (2, 3.5), date(2026, 11, 4): (1, 0.25)}
        assert rows(s, uid) == expected
        days.rebuild(s)
        assert rows(s, uid) == expected


def test_the_worker_ending_a_job_counts_it(session_factory: Any) -> None:
    with session_factory() as s:
        uid = user(s)
        j = job(s, uid, "InProgress", DAY, billable=1800, price=2.0)
        _end(s, j, JobStatus.COMPLETED, None, None)
        s.commit()
        assert rows(s, uid) == {date(2026, 11, 3): (1, 1.0)}


def test_two_transactions_ending_jobs_of_one_day_count_both(engine: Any) -> None:
    """The second refresh waits on the day's row while the first transaction is open, then counts
    what the first committed: neither overwrites the other with a count that misses a job."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's (SQLite has one writer at a time)")
    with Session(engine) as s:
        uid = user(s)
        first, second = (job(s, uid, "InProgress", DAY, billable=3600, price=1.0).id for _ in range(2))
        s.commit()
    one, two = Session(engine), Session(engine)
    try:
        _end(one, one.get(TrainingJob, first), JobStatus.COMPLETED, None, None)  # holds the day's row
        waiting = threading.Thread(target=lambda: (
            _end(two, two.get(TrainingJob, second), JobStatus.COMPLETED, None, None), two.commit()))
        waiting.start()
        with engine.connect() as watch:  # until the second transaction waits for the first's lock
            for _ in range(2000):
                if watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND datname = current_database()")).scalar():
                    break
                threading.Event().wait(0.005)
            else:
                pytest.fail("the second refresh never waited on the first")
        one.commit()
        waiting.join(timeout=30)
        with Session(engine) as s:
            assert rows(s, uid) == {date(2026, 11, 3): (2, 2.0)}
    finally:
        one.close(), two.close()
        with Session(engine) as s:
            s.delete(s.get(User, uid))
            s.commit()


def test_the_migration_fills_the_days_from_the_jobs_there(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # type: ignore[assignment]
    command.upgrade(cfg, "0007_dashboard_reads")
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("INSERT INTO users (id, username, email, password_hash, is_admin, created_at) "
               "VALUES ('u1', 'u1', 'u1@example.com', 'x', 0, '2026-11-01 00:00:00')")
    for i, (status, created, actual, billable) in enumerate([
            ("Completed", "2026-11-03 23:30:00.000000", 1.5, 0),
            ("Failed", "2026-11-03 01:00:00.000000", None, 3600),  # no actual cost: 1 h x $2
            ("InProgress", "2026-11-03 02:00:00.000000", None, 60),
            ("Stopped", "2026-11-04 00:10:00.000000", 0.25, 0)]):
        db.execute(
            "INSERT INTO training_jobs (id, job_name, user_id, base_model, hyperparameters, instance_type, "
            "validation_split, backend, backend_handle, status, secondary_status, stop_requested, created_at, "
            "billable_seconds, price_per_hour, estimated_cost, actual_cost, progress, final_metrics, data, "
            "latest_metrics) VALUES (?, ?, 'u1', 'b', '{}', 'ml.g5.xlarge', 0.1, 'sagemaker', '{}', ?, ?, 0, ?, ?, "
            "2.0, 0, ?, '{}', '{}', '{}', '{}')", (f"j{i}", f"j{i}", status, status, created, billable, actual))
    for point in (7, 9):
        db.execute("INSERT INTO job_metrics (id, job_id, metric_name, value, timestamp) "
                   "VALUES (?, 'j0', 'train_loss', 1.0, '2026-11-03 23:31:00.000000')", (point,))
    db.commit()
    db.close()
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    with Session(engine) as s:
        assert rows(s, "u1") == {date(2026, 11, 3): (2, 3.5), date(2026, 11, 4): (1, 0.25)}
        # and each job's newest metric point (app/training/reads.py: the metrics read)
        assert s.get(TrainingJob, "j0").last_metric_id == 9 and s.get(TrainingJob, "j1").last_metric_id is None
    engine.dispose()


def test_the_rebuild_command_counts_jobs_written_some_other_way(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restored.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as s:
        uid = user(s)
        job(s, uid, "Completed", DAY, actual=1.25)  # as a restore writes it: no day row
        s.commit()
    env = {**os.environ, **SECRET_ENV, "LLMTUNER_DATABASE_URL": url, "LLMTUNER_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "app.usage.days"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with Session(engine) as s:
        assert rows(s, uid) == {date(2026, 11, 3): (1, 1.25)}
    engine.dispose()
