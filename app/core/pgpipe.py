"""Statements sent to PostgreSQL in one pipeline through libpq's own calls.

psycopg's cursors cost about 70 µs of Python per statement even in a pipeline (a cursor, a
query conversion, a send and an event-loop check each): an ingest group's twenty statements
spent more time there than the server spent running them, and an executemany of a few
hundred rows (a batch's raised severities) far more. Here psycopg's own dumpers and loaders
adapt the values, and libpq queues every statement, sends them in one write and reads every
result in one pass: about 10 µs a statement.

Each statement is prepared on the server once per connection (unprepared, the server
planned the group's statements anew every time, and ingestion was slower than with
psycopg's cursors), and prepared again after 1 s, then 2 s, 4 s and so on up to
REPLAN_MAX_S: PostgreSQL keeps the generic plan it chose after a statement's first runs,
and one chosen while a table was nearly empty (a sequential scan of the open clocks, say)
stayed in use, ever slower, as a storm filled that table, until autovacuum's next ANALYZE.
Tables grow fastest, relative to their size, when they are new. psycopg's own automatic
preparing is off on these connections (`CONNECT_ARGS`): on every rollback it deallocates
all of a connection's prepared statements, ours with its own.

Many whole rows go in by COPY (`Copy`), which libpq cannot send inside a pipeline: the
statements before it go in one pipeline, then the COPY, then the rest. The server takes a
thousand alert rows by COPY in about half the time it spends reading them out of one JSON
document.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import abc, postgres, pq
from psycopg.abc import Buffer
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.string import StrBinaryDumper

Params = tuple[Any, ...] | list[tuple[Any, ...]] | None
Key = tuple[bytes, tuple[int, ...]]  # a statement and its parameters' types

CONNECT_ARGS: dict[str, Any] = {"prepare_threshold": None}  # splatted into connect()
# Statements beyond this many per connection run unprepared (a bound for statements
# written with varying text).
MAX_PREPARED = 256

_IDLE = pq.TransactionStatus.IDLE
_ERRORS = frozenset({pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.BAD_RESPONSE,
                     pq.ExecStatus.NONFATAL_ERROR})
_names = itertools.count()
REPLAN_FIRST_S = 1.0
REPLAN_MAX_S = 60.0


@dataclass(slots=True)
class _Prepared:
    name: bytes
    replan_at: float  # time.monotonic()
    interval: float  # until the next time after that


# Per connection: the statements prepared on it, by key.
_prepared: weakref.WeakKeyDictionary[Any, dict[Key, _Prepared]] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=512)
def _numbered(sql: str) -> bytes:
    """The driver's `?` marks as PostgreSQL's `$1, $2, ...`."""
    marks = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(marks)}", sql).encode()


def _begin(conn: psycopg.AsyncConnection[Any]) -> bytes:
    """The BEGIN psycopg would send before the transaction's first statement."""
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


@dataclass(slots=True)
class _Sent:
    """What one command of the pipeline was, to read its results."""

    sql: str
    rows: int | None = None  # where its rows go in the output (None: nowhere)
    prepares: tuple[Key, _Prepared] | None = None  # a PREPARE: made known once done
    drops: tuple[Key, bytes] | None = None  # a DEALLOCATE: made unknown once done


@dataclass(frozen=True, slots=True)
class Copy:
    """`COPY table (columns) FROM STDIN`, in place of a statement's SQL; its parameters are
    the rows, as tuples in the columns' order. With `types` (each column's PostgreSQL type,
    as psycopg names it) the rows go in PostgreSQL's binary format: psycopg's text format
    cost the ingest process 9 ms of CPU for an alert storm's 2,000 rows, the binary one 3 ms
    (and the server parses no timestamps). Without, psycopg's text dumpers adapt them."""

    sql: str
    types: tuple[str, ...] = ()


class _JsonbText(str):
    """Never made: the class `_JsonbTextDumper` is registered under, so that COPY's `set_types`
    finds it for jsonb columns by their type's oid."""


class _JsonbTextDumper(StrBinaryDumper):
    """A JSON document already serialized (by orjson) as a jsonb value in binary format: the
    format's version byte, then the text. psycopg's own jsonb dumper would serialize the
    string again, as a JSON string."""

    oid = postgres.types["jsonb"].oid

    def dump(self, obj: str) -> Buffer:
        text = super().dump(obj)
        assert text is not None  # a str always dumps to bytes
        return b"\x01" + text


class Failed(Exception):
    """A statement of the pipeline failed: the error PostgreSQL gave, as psycopg raises
    it, and the statement."""

    def __init__(self, error: psycopg.Error, sql: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.sql = sql


async def run(conn: psycopg.AsyncConnection[Any],
              statements: Sequence[tuple[str | Copy, Params]], *, commit: bool = False
              ) -> list[list[tuple[Any, ...]]]:
    """Run `statements` (SQL with `?` marks, or a `Copy`; parameters a tuple, a list of
    tuples run once each, or None) in the connection's transaction, opening one if none is,
    and COMMIT it after them if `commit`. Returns each statement's rows (a list of tuples
    run once each, and a COPY, return nothing). On the first error the rest are skipped, as
    PostgreSQL does in a pipeline, and `Failed` is raised; the transaction is then aborted
    and the caller rolls it back."""
    out: list[list[tuple[Any, ...]]] = []
    pending: list[tuple[str, Params]] = []  # statements for the next pipeline
    for sql, params in statements:
        if isinstance(sql, Copy):
            if pending:
                out += await _pipeline(conn, pending)
                pending = []
            await _copy(conn, sql, params if isinstance(params, list) else [])
            out.append([])
        else:
            pending.append((sql, params))
    if pending or commit or not statements:
        out += await _pipeline(conn, pending, commit=commit)
    return out


async def _copy(conn: psycopg.AsyncConnection[Any], copy: Copy,
                rows: list[tuple[Any, ...]]) -> None:
    try:
        async with conn.cursor() as cursor, cursor.copy(copy.sql) as writer:
            if copy.types:
                cursor.adapters.register_dumper(_JsonbText, _JsonbTextDumper)
                writer.set_types(list(copy.types))
            for row in rows:
                await writer.write_row(row)
    except psycopg.Error as error:
        if conn.closed:
            raise  # the connection itself failed
        raise Failed(error, copy.sql) from error


async def _pipeline(conn: psycopg.AsyncConnection[Any], statements: list[tuple[str, Params]],
                    *, commit: bool = False) -> list[list[tuple[Any, ...]]]:
    async with conn.lock:
        pg = conn.pgconn
        pipe = _Pipeline(pg, Transformer.from_context(conn), _prepared.setdefault(conn, {}))
        pg.enter_pipeline_mode()
        clean = False
        try:
            if pg.transaction_status == _IDLE and not conn.autocommit:
                pipe.send_plain(_begin(conn).decode())
            for sql, params in statements:
                pipe.out.append([])
                if isinstance(params, list):
                    for one in params:
                        pipe.send(sql, one, None)
                else:
                    pipe.send(sql, params or (), len(pipe.out) - 1)
            if commit:
                pipe.send_plain("COMMIT")
            pg.pipeline_sync()
            try:
                error = await pipe.exchange(conn.info.encoding)
            except asyncio.CancelledError:
                await _abandon(conn, pipe)
                clean = pipe.drained
                raise
            clean = True
        finally:
            if clean:
                pg.exit_pipeline_mode()
            else:
                # Cut off with results still on the wire: this connection can no longer
                # tell whose results are whose, so it is closed (SQLAlchemy's pool then
                # drops it).
                pg.finish()
    if error is not None:
        raise error
    return pipe.out


async def _abandon(conn: psycopg.AsyncConnection[Any], pipe: _Pipeline) -> None:
    """The caller was cancelled midway (a client gone, a shutdown): the server is asked to
    stop the running statement and the rest is read up to the sync, so that the connection
    stays usable (its transaction aborted, for the caller to roll back). Should that fail
    too, the connection is closed on the way out."""
    with contextlib.suppress(Exception):
        await conn.cancel_safe(timeout=5)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pipe.exchange(conn.info.encoding), timeout=5)
        pipe.drained = True


class _Pipeline:
    def __init__(self, pg: Any, tx: abc.Transformer,
                 prepared: dict[Key, _Prepared]) -> None:
        self.pg = pg
        self.tx = tx
        self.prepared = prepared
        self.preparing: dict[Key, bytes] = {}  # PREPAREs sent in this pipeline
        self.sent: list[_Sent] = []
        self.out: list[list[tuple[Any, ...]]] = []
        self.index = 0  # the command whose results come next
        self.error: Failed | None = None
        self.drained = False

    def send_plain(self, sql: str) -> None:
        self.pg.send_query_params(sql.encode(), None)
        self.sent.append(_Sent(sql))

    def send(self, sql: str, params: tuple[Any, ...], rows: int | None) -> None:
        query = _numbered(sql)
        values = self.tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        types = tuple(self.tx.types or ())
        formats = list(self.tx.formats or ()) or None
        key = (query, types)
        name = self.preparing.get(key)
        known = self.prepared.get(key)
        interval = REPLAN_FIRST_S
        if known is not None and name is None:
            name = known.name
            if time.monotonic() > known.replan_at:  # prepared again below
                self.pg.send_query_params(b'DEALLOCATE "' + name + b'"', None)
                self.sent.append(_Sent(sql, drops=(key, name)))
                name, interval = None, min(known.interval * 2, REPLAN_MAX_S)
        if name is None and len(self.prepared) + len(self.preparing) < MAX_PREPARED:
            name = f"_cf_{next(_names)}".encode()
            self.pg.send_prepare(name, query, param_types=types or None)
            self.preparing[key] = name
            self.sent.append(_Sent(sql, prepares=(key, _Prepared(name, 0.0, interval))))
        if name is None:
            self.pg.send_query_params(query, values or None, param_types=types or None,
                                      param_formats=formats)
        else:
            self.pg.send_query_prepared(name, values or None, param_formats=formats)
        self.sent.append(_Sent(sql, rows))

    async def exchange(self, encoding: str) -> Failed | None:
        """Send what libpq queued and read every result up to the pipeline's sync; returns
        the first error. Cancelled, it can be called again to go on where it stopped."""
        pg = self.pg
        fd = pg.socket
        while pg.flush():  # 1: more to send; the server's answers are read meanwhile
            if await _ready(fd, write=True):
                pg.consume_input()
        while True:
            while pg.is_busy():
                pg.consume_input()  # what has already arrived, without a turn of the loop
                if pg.is_busy():
                    await _ready(fd, write=False)
            result = pg.get_result()
            if result is None:  # the end of one command's results
                self.index += 1
                continue
            status = result.status
            if status == pq.ExecStatus.PIPELINE_SYNC:
                return self.error
            sent = self.sent[self.index]
            if status == pq.ExecStatus.TUPLES_OK and sent.rows is not None:
                self.tx.set_pgresult(result)
                self.out[sent.rows] = self.tx.load_rows(0, result.ntuples, tuple)
            elif status == pq.ExecStatus.COMMAND_OK and sent.prepares is not None:
                key, made = sent.prepares
                made.replan_at = time.monotonic() + made.interval
                self.prepared[key] = made
            elif status == pq.ExecStatus.COMMAND_OK and sent.drops is not None:
                key, name = sent.drops
                known = self.prepared.get(key)
                if known is not None and known.name == name:
                    del self.prepared[key]
            elif status in _ERRORS and self.error is None:
                self.error = Failed(
                    psycopg.errors.error_from_result(result, encoding=encoding), sent.sql)


async def _ready(fd: int, *, write: bool) -> bool:
    """Wait until the socket can be read, or (`write`) read or written; True if readable."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def wake(readable: bool) -> None:
        if not done.done():
            done.set_result(readable)

    loop.add_reader(fd, wake, True)
    if write:
        loop.add_writer(fd, wake, False)
    try:
        return await done
    finally:
        loop.remove_reader(fd)
        if write:
            loop.remove_writer(fd)
