"""ingest_keys_unchanged() looks each key up by its primary key (PostgreSQL)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 00:00:00

PL/pgSQL keeps a generic plan of the function's query per connection, made once it has run
a few times. Made while the tables were small (a new database in its first minutes of a
storm), that plan joined the keys by hashing the whole of `alert_key` and `incident`, and
kept doing so as they grew: a third of the ingest connection's CPU on the server. Each key is
now looked up in a LATERAL subquery with LIMIT 1, which the planner cannot flatten into a
join, so every plan probes the two primary keys once per key. What the function decides is
unchanged.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACE = """
CREATE OR REPLACE FUNCTION ingest_keys_unchanged(kinds text[], keys text[], incidents text[],
                                                 states text[], severities text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- A key remembered as leading nowhere has '' for its incident, state and severity.
    IF EXISTS (
        SELECT 1
        FROM unnest(kinds, keys, incidents, states, severities)
             AS c(kind, key, incident_id, state, severity)
        LEFT JOIN LATERAL (
            SELECT i.id, i.state, i.severity
            FROM alert_key AS k JOIN incident AS i ON i.id = k.incident_id
            WHERE k.key = c.key AND k.kind = c.kind AND i.state <> 'closed'
            LIMIT 1
        ) AS f ON true
        WHERE (coalesce(f.id, ''), coalesce(f.state, ''), coalesce(f.severity, ''))
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
    op.execute(REPLACE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The function as migration 0011 made it, from that migration's own module.
    script = op.get_context().script
    assert script is not None  # run by Alembic's environment (migrations/env.py)
    made = script.get_revision("0011")
    assert made is not None
    op.execute(made.module.CREATE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
