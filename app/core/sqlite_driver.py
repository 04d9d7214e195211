"""aiosqlite, with one trip to the connection's thread per statement.

SQLAlchemy's aiosqlite adapter opens a cursor, executes, fetches and closes it in four
separate trips to aiosqlite's thread, each a queue hand-off and an event-loop wake-up
(about 260 µs for `SELECT 1` on the bench machine). An ingest group runs a dozen statements,
so those trips were a large share of its time. This adapter does the four steps in one trip
(about a third of the time); results are fetched whole, as the stock adapter already does.

On the write engine, statements inside a transaction skip the thread altogether (see
`dbapi`): an ingest group's dozen statements then cost what SQLite takes to run them, and
BEGIN IMMEDIATE goes to the thread only when another program holds the lock. On the
read engine, a SELECT runs on the caller's thread within a time budget and goes to the
thread only when it outgrows it; BEGIN travels with the first statement and a read
transaction ends without a trip, so a short read makes no trip at all.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_


def _run(raw: sqlite3.Connection, operation: str, parameters: Any, many: bool,
         begin: str | None = None) -> tuple[Any, int, int | None, list[Any]]:
    if begin is not None:
        raw.execute(begin)
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _run_bounded(raw: sqlite3.Connection, operation: str, parameters: Any, begin: str | None,
                 budget: float) -> tuple[Any, int, int | None, list[Any]] | None:
    """`_run` on the caller's thread, given up (None) past `budget` seconds of SQLite's time
    or where it would wait for a lock: the caller then runs it on the connection's thread."""
    deadline = time.perf_counter() + budget

    def over() -> bool:
        return time.perf_counter() > deadline

    return _run_or_give_up(raw, operation, parameters, begin, over)


def _run_or_give_up(raw: sqlite3.Connection, operation: str, parameters: Any,
                    begin: str | None = None, stop: Callable[[], bool] | None = None
                    ) -> tuple[Any, int, int | None, list[Any]] | None:
    """`_run` without SQLite's busy handler (which sleeps on the calling thread): None if
    the statement would wait for a lock, or was interrupted by `stop` (a progress handler
    for this statement only)."""
    raw.execute("PRAGMA busy_timeout=0")
    if stop is not None:
        raw.set_progress_handler(stop, _PROGRESS_STEPS)
    try:
        return _run(raw, operation, parameters, False, begin)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF in _GIVE_UP:  # primary code of an extended one
            return None
        raise
    finally:
        if stop is not None:
            # First: past its deadline it would interrupt the PRAGMA too, and the read would
            # fail instead of moving to the connection's thread.
            raw.set_progress_handler(None, 0)
        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


async def _settled() -> None:
    """Awaited after a statement that ran on the caller's thread: AsyncConnection.execute
    refuses a driver that never awaited (its check for a blocking driver); a coroutine that
    returns at once is awaited without handing control to the event loop."""


# The progress handler runs every this many virtual-machine steps (a few microseconds).
_PROGRESS_STEPS = 1000
_GIVE_UP = frozenset({sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY})
BUSY_TIMEOUT_MS = 30000
# A write transaction that changed at most this many rows commits on the caller's thread.
INLINE_COMMIT_ROWS = 256


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No aiosqlite cursor: the sqlite3 cursor lives inside one trip.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid or 0

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._go(operation, parameters, False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._go(operation, seq_of_parameters, True)

    def _go(self, operation: Any, parameters: Any, many: bool) -> None:
        conn: Any = self._connection  # an aiosqlite.Connection (its _execute is untyped)
        raw: sqlite3.Connection = conn._conn
        adapt: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        try:
            if adapt.inline and raw.in_transaction:
                # Inside BEGIN IMMEDIATE this connection holds the database's write lock, so
                # no statement can wait for another writer: it runs here, without the two
                # thread hand-offs (and event-loop wake-up) a trip costs.
                self._store(_run(raw, operation, parameters, many))
                await_(_settled())
                return
            if adapt.inline and operation == "BEGIN IMMEDIATE":
                adapt.changes_at_begin = raw.total_changes
                # Writers of this process queue on a lock (and those of others on a lock
                # file) before they begin, so the write lock is nearly always free: taken
                # here, or, when another program holds it, waited for on the thread.
                outcome = _run_or_give_up(raw, operation, parameters) if adapt.idle else None
                if outcome is not None:
                    self._store(outcome)
                    await_(_settled())
                    return
            begin, adapt.begin_pending = adapt.begin_pending, None
            budget = adapt.read_budget
            if budget and not many and adapt.idle and operation.startswith(("SELECT", "WITH")):
                outcome = _run_bounded(raw, operation, parameters, begin, budget)
                if outcome is not None:
                    self._store(outcome)
                    await_(_settled())
                    return
                # A long read: the rest of it on the thread, in the same transaction.
                begin = None if raw.in_transaction else begin
            await_(self._trip(operation, parameters, many, begin))
        except Exception as error:
            adapt._handle_exception(error)

    async def _trip(self, operation: Any, parameters: Any, many: bool,
                    begin: str | None) -> None:
        conn: Any = self._connection
        adapt: Any = self._adapt_connection
        async with adapt._execute_mutex:
            adapt.sent += 1
            self._store(await conn._execute(_counted, adapt, _run, conn._conn, operation,
                                            parameters, many, begin))

    def _store(self, outcome: tuple[Any, int, int | None, list[Any]]) -> None:
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows)


def _counted(adapt: OneTripConnection, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    finally:
        adapt.done += 1  # written by the connection's thread only


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("begin_pending", "changes_at_begin", "done", "inline", "read_budget", "sent")
    _cursor_cls = OneTripCursor
    begin_pending: str | None
    changes_at_begin: int  # SQLite's running count of changed rows when BEGIN IMMEDIATE ran
    inline: bool
    read_budget: float | None
    # Work handed to the connection's thread and work it finished, each written by one
    # thread only. Nothing runs on the caller's thread while they differ: a trip whose
    # awaiting task was cancelled may still be running there, and the connection serves one
    # statement at a time (the loop would wait for it, then cut into its transaction).
    sent: int
    done: int

    @property
    def idle(self) -> bool:
        return self.sent == self.done

    def defer_begin(self, begin: str) -> None:
        """Send `begin` with the transaction's first statement, in the same trip. For
        read transactions only (a plain BEGIN takes no lock), where the BEGIN trip was a
        third of a short read's trips."""
        self.begin_pending = begin

    def rollback(self) -> None:
        # A transaction that ran nothing, or none at all (the pool resets every connection
        # it takes back, after the session has already rolled back): no trip to end it.
        if self.begin_pending is not None:
            self.begin_pending = None
            return
        raw = self._connection._connection
        if raw is None or not raw.in_transaction:
            return
        if not self.read_budget:
            super().rollback()
        elif self.idle:
            raw.rollback()  # ends a read transaction at once: nothing to wait for
        else:
            self.sent += 1
            await_(self._connection._execute(_counted, self, raw.rollback))

    def commit(self) -> None:
        if self.begin_pending is not None:
            self.begin_pending = None
            return
        raw = self._connection._connection
        if self.inline and self.idle and raw is not None and raw.in_transaction \
                and raw.total_changes - self.changes_at_begin <= INLINE_COMMIT_ROWS:
            # A small write transaction (an ingest group of a few dozen alerts) commits here:
            # its WAL pages take less than the two hand-offs to the thread and back, and
            # the checkpoint that once made COMMIT slow runs on a thread of its own.
            try:
                raw.commit()
            except Exception as error:
                self._handle_exception(error)
            return
        super().commit()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self, inline_writes: bool, read_budget: float | None) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.inline_writes = inline_writes
        self.read_budget = read_budget

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        connection: Any = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own adapter does
        adapted = OneTripConnection(self, await_(connection))
        adapted.inline = self.inline_writes
        adapted.begin_pending = None
        adapted.read_budget = self.read_budget
        adapted.sent = adapted.done = 0
        adapted.changes_at_begin = 0
        return adapted


def dbapi(*, inline_writes: bool = False, read_budget: float | None = None) -> OneTripDBAPI:
    """Pass as `module=` to `create_async_engine` for a `sqlite+aiosqlite` URL.

    `inline_writes`: statements inside a transaction run on the caller's thread. Only for
    the engine whose transactions all begin IMMEDIATE (they hold the write lock, and SQLite
    in WAL mode answers them from memory and the page cache). BEGIN is tried here without
    waiting; when another program holds the write lock it is waited for on the connection's
    thread. COMMIT goes there too, unless the transaction changed at most INLINE_COMMIT_ROWS
    rows: checkpoints run on a thread of their own (app.core.checkpoint), so a small COMMIT
    only appends its pages to the WAL.

    `read_budget` (seconds): SELECTs run on the caller's thread too, up to that much of
    SQLite's time; one that takes longer (a search may take tens of milliseconds) or would
    wait for a lock is stopped and run again on the connection's thread. Most reads take a
    fraction of a millisecond, and the two hand-offs to the thread and back, each waiting for
    the GIL behind the event loop, took several times that."""
    return OneTripDBAPI(inline_writes, read_budget)
