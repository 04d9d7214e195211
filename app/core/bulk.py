"""Inserting many whole rows at once: one executemany on SQLite, one statement on PostgreSQL.

SQLAlchemy's executemany builds a parameter dictionary per row and calls each column's bind
processor through several layers of its execution context: for a group of a thousand alerts
that cost more than SQLite's own work of storing them. On SQLite the statement text and each
column's bind processor are looked up once per table, and every row becomes one tuple; the
conversions are SQLAlchemy's own (datetimes, JSON, enums), so rows read back exactly as if
the ORM had written them. On PostgreSQL the rows travel as one JSON document (`_document`).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import JSON_CODEC
from app.core.rawrows import row_function
from app.core.types import UTCDateTime

if TYPE_CHECKING:
    from app.core.pgpipe import Copy

Row = dict[str, Any]


@dataclass(frozen=True)
class _Plan:
    sql: str
    # A row's parameter tuple: each column's value through its bind processor, in the
    # statement's order.
    params: Callable[[Row], tuple[Any, ...]]
    head: str  # INSERT INTO t (columns) VALUES
    marks: str  # (?, ?, ...) for one row
    # PostgreSQL: INSERT INTO t (columns) SELECT columns FROM the rows as one JSON document.
    document: str = ""
    copy: str = ""  # PostgreSQL, without a suffix: COPY t (columns) FROM STDIN
    copy_types: tuple[str, ...] = ()  # the columns' types, for binary COPY (`_binary_types`)


def _row_function(columns: list[tuple[str, Callable[[Any], Any] | None]]
                  ) -> Callable[[Row], tuple[Any, ...]]:
    """`lambda row: (row["a"], p1(row["b"]), ...)`, written out once per table: a generic loop
    over the columns cost more than SQLite's own work of storing a thousand alerts."""
    processors: dict[str, Any] = {}
    values = []
    for i, (key, processor) in enumerate(columns):
        if processor is None:
            values.append(f"row[{key!r}]")
        else:
            processors[f"p{i}"] = processor
            values.append(f"p{i}(row[{key!r}])")
    return eval(f"lambda row: ({', '.join(values)},)", processors)  # type: ignore[no-any-return]


_plans: dict[tuple[str, str, str, tuple[str, ...]], _Plan] = {}


def _processor(column: sa.Column[Any], dialect: Dialect, *, copy: bool = False
               ) -> Callable[[Any], Any] | None:
    """`copy`: for rows sent by COPY (PostgreSQL), whose text format takes JSON as text."""
    impl = column.type.dialect_impl(dialect)
    if (dialect.name == "sqlite" or copy) and isinstance(impl, sa.JSON):
        # The engine's own serializer, without the wrapper's checks for SQL NULL markers that
        # plain row values never hold (None is stored as JSON null, as the wrapper does). For
        # COPY it also replaces psycopg's Jsonb wrapper, whose dumper ran the standard
        # library's json module: 3.9 against 0.7 µs an alert's labels.
        serialize: Callable[[Any], str] = JSON_CODEC["json_serializer"]
        return serialize
    return impl.bind_processor(dialect)  # type: ignore[no-any-return]


def _plan(table: sa.Table, dialect: Dialect, suffix: str, omit: tuple[str, ...] = ()) -> _Plan:
    key = (table.name, dialect.name, suffix, omit)
    plan = _plans.get(key)
    if plan is None:
        quote = dialect.identifier_preparer
        columns = [c for c in table.columns if c.key not in omit]
        target = (f"{quote.format_table(table)} "
                  f"({', '.join(quote.format_column(c) for c in columns)})")
        head = f"INSERT INTO {target} VALUES "
        marks = f"({', '.join(['?'] * len(columns))})"
        document = copy = ""
        copy_types: tuple[str, ...] = ()
        if dialect.name == "postgresql":
            _check_document_columns(table, columns)
            names = ", ".join(f"r.{quote.format_column(c)}" for c in columns)
            document = (f"INSERT INTO {target} SELECT {names} FROM json_populate_recordset("
                        f"NULL::{quote.format_table(table)}, ?::json) WITH ORDINALITY AS r "
                        f"ORDER BY r.ordinality{suffix}")
            if not suffix:  # COPY has no ON CONFLICT
                copy_types = _binary_types(columns, dialect)
                copy = f"COPY {target} FROM STDIN" + (" (FORMAT BINARY)" if copy_types else "")
        # On PostgreSQL the row tuples only ever feed COPY (statements take the document).
        copying = dialect.name == "postgresql"
        plan = _Plan(f"{head}{marks}{suffix}",
                     _row_function([(c.key, _processor(c, dialect, copy=copying))
                                    for c in columns]),
                     head, marks, document, copy, copy_types)
        _plans[key] = plan
    return plan


# PostgreSQL column types (as the dialect writes them) whose binary format psycopg writes
# from the values the bind processors give (str, bool, int, aware datetimes, and JSON already
# serialized: `pgpipe.Copy`), and which tests/test_bulk.py checks against the ORM. A table
# with any other type (a delivery's BIGINT, an attempt's FLOAT) goes by text COPY.
_BINARY_TYPES = {"TEXT": "text", "BOOLEAN": "bool", "INTEGER": "int4",
                 "TIMESTAMP WITH TIME ZONE": "timestamptz", "JSONB": "jsonb"}


def _binary_types(columns: list[sa.Column[Any]], dialect: Dialect) -> tuple[str, ...]:
    """Each column's type for binary COPY, or nothing if one of them has no known binary
    format here (the table then goes by text COPY)."""
    names = []
    for column in columns:
        written = column.type.compile(dialect)
        name = "text" if written.startswith("VARCHAR") else _BINARY_TYPES.get(written)
        if name is None:
            return ()
        names.append(name)
    return tuple(names)


async def insert_rows(session: AsyncSession, table: sa.Table, rows: Sequence[Row],
                      suffix: str = "", omit: Sequence[str] = ()) -> None:
    """Insert `rows` (each holding every column of `table` but those in `omit`, which the
    database fills) in the session's transaction. `suffix` is appended to the statement
    (an ON CONFLICT clause, say)."""
    if not rows:
        return
    db = await driver(session)
    plan = _plan(table, db.conn.dialect, suffix, tuple(omit))
    if plan.copy and len(rows) >= COPY_MIN_ROWS:
        from app.core import pgpipe  # PostgreSQL only

        await db.copy(pgpipe.Copy(plan.copy, plan.copy_types), list(map(plan.params, rows)))
        return
    if plan.document:
        await db.execute(plan.document, (_document(rows),), wait=False)
        return
    await db.execute(plan.sql, list(map(plan.params, rows)), wait=False)


_DOCUMENT: Callable[[Any], str] = JSON_CODEC["json_serializer"]
# From this many rows on, PostgreSQL takes them by COPY: it costs a round trip or two more
# than a statement in the pipeline, and far less of the server's time per row.
COPY_MIN_ROWS = 200


def _document(rows: Sequence[Row]) -> str:
    """The rows as one JSON array for PostgreSQL's json_populate_recordset: psycopg adapts
    each parameter of an executemany in Python (about 25 µs a row of an alert), orjson
    writes the whole list in a few µs a row. Values are written as they are and the server
    casts each to its column's type: JSON columns as JSON (None becomes SQL NULL, which
    reads back as None like JSON null), aware datetimes in ISO 8601 with their offset,
    enums by value."""
    return _DOCUMENT(rows)


def _check_document_columns(table: sa.Table, columns: list[sa.Column[Any]]) -> None:
    """A JSON document carries an enum by value; SQLAlchemy stores it by name. They agree
    for every enum here; a new one that did not would be stored wrongly, so refuse it."""
    for column in columns:
        if isinstance(column.type, sa.Enum) and column.type.enum_class is not None:
            members = list(column.type.enum_class)  # type: ignore[var-annotated]
            if any(m.name != m.value for m in members):
                raise TypeError(f"{table.name}.{column.key}: enum names differ from values")


async def update_rows(session: AsyncSession, table: sa.Table, rows: Sequence[Row],
                      key: str = "id") -> None:
    """Set columns of rows found by `key`: each row holds the key and the columns to set
    (values as the ORM holds them); rows setting the same columns share one executemany."""
    if not rows:
        return
    db = await driver(session)
    by_columns: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        by_columns.setdefault(tuple(k for k in row if k != key), []).append(row)
    for columns, same in by_columns.items():
        sql, params = _update_plan(table, db.conn.dialect, columns, key)
        await db.execute(sql, list(map(params, same)), wait=False)


_update_plans: dict[tuple[str, str, tuple[str, ...], str],
                    tuple[str, Callable[[Row], tuple[Any, ...]]]] = {}


def _update_plan(table: sa.Table, dialect: Dialect, columns: tuple[str, ...], key: str
                 ) -> tuple[str, Callable[[Row], tuple[Any, ...]]]:
    plan_key = (table.name, dialect.name, columns, key)
    plan = _update_plans.get(plan_key)
    if plan is None:
        quote = dialect.identifier_preparer
        sets = ", ".join(f"{quote.format_column(table.c[c])} = ?" for c in columns)
        plan = (f"UPDATE {quote.format_table(table)} SET {sets} "
                f"WHERE {quote.format_column(table.c[key])} = ?",
                _row_function([(c, _processor(table.c[c], dialect)) for c in (*columns, key)]))
        _update_plans[plan_key] = plan
    return plan


def array_literal(values: list[str]) -> str:
    """A PostgreSQL array of text as its literal: psycopg adapts a list element by element in
    Python, five times slower (2 ms for the 2,000 keys a group of batches looks up)."""
    return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                           for v in values]) + "}"


# `column IN list`, with the whole list as one parameter (`Driver.listed`): SQLAlchemy's
# expanding IN costs more per value than the lookup itself.
IN_LIST = {"sqlite": "IN (SELECT value FROM json_each(?))", "postgresql": "= ANY(?)"}


async def select_rows(session: AsyncSession,
                      queries: list[tuple[sa.Table, str, tuple[Any, ...], str]],
                      first: list[tuple[str, Any]] | None = None) -> list[list[Row]]:
    """For each query (table, where, params, tail), whole rows of the table as the ORM reads
    them (each column's own result processing), through the driver, all in one round trip:
    `where` and `tail` (ORDER BY, FOR UPDATE...) are written with `?` marks and `IN_LIST`.
    `first`: statements run before the queries in that round trip, their results dropped."""
    db = await driver(session)
    first = first or []
    plans = [_select_plan(table, db.conn.dialect) for table, _, _, _ in queries]
    found = await db.execute_all(first + [
        (f"{sql}{where}{tail}", params)
        for (sql, _), (_, where, params, tail) in zip(plans, queries, strict=True)])
    return [list(map(convert, rows))
            for (_, convert), rows in zip(plans, found[len(first):], strict=True)]


_select_plans: dict[tuple[str, str], tuple[str, Callable[[Any], Row]]] = {}


def _select_plan(table: sa.Table, dialect: Dialect) -> tuple[str, Callable[[Any], Row]]:
    # Per dialect name, like the insert plans: every engine here decodes JSON alike.
    key = (table.name, dialect.name)
    plan = _select_plans.get(key)
    if plan is None:
        quote = dialect.identifier_preparer
        processors = [(i, column.type.dialect_impl(dialect).result_processor(dialect, None))
                      for i, column in enumerate(table.columns)]
        convert = row_function([c.key for c in table.columns],
                               [(i, p) for i, p in processors if p is not None],
                               skip_none=True)
        plan = (f"SELECT {', '.join(quote.format_column(c) for c in table.columns)} "
                f"FROM {quote.format_table(table)} WHERE ", convert)
        _select_plans[key] = plan
    return plan


# Rows per multi-row INSERT ... RETURNING: well inside SQLite's limit of 32,766 parameters.
RETURNING_CHUNK = 500


async def insert_returning(session: AsyncSession, table: sa.Table, rows: Sequence[Row],
                           returning: Sequence[str], omit: Sequence[str] = ()
                           ) -> list[tuple[Any, ...]]:
    """Insert `rows` (every column of `table` but those in `omit`, which the database
    fills) and return the `returning` columns of each, in no particular order: multi-row
    VALUES, since an executemany returns nothing."""
    if not rows:
        return []
    db = await driver(session)
    plan = _plan(table, db.conn.dialect, "", tuple(omit))
    quote = db.conn.dialect.identifier_preparer
    tail = " RETURNING " + ", ".join(quote.quote(name) for name in returning)
    if plan.document:
        return [tuple(r) for r in await db.execute(plan.document + tail, (_document(rows),))]
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), RETURNING_CHUNK):
        chunk = rows[start:start + RETURNING_CHUNK]
        sql = plan.head + ", ".join([plan.marks] * len(chunk)) + tail
        params = tuple(value for row in chunk for value in plan.params(row))
        out.extend(tuple(r) for r in await db.execute(sql, params))
    return out


def _execute(conn: sa.Connection, sql: str, params: Any) -> list[Any]:
    # Through run_sync: on SQLite's write engine the statement may complete without any
    # await (app.core.sqlite_driver runs it inline), which AsyncConnection.exec_driver_sql
    # refuses.
    result = conn.exec_driver_sql(sql, params)
    return list(result.fetchall()) if result.returns_rows else []


def _inline_sqlite(conn: Any) -> sqlite3.Connection | None:
    """The sqlite3 connection itself, when statements may run on it right here: SQLite's
    write engine inside its transaction (app.core.sqlite_driver runs them on this thread
    anyway; going straight to sqlite3 also skips SQLAlchemy's execution context)."""
    adapted = conn.sync_connection.connection.dbapi_connection
    if not getattr(adapted, "inline", False):
        return None
    raw: sqlite3.Connection = adapted._connection._conn
    return raw if raw.in_transaction else None


@functools.lru_cache(maxsize=16)  # a few engines per process; tests make many
def _time_processor(dialect: Dialect) -> Callable[[datetime], Any]:
    # Once per dialect: a Driver is made for every statement of an ingest group.
    process: Callable[[datetime], Any] = UTCDateTime().bind_processor(dialect)
    return process


class Driver:
    """Statements written with `?` marks, run on the session's connection without
    SQLAlchemy's per-parameter processing: for the few statements an ingest group runs with
    hundreds of parameters."""

    def __init__(self, conn: Any, info: dict[str, Any] | None = None) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self._time = _time_processor(conn.dialect)
        self._raw = _inline_sqlite(conn) if self.sqlite else None
        # psycopg's own connection: SQLAlchemy's execution context around each statement
        # cost as much as psycopg itself. The transaction is the same (psycopg opens it at
        # the first statement either way; SQLAlchemy commits or rolls back the connection).
        self._pg = None if self.sqlite else conn.sync_connection.connection.driver_connection
        self._info = info if info is not None else {}

    @property
    def sqlite_connection(self) -> sqlite3.Connection | None:
        """SQLite, inside a write transaction: the connection statements run on inline."""
        if self._raw is None and self.sqlite:
            self._raw = _inline_sqlite(self.conn)
        return self._raw

    def time(self, value: datetime) -> Any:
        """A datetime as the UTC columns store it."""
        return self._time(value)

    def listed(self, values: list[str]) -> str:
        """`values` as the one parameter of an `IN_LIST`."""
        return _DOCUMENT(values) if self.sqlite else array_literal(values)

    async def execute(self, sql: str, params: Any, *, wait: bool = True) -> list[Any]:
        """`params`: one tuple, or a list of tuples (executemany). `wait=False`: the caller
        reads no result, so inside `pipelined` the statement may be sent later."""
        if not wait and (held := self._info.get(_PIPELINE)) is not None:
            held.append((sql, params))
            return []
        if (raw := self.sqlite_connection) is not None:  # once the transaction has begun
            try:
                cursor = (raw.executemany(sql, params) if isinstance(params, list)
                          else raw.execute(sql, params))
            except sqlite3.Error as error:
                raise _as_sqlalchemy(error, sql, sqlite3.Error) from error
            try:
                return cursor.fetchall() if cursor.description else []
            finally:
                cursor.close()
        if self._pg is not None:
            return (await _pg_run(self._pg, [(sql, params)]))[0]
        rows: list[Any] = await self.conn.run_sync(_execute, sql, params)
        return rows

    async def copy(self, copy: Copy, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: `rows` by COPY, held inside `pipelined` like the statements whose
        results nobody reads."""
        if (held := self._info.get(_PIPELINE)) is not None:
            held.append((copy, rows))
            return
        await _pg_run(self._pg, [(copy, rows)])

    async def execute_all(self, statements: list[tuple[str, Any]]) -> list[list[Any]]:
        """Each statement's rows, in order: on PostgreSQL in one pipeline, so together (and
        with the BEGIN that opens the transaction) they cost one round trip."""
        if self._pg is None:
            return [await self.execute(sql, params) for sql, params in statements]
        return await _pg_run(self._pg, statements)


async def _pg_run(raw: Any, statements: Sequence[tuple[str | Copy, Any]], *,
                  commit: bool = False) -> list[list[Any]]:
    import psycopg  # PostgreSQL only

    from app.core import pgpipe

    try:
        return await pgpipe.run(raw, statements, commit=commit)
    except pgpipe.Failed as failed:
        raise _as_sqlalchemy(failed.error, failed.sql, psycopg.Error) from failed.error
    except psycopg.Error as error:  # the connection itself failed
        raise _as_sqlalchemy(error, None, psycopg.Error) from error


def _as_sqlalchemy(error: Exception, sql: str | None, base: type[Exception]
                   ) -> sa.exc.StatementError:
    """A driver error as SQLAlchemy raises it: callers tell a conflict (IntegrityError) or a
    lost database (OperationalError) by SQLAlchemy's classes."""
    return sa.exc.DBAPIError.instance(sql, None, error, base, hide_parameters=True)


async def driver(session: AsyncSession) -> Driver:
    """The session's Driver, made once per transaction or savepoint: `session.connection()`
    costs a greenlet switch and SQLAlchemy's bookkeeping, and an ingest group asks a dozen
    times. (It must still be asked once in each savepoint: that is what emits SAVEPOINT.)"""
    sync = session.sync_session
    current = sync.get_nested_transaction() or sync.get_transaction()
    cached = session.info.get(_DRIVER)
    if cached is not None and current is not None and cached[0] is current \
            and current.is_active:
        return cached[1]  # type: ignore[no-any-return]
    made = Driver(await session.connection(), session.info)
    session.info[_DRIVER] = (sync.get_nested_transaction() or sync.get_transaction(), made)
    return made


_PIPELINE = "driver_pipeline"
_DRIVER = "driver"


@contextlib.asynccontextmanager
async def pipelined(session: AsyncSession, *, commit: bool = False) -> AsyncIterator[None]:
    """On PostgreSQL, the driver's statements whose results nobody reads (inserts, counter
    updates) are held back and sent together at the end of the block, in one pipeline: an
    ingest group's dozen statements then cost one round trip instead of a dozen. Statements
    that return something still run at once, before the held ones, so the block must not
    read (or depend on, through a foreign key) what it has written through the driver. If
    the block fails, nothing held is sent. On SQLite, where statements cost no round trip,
    this does nothing.

    `commit=True`: the transaction's COMMIT travels in the same pipeline (a round trip
    less); the caller's own commit then finds nothing to do, so nothing may be written
    after the block, and the block must leave no ORM changes unflushed."""
    bind = session.bind
    if bind is None or bind.dialect.name != "postgresql" or _PIPELINE in session.info:
        yield
        return
    conn = await session.connection()
    held: list[tuple[str | Copy, Any]] = []
    session.info[_PIPELINE] = held
    try:
        yield
    finally:
        del session.info[_PIPELINE]
    commit = commit and not session.sync_session.in_nested_transaction()
    if commit and (session.new or session.dirty or session.deleted):
        raise RuntimeError("pipelined(commit=True) with unflushed ORM changes")
    if held or commit:
        raw = (await conn.get_raw_connection()).driver_connection
        await _pg_run(raw, held, commit=commit)
