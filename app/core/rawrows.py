"""Rows read straight into JSON-ready values, for list endpoints.

SQLAlchemy's result processing parses every SQLite datetime text into a `datetime` and every
JSON text into Python objects, only for the response to format them back into the same text:
on a page of 50 incidents that is 400 datetimes and 300 JSON documents, most of the CPU of
the request. Here a column is selected without its type's result processing and its raw
value is turned into what the JSON response holds: SQLite datetime text into the RFC 3339
text pydantic and `dumps_utc` write, JSON text into an `orjson.Fragment` embedded as is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from app.core.types import UTCDateTime

Convert = Callable[[Any], Any]


def sqlite_time_json(text: str | None) -> str | None:
    """SQLite's stored `YYYY-MM-DD HH:MM:SS.ffffff` as `dumps_utc` writes the datetime
    (`T`, microseconds only when not zero, `Z`)."""
    if text is None:
        return None
    if len(text) == 26 and text[10] == " " and text[19] == ".":
        if text.endswith(".000000"):
            return f"{text[:10]}T{text[11:19]}Z"
        return f"{text[:10]}T{text[11:]}Z"
    # Any other spelling (a value some other tool wrote): the slow, general way.
    return time_json(datetime.fromisoformat(text).replace(tzinfo=UTC))


def time_json(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    text: str = orjson.dumps(value, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return text


def _fragment(text: str | None) -> Any:
    return None if text is None else orjson.Fragment(text)


def _boolean(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class RawColumns:
    """The select list for some columns of a table, and how a raw row becomes JSON."""

    selected: tuple[Any, ...]
    row: Callable[[Sequence[Any]], dict[str, Any]]

    def rows(self, result: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        return list(map(self.row, result))


def row_function(names: Sequence[str], converters: Sequence[tuple[int, Convert]], *,
                 skip_none: bool = False) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """`lambda r: {"id": r[0], "created_at": c3(r[3]), ...}`, written out once per column
    list: a loop over the columns of every row was most of a listing's CPU after SQLite's
    own work. `skip_none`: None is kept as it is rather than given to its converter."""
    by_index = dict(converters)
    scope = {f"c{i}": convert for i, convert in by_index.items()}
    items = []
    for i, name in enumerate(names):
        value = f"r[{i}]"
        if i in by_index:
            value = f"None if r[{i}] is None else c{i}(r[{i}])" if skip_none else f"c{i}(r[{i}])"
        items.append(f"{name!r}: {value}")
    return eval(f"lambda r: {{{', '.join(items)}}}", scope)  # type: ignore[no-any-return]


@functools.cache
def raw_columns(table: sa.Table, names: tuple[str, ...], dialect: str) -> RawColumns:
    selected: list[Any] = []
    converters: list[tuple[int, Convert]] = []
    for index, name in enumerate(names):
        column = table.c[name]
        kind = column.type
        convert: Convert | None = None
        expr: Any = column
        if isinstance(kind, UTCDateTime):
            if dialect == "sqlite":
                expr, convert = sa.type_coerce(column, sa.String()), sqlite_time_json
            else:
                expr, convert = sa.type_coerce(column, sa.DateTime(timezone=True)), time_json
        elif isinstance(kind, sa.JSON):
            # PostgreSQL's jsonb as text spaces its separators; the document is the same.
            text = column if dialect == "sqlite" else sa.cast(column, sa.Text())
            expr, convert = sa.type_coerce(text, sa.String()), _fragment
        elif isinstance(kind, sa.Boolean) and dialect == "sqlite":
            expr, convert = sa.type_coerce(column, sa.Integer()), _boolean
        elif isinstance(kind, sa.Enum):
            expr = sa.type_coerce(column, sa.String())
        selected.append(expr.label(name) if expr is not column else column)
        if convert is not None:
            converters.append((index, convert))
    return RawColumns(tuple(selected), row_function(names, converters))
