"""ended jobs' cost per user and UTC day of creation (what a usage report sums), an index for a
user's active jobs, and each job's newest metric point id

Revision ID: 0008_job_cost_days
Revises: 0007_dashboard_reads
"""
from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op

revision: str = "0008_job_cost_days"
down_revision: str | None = "0007_dashboard_reads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = ("Completed", "Failed", "Stopped")


def upgrade() -> None:
    days = op.create_table(
        "job_cost_days",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_job_cost_days_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_job_cost_days")),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_training_jobs_user_id_status", ["user_id", "status"])
        batch_op.add_column(sa.Column("last_metric_id", sa.Integer(), nullable=True))
    _backfill(days)
    op.execute("UPDATE training_jobs SET last_metric_id = "
               "(SELECT max(job_metrics.id) FROM job_metrics WHERE job_metrics.job_id = training_jobs.id)")


def _backfill(days: sa.Table) -> None:
    """Each user's ended jobs summed per UTC day of creation, as app/usage/days.py keeps them."""
    jobs = sa.table("training_jobs", sa.column("user_id", sa.String), sa.column("status", sa.String),
                    sa.column("created_at", sa.DateTime(timezone=True)), sa.column("actual_cost", sa.Float),
                    sa.column("billable_seconds", sa.BigInteger), sa.column("price_per_hour", sa.Float))
    totals: dict[tuple[str, object], list[float]] = {}
    for uid, created, actual, seconds, price in op.get_bind().execute(
            sa.select(jobs.c.user_id, jobs.c.created_at, jobs.c.actual_cost, jobs.c.billable_seconds,
                      jobs.c.price_per_hour).where(jobs.c.status.in_(ENDED))):
        day = (created.astimezone(UTC) if created.tzinfo else created).date()  # SQLite's naive ones are UTC
        cost = actual if actual is not None else round((seconds or 0) * (price or 0.0) / 0.36) / 10000
        t = totals.setdefault((uid, day), [0, 0.0])
        t[0], t[1] = t[0] + 1, t[1] + cost
    if totals:
        op.bulk_insert(days, [{"user_id": u, "day": d, "jobs": int(n), "cost": c} for (u, d), (n, c) in totals.items()])


def downgrade() -> None:
    # Not a batch operation: on SQLite that rebuilds the table, and dropping the old one, with foreign
    # keys on, deletes its jobs' metric points. SQLite (3.35+) drops a column in place.
    op.drop_index("ix_training_jobs_user_id_status", table_name="training_jobs")
    op.drop_column("training_jobs", "last_metric_id")
    op.drop_table("job_cost_days")
