"""What training costs, and each user's ended jobs summed per UTC day of creation.

`JOB_COST` is the one definition of a job's cost: its actual cost once ended, else billable time x
price so far. An ended job's cost never changes, so `job_cost_days` keeps, per user and day, how
many ended jobs were created that day and what they cost: a usage report then reads a row per day
of history plus the few active jobs (app/usage/service.py), not every job the user ever ran.

A day's row is recomputed from the jobs table (`refresh`) in the transaction that ends one of its
jobs, after taking the row's lock: concurrent ends of that day's jobs serialize on the row, and the
last writer counts them all. Recomputing, rather than adding to the row, also makes a second call
for the same job harmless. `rebuild` recomputes every row (after jobs were written some other way).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Date, Float, ForeignKey, Integer, String, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.db import Base
from app.statuses import JOB_ENDED
from app.training.models import TrainingJob

J = TrainingJob
# Rounded to 4 decimals as cost.actual rounds an actual cost, in floating point (a NUMERIC cast
# and round per job cost PostgreSQL 4x more on a usage read).
JOB_COST = case((and_(or_(*(J.status == s.value for s in JOB_ENDED)), J.actual_cost.is_not(None)), J.actual_cost),
                else_=func.round(J.billable_seconds * J.price_per_hour / 0.36) / 10000.0)


class JobCostDay(Base):
    __tablename__ = "job_cost_days"

    user_id: Mapped[str] = mapped_column(String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)  # the UTC day the jobs were created
    jobs: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)


class UTCDay(FunctionElement[date]):
    """`UTCDay(column)`: the UTC calendar day of a timestamp column, as a date."""

    type = Date()
    inherit_cache = True


@compiles(UTCDay, "postgresql")
def _utc_day_pg(element: UTCDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(timezone('UTC', {compiler.process(element.clauses, **kw)}) AS DATE)"


@compiles(UTCDay, "sqlite")
def _utc_day_sqlite(element: UTCDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"  # stored as naive UTC text


def refresh(session: Session, user_id: str, created_at: datetime) -> None:
    """Recompute the row of the day `created_at` falls on, inside the caller's transaction (after the
    job's own change, which this flushes)."""
    session.flush()
    day = created_at.astimezone(UTC).date()
    start = datetime.combine(day, time(), UTC)
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    # Insert the row, or lock it as it is: a concurrent refresh of this day waits here until this
    # transaction ends, and then counts (in its next statement) what this one wrote.
    session.execute(insert(JobCostDay).values(user_id=user_id, day=day, jobs=0, cost=0.0).on_conflict_do_update(
        index_elements=[JobCostDay.user_id, JobCostDay.day], set_={"jobs": JobCostDay.jobs}))
    jobs, cost = session.execute(
        select(func.count(), func.coalesce(func.sum(JOB_COST), 0.0))
        .where(J.user_id == user_id, J.status.in_(JOB_ENDED), J.created_at >= start,
               J.created_at < start + timedelta(days=1))).one()
    session.execute(update(JobCostDay).where(JobCostDay.user_id == user_id, JobCostDay.day == day)
                    .values(jobs=jobs, cost=float(cost)))


def rebuild(session: Session) -> None:
    """Recompute every row from the jobs table; the caller commits."""
    session.execute(delete(JobCostDay))
    for user_id, created_at in session.execute(
            select(J.user_id, func.min(J.created_at)).where(J.status.in_(JOB_ENDED))
            .group_by(J.user_id, UTCDay(J.created_at))).all():
        refresh(session, user_id, created_at)


if __name__ == "__main__":  # `python -m app.usage.days`: rebuild, with the app's settings
    from app.config import get_settings
    from app.db import make_engine

    engine = make_engine(get_settings().resolved_database_url)
    with Session(engine) as session:
        rebuild(session)
        session.commit()
    engine.dispose()
