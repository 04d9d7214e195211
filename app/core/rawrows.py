"""Rows read straight into JSON, for list endpoints.

SQLAlchemy's result processing parses every SQLite datetime text into a `datetime` and every
JSON text into Python objects, only for the response to format them back into the same text;
building a dict per row from raw values instead still cost a third of a listing's CPU (1,450
values and 400 datetimes in a page of 50 incidents). Here the database writes each row as
one JSON object (`json_objects`), which the response embeds as it is: datetimes as the
RFC 3339 text pydantic and `dumps_utc` write (`T`, microseconds only when not zero, `Z`),
JSON columns as JSON, booleans as booleans. `row_function` serves the driver's whole-row
reads (`app.core.bulk.select_rows`), which need Python values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.core.types import UTCDateTime

Convert = Callable[[Any], Any]


def sqlite_time_sql(ref: str) -> str:
    """SQL turning SQLite's stored `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) into the response's
    text. Another spelling (a value some other tool wrote) goes through SQLite's own date
    functions: the same instant in UTC, to the millisecond."""
    return (f"CASE WHEN length({ref}) = 26 AND substr({ref}, 11, 1) = ' ' "
            f"THEN substr({ref}, 1, 10) || 'T' || CASE WHEN substr({ref}, 20) = '.000000' "
            f"THEN substr({ref}, 12, 8) ELSE substr({ref}, 12) END || 'Z' "
            f"WHEN length({ref}) = 19 AND substr({ref}, 11, 1) = ' ' "
            f"THEN substr({ref}, 1, 10) || 'T' || substr({ref}, 12) || 'Z' "
            f"ELSE strftime('%Y-%m-%dT%H:%M:%fZ', {ref}) END")


def postgresql_time_sql(ref: str) -> str:
    """The same for a PostgreSQL timestamptz."""
    utc = f"({ref} AT TIME ZONE 'UTC')"
    return (f"CASE WHEN date_trunc('second', {ref}) = {ref} "
            f"THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            f"ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END")


_DIALECTS: dict[str, Any] = {
    "sqlite": sqlite.dialect(),  # type: ignore[no-untyped-call]
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
}


@functools.cache
def json_objects(table: sa.Table, names: tuple[str, ...], dialect: str) -> Any:
    """A select-list item holding each row of `table` as one JSON object of the columns
    `names` (keys in that order), as text. The statement must name `table` in its FROM."""
    quote = _DIALECTS[dialect].identifier_preparer
    sqlite_ = dialect == "sqlite"
    pairs = []
    for name in names:
        column = table.c[name]
        ref = f"{quote.format_table(table)}.{quote.format_column(column)}"
        kind = column.type
        value = ref
        if isinstance(kind, UTCDateTime):
            value = sqlite_time_sql(ref) if sqlite_ else postgresql_time_sql(ref)
        elif isinstance(kind, sa.JSON) and sqlite_:
            value = f"json({ref})"  # stored as text: embedded as JSON, not as a string
        elif isinstance(kind, sa.Boolean) and sqlite_:  # stored as 0 or 1
            value = f"json(CASE WHEN {ref} THEN 'true' WHEN NOT {ref} THEN 'false' END)"
        pairs.append(f"'{name}', {value}")
    if len(pairs) > 50:
        raise ValueError("json_build_object takes at most 100 arguments")
    if sqlite_:
        return sa.literal_column(f"json_object({', '.join(pairs)})", sa.String())
    return sa.literal_column(f"json_build_object({', '.join(pairs)})::text", sa.String())


def row_function(names: Sequence[str], converters: Sequence[tuple[int, Convert]], *,
                 skip_none: bool = False) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """`lambda r: {"id": r[0], "created_at": c3(r[3]), ...}`, written out once per column
    list: a loop over the columns of every row cost more than the database's own work.
    `skip_none`: None is kept as it is rather than given to its converter."""
    by_index = dict(converters)
    scope = {f"c{i}": convert for i, convert in by_index.items()}
    items = []
    for i, name in enumerate(names):
        value = f"r[{i}]"
        if i in by_index:
            value = f"None if r[{i}] is None else c{i}(r[{i}])" if skip_none else f"c{i}(r[{i}])"
        items.append(f"{name!r}: {value}")
    return eval(f"lambda r: {{{', '.join(items)}}}", scope)  # type: ignore[no-any-return]
