"""Engines and sessions.

One transaction boundary: a request (or a worker job) gets one session; services add and
flush but never commit; the boundary commits or rolls back. On SQLite every write
transaction starts with BEGIN IMMEDIATE so two writers queue on the lock (busy_timeout)
instead of failing when a reader upgrades; reads use a second engine with plain BEGIN so
they never wait for writers (WAL).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import checkpoint, sqlite_driver

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION

AfterCommit = Callable[[], None]
# A SQLite read runs on the event loop's thread for up to this long (see sqlite_driver.dbapi):
# the loop never stalls longer for one, and every list or lookup fits, also when the machine
# is busy. A read moved to the connection's thread waits for the GIL at every row it fetches
# while the loop is busy: at 2 ms, the few percent of listings that overran it under load
# made the listings' p95 twice their median (5 ms: 1.2-1.4 times).
READ_BUDGET_S = 0.005

# JSON columns are read on every list; orjson decodes them several times faster.
JSON_CODEC: dict[str, Any] = {
    "json_serializer": lambda value: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode(),
    "json_deserializer": orjson.loads,
}


def async_url(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    return url


def sync_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite:"):
        return "sqlite:" + url[len("sqlite+aiosqlite:") :]
    return url


def ensure_sqlite_dir(url: str) -> None:
    if not url.startswith("sqlite"):
        return
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL; None for memory or URI databases."""
    path = sa.engine.make_url(sync_url(url)).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def _enter_wal(cur: Any) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "locked" at
    # once, without its busy handler, when another opener holds it: retry for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_hooks(engine: Any, begin: str, *, deferred: bool = False,
                  checkpointed: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver's own is DEFERRED).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={sqlite_driver.BUSY_TIMEOUT_MS}")
        _enter_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # The default 2 MB page cache is outgrown by a few thousand alerts; past it every
        # lookup reads pages through system calls. 16 MB per connection keeps the pools
        # (2 × 10 connections) within the memory budget.
        cur.execute("PRAGMA cache_size=-16384")
        if checkpointed:  # a Checkpointer thread copies the WAL (app.core.checkpoint)
            cur.execute(f"PRAGMA wal_autocheckpoint={checkpoint.WRITER_AUTOCHECKPOINT}")
            cur.execute(f"PRAGMA journal_size_limit={checkpoint.JOURNAL_SIZE_LIMIT}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if deferred:
            conn.connection.dbapi_connection.defer_begin(begin)
            return
        # Straight to the driver: SQLAlchemy's execution context around it cost several
        # times the BEGIN itself, once per ingest group.
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(begin)
        finally:
            cursor.close()


def make_sync_engine(url: str) -> sa.Engine:
    url = sync_url(url)
    ensure_sqlite_dir(url)
    engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"), **JSON_CODEC)
    if url.startswith("sqlite"):
        _sqlite_hooks(engine, "BEGIN IMMEDIATE")
    return engine


# A pooled PostgreSQL connection is pinged before use only when it may have gone stale: idle
# this long (a firewall dropping quiet flows), or with bytes waiting on its socket (a server
# that shuts down or ends the session says so and closes it). Pinging at every checkout
# (pool_pre_ping) cost a round trip per transaction: a tenth of a small ingest group's time.
PING_AFTER_IDLE_S = 30.0


def _ping_when_stale(engine: sa.Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:  # a new connection
            return
        if time.monotonic() - idle_since < PING_AFTER_IDLE_S and not _has_input(dbapi_conn):
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # Like pool_pre_ping: every connection pooled before now is replaced too.
            raise sa.exc.InvalidatePoolError() from exc


def _has_input(dbapi_conn: Any) -> bool:
    try:
        fd = dbapi_conn.driver_connection.pgconn.socket
    except Exception:  # closed already
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Database:
    """Holds the write and read engines of one process."""

    def __init__(self, url: str, *, pool_size: int = 10,
                 session_info: dict[str, Any] | None = None) -> None:
        self.url = url
        self.session_info = dict(session_info or {})
        self.is_sqlite = url.startswith("sqlite")
        ensure_sqlite_dir(url)
        aurl = async_url(url)
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                aurl, pool_size=pool_size, module=sqlite_driver.dbapi(inline_writes=True),
                **JSON_CODEC)
            self.read_engine: AsyncEngine = create_async_engine(
                aurl, pool_size=pool_size, module=sqlite_driver.dbapi(read_budget=READ_BUDGET_S),
                **JSON_CODEC)
            path = sqlite_file(url)
            self.checkpointer = checkpoint.Checkpointer(path) if path else None
            _sqlite_hooks(self.engine.sync_engine, "BEGIN IMMEDIATE",
                          checkpointed=self.checkpointer is not None)
            _sqlite_hooks(self.read_engine.sync_engine, "BEGIN", deferred=True)
        else:
            from app.core import pgpipe

            self.engine = create_async_engine(
                aurl, pool_size=pool_size, max_overflow=pool_size * 2,
                pool_timeout=10, connect_args=pgpipe.CONNECT_ARGS, **JSON_CODEC,
            )
            _ping_when_stale(self.engine.sync_engine)
            self.read_engine = self.engine
            self.checkpointer = None
        self._write = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._read = async_sessionmaker(
            self.read_engine, class_=AsyncSession, expire_on_commit=False
        )
        # Called after a commit that emitted events (the live feed), and after one that
        # queued deliveries (the worker: waking it for every event of a storm that nobody
        # subscribed to would cost a look for due work on every group commit).
        self.event_listeners: list[AfterCommit] = []
        self.delivery_listeners: list[AfterCommit] = []
        # SQLite allows one writer; queueing here keeps writers off the busy-wait path.
        self.write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self.file_lock = WriterQueue.beside(url) if self.is_sqlite else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: commit on success, rollback on error, then after-commit hooks."""
        hooks: list[AfterCommit] = []
        if self.write_lock is not None:
            async with self.write_lock, _held(self.file_lock), \
                    self._transaction(hooks) as session:
                yield session
        else:
            async with self._transaction(hooks) as session:
                yield session
        for hook in hooks:
            hook()

    @asynccontextmanager
    async def _transaction(self, hooks: list[AfterCommit]) -> AsyncIterator[AsyncSession]:
        session = self._write()
        session.info.update(self.session_info)
        session.info["after_commit"] = hooks
        session.info["events_committed"] = self.events_committed
        session.info["deliveries_committed"] = self.deliveries_committed
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        finally:
            await session.close()

    def events_committed(self) -> None:
        for listener in self.event_listeners:
            listener()

    def deliveries_committed(self) -> None:
        for listener in self.delivery_listeners:
            listener()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        session = self._read()
        session.info.update(self.session_info)
        try:
            yield session
        finally:
            await session.rollback()
            await session.close()

    async def any_row(self, stmt: sa.Select[Any], params: dict[str, Any] | None = None) -> bool:
        """Whether `stmt` finds a row, read outside any write transaction: on SQLite a write
        transaction just to find that nothing is due would queue behind the ingest writer for
        the one write lock. `stmt` should be limited to one row."""
        async with self.read() as session:
            return (await session.execute(stmt, params)).first() is not None

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
        if self.file_lock is not None:
            self.file_lock.close()
            self.file_lock = None
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None


class WriterQueue:
    """Writers of one SQLite file in several processes (the API process's worker, the ingest
    process, a separate `crisisflow worker`) queue on a lock file beside it. SQLite's own
    busy handler polls with sleeps of up to 100 ms, so a writer waiting for another process
    could wait long after the lock was free; a blocked flock wakes as soon as it is."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def beside(cls, url: str) -> WriterQueue | None:
        path = sqlite_file(url)
        return cls(path + "-writer.lock") if path else None

    async def acquire(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waiting = asyncio.get_running_loop().run_in_executor(
            None, fcntl.flock, self.fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread may still get the lock: give it back then, or every writer stalls.
            waiting.add_done_callback(self._release_late)
            raise

    def _release_late(self, waited: asyncio.Future[None]) -> None:
        if not waited.cancelled() and waited.exception() is None:
            self.release()

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


@asynccontextmanager
async def _held(queue: WriterQueue | None) -> AsyncIterator[None]:
    if queue is None:
        yield
        return
    await queue.acquire()
    try:
        yield
    finally:
        queue.release()


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run `hook` once the boundary has committed (never if it rolls back)."""
    session.info.setdefault("after_commit", []).append(hook)
