"""identifiers compare byte by byte, whatever the database's locale (PostgreSQL)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 03:20:00

A text column compares by the database's collation unless it names its own. A database
created under a language's locale (`en_US.UTF-8`, which the official PostgreSQL container
image and many installers use) compares every id through the C library's locale rules: a
B-tree descent costs several such comparisons, and an alert storm makes them by the million
(each alert's key, its own id and its incident's in the alert's index, each incident's row
by id for its counters). On PostgreSQL 15 (a 2-core EPYC), in databases created with
`en_US.UTF-8`, the batch benchmark (arrays of 1,000 alerts) went 6,960, 10,150 and 8,550
alerts/s before this and 11,540, 12,010 and 11,930 after (three paired runs), single alerts
1,540 and 1,840 requests/s before and 2,110 and 2,720 after (two pairs); in databases
created with `C.UTF-8` (which compares by code point) the difference was within the noise
of two pairs.

Ids, foreign ids and alert keys are machine strings: nothing sorts them for a reader, and
equality is byte equality under every collation here, so they take the "C" collation:
compared with `memcmp`, their indexes too. Text people read (titles, names, search text)
keeps the database's collation. A "C" column compared with a column of the database's
collation compares as "C" (a column's own collation wins over the default), so the foreign
ids of every table change together and every join between ids can still use its indexes.

Only the indexes on these columns are rebuilt (the rows are not rewritten), under a lock
that holds reads and writes of those tables meanwhile: 8.8 s for 1,000,000 incidents with
1,830,000 agency links and 2,000,000 alerts on the same machine. SQLite compares text byte
by byte already.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: (column, type), as the earlier migrations made them.
IDENTIFIERS: dict[str, list[tuple[str, str]]] = {
    "alert": [("id", "varchar(36)"), ("incident_id", "varchar(36)")],
    "alert_key": [("key", "varchar(500)"), ("kind", "varchar(8)"),
                  ("incident_id", "varchar(36)")],
    "api_key": [("id", "varchar(36)")],
    "deadline": [("id", "varchar(36)"), ("incident_id", "varchar(36)")],
    "delivery": [("id", "varchar(36)"), ("incident_id", "varchar(36)"),
                 ("subscription_id", "varchar(36)")],
    "delivery_attempt": [("id", "varchar(36)"), ("delivery_id", "varchar(36)")],
    "event": [("id", "varchar(36)"), ("incident_id", "varchar(36)")],
    "incident": [("id", "varchar(36)")],
    "incident_agency": [("incident_id", "varchar(36)")],
    "proposal": [("id", "varchar(36)"), ("incident_id", "varchar(36)")],
    "response": [("id", "varchar(36)"), ("incident_id", "varchar(36)"),
                 ("approved_proposal_id", "varchar(36)")],
    "subscription": [("id", "varchar(36)")],
    "timeline_entry": [("id", "varchar(36)"), ("incident_id", "varchar(36)")],
}


# Triggers that name a column (UPDATE OF, WHEN) block a change of its type: migration 0010's
# on incident.id. Each is dropped and made again from its own definition.
_COLUMN_TRIGGERS = ("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE tgrelid = CAST(:table AS regclass) AND NOT tgisinternal "
                    "AND (tgqual IS NOT NULL OR array_length(tgattr::int2[], 1) > 0)")


def _collate(collation: str) -> None:
    bind = op.get_bind()
    for table, columns in IDENTIFIERS.items():
        triggers = bind.execute(sa.text(_COLUMN_TRIGGERS), {"table": table}).all()
        for name, _ in triggers:
            op.execute(f'DROP TRIGGER "{name}" ON "{table}"')
        changes = ", ".join(f'ALTER COLUMN "{name}" TYPE {type_} COLLATE "{collation}"'
                            for name, type_ in columns)
        op.execute(f'ALTER TABLE "{table}" {changes}')
        for _, definition in triggers:
            op.execute(definition)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _collate("C")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _collate("default")
