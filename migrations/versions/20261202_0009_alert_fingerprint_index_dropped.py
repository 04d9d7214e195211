"""alerts are no longer indexed by fingerprint

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 16:20:00

The index on (fingerprint, status) served one statement: a resolved alert marking the firing
alerts it names. Every alert stored paid for it: a storm's alerts land at random places in
that index (one page each, written to the WAL at each group commit and, on SQLite, again by
the checkpoint). Without it, arrays of 1,000 alerts went from 16,100-17,000 to 20,600-20,800
alerts/s on SQLite and from 19,700-20,400 to 21,300-21,400 on PostgreSQL (paired runs on the
2-core bench machine).

A resolution now reads the incident's firing alerts through the index on (incident_id,
received_at), once per incident and ingest group for all the group's resolved alerts
(`app.alerts.service._stored_firing`), so its cost grows with the incident's alerts. In an
incident of 100,000 alerts (`python -m bench.resolve`): one resolved alert 29 -> 32 ms on
SQLite and 5.6 -> 28 ms on PostgreSQL; 100 resolved alerts in one array 2,358 -> 51 ms on
SQLite and 116 -> 61 ms on PostgreSQL (one read instead of one statement per alert).
Adding fingerprint and status to the incident index made that read twice as fast on SQLite
but cost arrays 5-8 %, so the index stays as it is.
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
