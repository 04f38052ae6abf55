"""jobs keep their latest metrics; indexes for the job and endpoint lists and a job's metric points
(replacing the single-column ones)

Revision ID: 0007_dashboard_reads
Revises: 0006_endpoint_names_per_user
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_dashboard_reads"
down_revision: str | None = "0006_endpoint_names_per_user"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("latest_metrics", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.create_index("ix_training_jobs_user_id_created_at", ["user_id", "created_at", "id"])
        batch_op.drop_index("ix_training_jobs_user_id")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.alter_column("latest_metrics", server_default=None)
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.create_index("ix_endpoints_user_id_created_at", ["user_id", "created_at", "id"])
        batch_op.drop_index("ix_endpoints_user_id")
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_job_metrics_job_id_id", ["job_id", "id"])
        batch_op.drop_index("ix_job_metrics_job_id")
    _backfill_latest_metrics()


def _backfill_latest_metrics() -> None:
    """Each job's last value of each metric, from its recorded points (the newest point wins)."""
    bind = op.get_bind()
    jobs = sa.table("training_jobs", sa.column("id", sa.String), sa.column("latest_metrics", sa.JSON))
    points = sa.table("job_metrics", sa.column("id", sa.Integer), sa.column("job_id", sa.String),
                      sa.column("metric_name", sa.String), sa.column("value", sa.Float))
    last = sa.select(sa.func.max(points.c.id)).group_by(points.c.job_id, points.c.metric_name)
    latest: dict[str, dict[str, float]] = {}
    rows = bind.execute(sa.select(points.c.job_id, points.c.metric_name, points.c.value)
                        .where(points.c.id.in_(last)).order_by(points.c.id))
    for job_id, name, value in rows:
        latest.setdefault(job_id, {})[name] = value
    for job_id, metrics in latest.items():
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(latest_metrics=metrics))


def downgrade() -> None:
    with op.batch_alter_table("job_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_job_metrics_job_id", ["job_id"])
        batch_op.drop_index("ix_job_metrics_job_id_id")
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.create_index("ix_endpoints_user_id", ["user_id"])
        batch_op.drop_index("ix_endpoints_user_id_created_at")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_training_jobs_user_id", ["user_id"])
        batch_op.drop_index("ix_training_jobs_user_id_created_at")
        batch_op.drop_column("latest_metrics")
