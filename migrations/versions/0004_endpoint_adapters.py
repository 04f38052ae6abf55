"""endpoint adapters (many LoRA adapters on one base-model endpoint) and inference records

Revision ID: 0004_endpoint_adapters
Revises: 0003_worker_leases
Create Date: 2026-12-07 04:50:56.470200
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = '0004_endpoint_adapters'
down_revision: str | None = '0003_worker_leases'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('endpoint_adapters',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('endpoint_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('registered_model_id', sa.String(length=36), nullable=True),
    sa.Column('model_uri', sa.String(length=1024), nullable=False),
    sa.Column('base_model', sa.String(length=255), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('detached_at', app.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_endpoint_adapters_endpoint_id_endpoints'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['training_jobs.id'], name=op.f('fk_endpoint_adapters_job_id_training_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_endpoint_adapters_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_endpoint_adapters'))
    )
    with op.batch_alter_table('endpoint_adapters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_endpoint_adapters_endpoint_id'), ['endpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_endpoint_adapters_user_id'), ['user_id'], unique=False)

    op.create_table('inference_records',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=False),
    sa.Column('endpoint_id', sa.String(length=36), nullable=False),
    sa.Column('adapter', sa.String(length=63), nullable=True),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('route', sa.String(length=32), nullable=False),
    sa.Column('api_key_id', sa.String(length=36), nullable=True),
    sa.Column('streamed', sa.Boolean(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['endpoint_id'], ['endpoints.id'], name=op.f('fk_inference_records_endpoint_id_endpoints'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_inference_records_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inference_records'))
    )
    with op.batch_alter_table('inference_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inference_records_endpoint_id'), ['endpoint_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_records_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('inference_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inference_records_user_id'))
        batch_op.drop_index(batch_op.f('ix_inference_records_endpoint_id'))

    op.drop_table('inference_records')
    with op.batch_alter_table('endpoint_adapters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_endpoint_adapters_user_id'))
        batch_op.drop_index(batch_op.f('ix_endpoint_adapters_endpoint_id'))

    op.drop_table('endpoint_adapters')
