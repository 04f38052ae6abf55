"""training job names unique per user, not across users

Revision ID: 0005_job_names_per_user
Revises: 0004_endpoint_adapters
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0005_job_names_per_user"
down_revision: str | None = "0004_endpoint_adapters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_training_jobs_job_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_training_jobs_user_id"), ["user_id", "job_name"])


def downgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_training_jobs_user_id"), type_="unique")
        batch_op.create_unique_constraint("uq_training_jobs_job_name", ["job_name"])
