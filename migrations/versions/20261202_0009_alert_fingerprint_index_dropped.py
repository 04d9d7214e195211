"""alerts are no longer indexed by fingerprint

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 16:20:00

The index on (fingerprint, status) served one statement: a resolved alert marking the firing
alerts it names. Every alert stored paid for it: a storm's alerts land at random places in
that index (one page each, written to the WAL at each group commit and again by the
checkpoint on SQLite), and dropping it made arrays of 1,000 alerts 22 % faster on SQLite
(17,600 -> 21,800 alerts/s) and 10 % on PostgreSQL (19,500-20,100 -> 21,700-22,100) on the
2-core bench machine. A resolution now reads the incident's firing alerts by the index on
(incident_id, received_at), once per incident and ingest group for all the group's resolved
alerts (`app.alerts.service._stored_firing`): its cost grows with the incident's alerts
(about 20 ms at 100,000 on SQLite), once per group rather than once per resolved alert.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_alert_fingerprint_status", table_name="alert")


def downgrade() -> None:
    op.create_index("ix_alert_fingerprint_status", "alert", ["fingerprint", "status"])
