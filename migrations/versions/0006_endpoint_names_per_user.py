"""endpoint names unique per user, not across users

Revision ID: 0006_endpoint_names_per_user
Revises: 0005_job_names_per_user
"""
from collections.abc import Sequence

from alembic import op

revision: str = "0006_endpoint_names_per_user"
down_revision: str | None = "0005_job_names_per_user"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_constraint("uq_endpoints_endpoint_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_endpoints_user_id"), ["user_id", "endpoint_name"])


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_endpoints_user_id"), type_="unique")
        batch_op.create_unique_constraint("uq_endpoints_endpoint_name", ["endpoint_name"])
