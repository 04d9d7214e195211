"""ingest_keys_unchanged(): the ingest writer's check of the alert keys it remembers (PostgreSQL)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 21:00:00

A group of alerts first looked its keys up (one round trip), then wrote (another). The
writer now remembers what the keys led to, and a group whose every alert attaches to a
remembered open incident is written in one round trip: this function runs first in it,
after the ingest lock, and fails the whole transaction (SQLSTATE CF001) if any key no longer
leads where the writer remembers (an incident closed or assessed meanwhile, another writer's
new key), so nothing is written on a stale memory; the writer then forgets and writes the
group the long way. SQLite needs none of it: its statements cost no round trip.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE = """
CREATE FUNCTION ingest_keys_unchanged(kinds text[], keys text[], incidents text[],
                                      states text[], severities text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- A key remembered as leading nowhere has '' for its incident, state and severity.
    IF EXISTS (
        SELECT 1
        FROM unnest(kinds, keys, incidents, states, severities)
             AS c(kind, key, incident_id, state, severity)
        LEFT JOIN alert_key AS k ON k.key = c.key AND k.kind = c.kind
        LEFT JOIN incident AS i ON i.id = k.incident_id AND i.state <> 'closed'
        WHERE (coalesce(i.id, ''), coalesce(i.state, ''), coalesce(i.severity, ''))
              IS DISTINCT FROM (c.incident_id, c.state, c.severity)
    ) THEN
        RAISE EXCEPTION 'alert keys changed since the ingest writer read them'
            USING ERRCODE = 'CF001';
    END IF;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION ingest_keys_unchanged(text[], text[], text[], text[], text[])")
