"""alert_key primary key leads with the key

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 15:05:00

Ingestion looks keys up with `kind = ? AND key IN (...)`. With `kind` first, PostgreSQL
planned that as a scan of every key of the kind whenever its statistics were older than the
table's growth (a storm fills the table faster than autovacuum analyses it); with `key`
first the IN list is always the index condition, on SQLite too.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alert_key", schema=None) as batch_op:
        batch_op.drop_constraint("pk_alert_key", type_="primary")
        batch_op.create_primary_key("pk_alert_key", ["key", "kind"])


def downgrade() -> None:
    with op.batch_alter_table("alert_key", schema=None) as batch_op:
        batch_op.drop_constraint("pk_alert_key", type_="primary")
        batch_op.create_primary_key("pk_alert_key", ["kind", "key"])
