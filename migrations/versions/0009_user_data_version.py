"""users.data_version: a counter that every committed write to the user's jobs, endpoints (and
their adapters), evaluations, events or usage days moves on (database triggers), for app/user_cache.py

Revision ID: 0009_user_data_version
Revises: 0008_job_cost_days

The triggers are the contract: any write, through the app or not, moves the counter in the same
transaction. On PostgreSQL they are deferred constraint triggers, so the users row is locked only
while the transaction commits, after all of its other writes: two transactions that wrote the same
user's rows in different orders never wait on each other for it. On SQLite a writer holds the whole
database, so plain triggers do. A later migration that recreates one of these tables on SQLite (a
batch operation that copies the table) drops its triggers and must create them again:
tests/core/test_user_cache.py checks each table moves the counter.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_user_data_version"
down_revision: str | None = "0008_job_cost_days"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("training_jobs", "endpoints", "endpoint_adapters", "evaluations", "events", "job_cost_days")
PG_FUNCTION = """
CREATE FUNCTION llmtuner_bump_data_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE users SET data_version = data_version + 1 WHERE id = OLD.user_id;
    ELSE
        UPDATE users SET data_version = data_version + 1 WHERE id = NEW.user_id;
    END IF;
    RETURN NULL;
END $$"""


def upgrade() -> None:
    op.add_column("users", sa.Column("data_version", sa.BigInteger(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for table in TABLES:
            op.execute(f"CREATE CONSTRAINT TRIGGER {table}_data_version AFTER INSERT OR UPDATE OR DELETE "
                       f"ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                       "EXECUTE FUNCTION llmtuner_bump_data_version()")
        return
    for table in TABLES:
        for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            op.execute(f"CREATE TRIGGER {table}_data_version_{event.lower()} AFTER {event} ON {table} "
                       f"BEGIN UPDATE users SET data_version = data_version + 1 WHERE id = {row}.user_id; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_data_version ON {table}")
        op.execute("DROP FUNCTION llmtuner_bump_data_version()")
    else:
        for table in TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_data_version_{event}")
    # Not a batch operation: on SQLite that rebuilds the table, and dropping the old users table, with
    # foreign keys on, deletes every row that references it. SQLite (3.35+) drops a column in place.
    op.drop_column("users", "data_version")
