"""Alert ingestion in a process of its own, next to the API processes.

One Python process runs on one core: serving HTTP and writing alert groups in the same
process left the machine's other cores to the database and the load. With
`CRISISFLOW_INGEST_PROCESS=true`, `crisisflow serve` starts an ingest process
(`IngestProcess`) that owns the group commit (`IngestWriter`, behind `IngestServer`), and
every API process sends it parsed alerts over a Unix socket (`RemoteWriter`, with the same
`submit` as the in-process writer), prepared there (`service.prepare`: group key, stored
payload text) to spare the one process every API process waits for. Nothing changes for a
client: the ingest process answers only after the group's commit, so a 202 still means the
alerts are stored; it also tells the API processes when a commit emitted events or queued
deliveries, so their live feed and worker wake at once.

Frames are a 4-byte length and JSON (orjson): alerts travel as lists of their fields, which
decode several times faster than pickled objects (a 1,000-alert batch: ~3 ms instead of
~45 ms both ways). The socket lives in a directory only this user can open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from app.alerts import service
from app.alerts.models import Outcome
from app.alerts.parsers import ParsedAlert
from app.alerts.writer import DuplicateWebhook, IngestWriter
from app.core import collector
from app.core.config import Settings
from app.core.cork import Cork
from app.core.errors import ProblemError, Unavailable, is_database_unavailable
from app.core.jsonutil import dumps, loads
from app.core.metrics import INGEST_GROUP

log = logging.getLogger("crisisflow.ingest")
_LENGTH = struct.Struct("!I")
EVENTS = "events"
DELIVERIES = "deliveries"
GROUP = "group"
PROCESS_NAME = "crisisflow-ingest"  # Linux keeps the first 15 characters
CONNECT_WAIT = 10.0  # seconds an API request waits for the ingest process to (re)start


def _frame(message: Any) -> bytes:
    data = dumps(message)
    return _LENGTH.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return loads(await reader.readexactly(size))


_ALERT_FIELDS = tuple(f.name for f in dataclasses.fields(ParsedAlert))


def _alerts_out(alerts: list[ParsedAlert]) -> list[list[Any]]:
    return [[getattr(a, name) for name in _ALERT_FIELDS] for a in alerts]


def _alerts_in(rows: list[list[Any]]) -> list[ParsedAlert]:
    alerts = [ParsedAlert(*row) for row in rows]
    for alert in alerts:
        if alert.observed_at is not None:  # JSON carried it as RFC 3339 text
            alert.observed_at = datetime.fromisoformat(alert.observed_at)  # type: ignore[arg-type]
    return alerts


def _results_in(rows: list[list[Any]]) -> list[Outcome]:
    return [Outcome(*row) for row in rows]


class RemoteWriter:
    """The API process's side: `submit` sends the alerts and waits for the stored results."""

    def __init__(self, path: str, on_events: Callable[[], None],
                 on_deliveries: Callable[[], None], group_by: list[str],
                 raw_max_bytes: int) -> None:
        self.path = path
        self.group_by = group_by
        self.raw_max_bytes = raw_max_bytes
        self.on_events = on_events
        self.on_deliveries = on_deliveries
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[tuple[str, Any]]] = {}
        self._stream: Cork | None = None
        self._connecting = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connects on first use: the ingest process may still be starting."""

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._stream is not None:
            self._stream.close()

    async def submit(self, alerts: list[ParsedAlert], actor: str, key_id: str,
                     webhook_id: str | None = None) -> tuple[Any, bool]:
        stream = await self._connect()
        # Here rather than in the ingest process, whose writer every API process waits for.
        service.prepare(alerts, self.group_by, self.raw_max_bytes)
        request_id = next(self._ids)
        done: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = done
        stream.write(_frame((request_id, _alerts_out(alerts), actor, key_id, webhook_id)))
        kind, payload = await done
        if kind == "ok":
            results, replayed = payload
            return _results_in(results), replayed
        if kind == "duplicate":
            raise DuplicateWebhook()
        if kind == "problem":
            status, body = payload
            raise _RemoteProblem(status, body)
        if kind == "unavailable":
            raise Unavailable(payload)
        raise RuntimeError(f"the ingest process failed: {payload}")

    async def ready(self) -> bool:
        """Whether the ingest process accepts alerts now (readiness, after a (re)start)."""
        try:
            await self._connect(wait=0.0)
        except Unavailable:
            return False
        return True

    async def _connect(self, wait: float = CONNECT_WAIT) -> Cork:
        if self._stream is not None and not self._stream.is_closing():
            return self._stream
        async with self._connecting:
            if self._stream is not None and not self._stream.is_closing():
                return self._stream
            deadline = time.monotonic() + wait
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path)
                    # The frames of the requests that reach this point in one turn of the
                    # loop go out as one write.
                    self._stream = Cork(writer)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise Unavailable("alert ingestion is restarting; retry shortly") \
                            from exc
                    await asyncio.sleep(0.05)
            self._reader = asyncio.create_task(self._receive(reader, self._stream),
                                               name="crisisflow-ingest-client")
            return self._stream

    async def _receive(self, reader: asyncio.StreamReader, stream: Cork) -> None:
        try:
            while True:
                message = await _read(reader)
                if message == EVENTS:
                    self.on_events()
                    continue
                if message == DELIVERIES:
                    self.on_deliveries()
                    continue
                if message[0] == GROUP:
                    INGEST_GROUP.observe(message[1])
                    continue
                request_id, kind, payload = message
                done = self._pending.pop(request_id, None)
                if done is not None and not done.done():
                    done.set_result((kind, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            stream.close()
            # Requests in flight when the ingest process went away: their outcome is unknown
            # to us (a group may have committed just before), so the client retries, and a
            # retried alert deduplicates by its fingerprint.
            lost = "alert ingestion restarted before answering; retry the request"
            for done in self._pending.values():
                if not done.done():
                    done.set_result(("unavailable", lost))
            self._pending.clear()


class _RemoteProblem(ProblemError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        extra = {k: v for k, v in body.items() if k not in {"type", "title", "status", "detail"}}
        super().__init__(body.get("detail"), **extra)
        self.status, self.type, self.title = status, body["type"], body["title"]


class IngestServer:
    """The ingest process's side: one group-commit writer for every API process."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.settings = settings
        self.path = path
        self._clients: set[Cork] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._origin: dict[int, Cork] = {}

    async def run(self, stop: asyncio.Event) -> None:
        from app.bootstrap import build_env, open_database

        settings = self.settings
        db = open_database(settings)
        db.event_listeners.append(lambda: self._tell_clients(EVENTS))
        db.delivery_listeners.append(lambda: self._tell_clients(DELIVERIES))
        self.writer = IngestWriter(db, build_env(settings), settings.group_by,
                                   settings.raw_alert_max_bytes, on_group=self._group_taken)
        self.writer.start()
        collector.settle()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        server = await asyncio.start_unix_server(self._serve, self.path)
        os.chmod(self.path, 0o600)
        try:
            await stop.wait()
        finally:
            server.close()
            # Groups already taken are committed and answered before the process leaves.
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=30)
            for client in list(self._clients):
                client.close()
            await self.writer.stop()
            await db.dispose()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _group_taken(self, group: list[Any]) -> None:
        # The API process that sent the group's first request records its size, so the
        # histogram (served by the API processes' /metrics) counts each group once.
        stream = self._origin.get(id(group[0].alerts))
        if stream is not None and not stream.is_closing():
            stream.write(_frame((GROUP, len(group))))

    def _tell_clients(self, message: str) -> None:
        frame = _frame(message)
        for client in self._clients:
            client.write(frame)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A group's answers all go out in one turn of the loop: one write for them all.
        stream = Cork(writer)
        self._clients.add(stream)
        try:
            while True:
                request_id, rows, actor, key_id, webhook_id = await _read(reader)
                alerts = _alerts_in(rows)
                # Queued as the frame is read: frames that arrive together are read in one
                # turn of the loop, and a task each would reach the queue a turn later, often
                # after the writer had taken its next group without them.
                done = self.writer.queue(alerts, actor, key_id, webhook_id)
                self._origin[id(alerts)] = stream  # before the writer's next turn takes it
                task = asyncio.create_task(self._answer(request_id, alerts, done, stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.discard(stream)
            stream.close()

    async def _answer(self, request_id: int, alerts: list[ParsedAlert],
                      done: asyncio.Future[tuple[list[Outcome], bool]], stream: Cork) -> None:
        reply: tuple[str, Any]
        try:
            results, replayed = await done
            reply = ("ok", ([list(r) for r in results], replayed))
        except DuplicateWebhook:
            reply = ("duplicate", None)
        except ProblemError as exc:
            reply = ("problem", (exc.status, exc.body()))
        except Exception as exc:
            if is_database_unavailable(exc):
                reply = ("unavailable", "the database is unavailable")
            else:
                log.exception("alert ingestion failed")
                reply = ("error", type(exc).__name__)
        finally:
            del self._origin[id(alerts)]
        if not stream.is_closing():
            stream.write(_frame((request_id, *reply)))


def _ingest_main(path: str) -> None:
    """Entry point of the ingest process."""
    from app.core.config import get_settings
    from app.core.logging import configure_logging

    # Ctrl-C in a terminal reaches the whole process group: `serve` stops its API processes
    # first (requests in flight still hand their alerts over), then stops this one. Left to
    # the default, it left first, and `serve` took that for a crash and started it again.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # its name in ps and top (Linux)
        Path("/proc/self/comm").write_text(PROCESS_NAME)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    parent = os.getppid()

    async def orphaned(stop: asyncio.Event) -> None:
        # `serve` killed outright never stops us: leave once it is gone.
        while os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)
                return
        stop.set()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        watch = asyncio.create_task(orphaned(stop))
        await IngestServer(settings, path).run(stop)
        watch.cancel()

    import uvloop

    uvloop.run(main())


class IngestProcess:
    """Starts the ingest process and starts it again if it dies, until `stop`."""

    def __init__(self) -> None:
        self.path = str(Path(tempfile.mkdtemp(prefix="crisisflow-")) / "ingest.sock")
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._supervise, name="crisisflow-ingest-watch",
                                       daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        self._process = self._context.Process(target=_ingest_main, args=(self.path,),
                                              name="crisisflow-ingest", daemon=True)
        self._process.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._process.join(timeout=0.2)
            if self._process.exitcode is not None and not self._stopping.is_set():
                log.error("the ingest process exited (code %s); starting it again",
                          self._process.exitcode)
                time.sleep(0.2)
                self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=35)
            if self._process.is_alive():
                self._process.kill()
        with contextlib.suppress(OSError):
            Path(self.path).parent.rmdir()
