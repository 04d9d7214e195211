"""The worker: delivers the outbox and fires due deadlines.

It runs inside `crisisflow serve` (one per serving process) or alone as `crisisflow worker`.
It wakes when a local transaction queues deliveries, and polls otherwise, so a due delivery is
attempted within a second even when another process wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from app.core.config import Settings
from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.deadlines.firing import fire_due
from app.incidents.service import Env
from app.notifications import delivery
from notifiers.base import DeliveryResult, NotifierContext, NotifierRegistry, make_http_client

log = logging.getLogger("crisisflow.worker")
BATCH = 100


class Worker:
    """Claims due deliveries up to `delivery_concurrency` in flight, sends each as its own task
    and records results in small batches, so one slow receiver never holds up the others."""

    def __init__(self, db: Database, settings: Settings, *,
                 registry: NotifierRegistry | None = None, name: str | None = None,
                 env: Env | None = None) -> None:
        self.db = db
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self) % 10000}"
        self._http = None if registry else make_http_client(settings)
        self.registry = registry or NotifierRegistry(
            NotifierContext(settings=settings, http=self._http)  # type: ignore[arg-type]
        )
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._results: asyncio.Queue[tuple[delivery.Claimed, DeliveryResult]] = asyncio.Queue()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.deadline_hooks: list[Callable[[Database], Awaitable[int]]] = []
        if env is not None:
            self.deadline_hooks.append(lambda db: fire_due(db, env))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.db.delivery_listeners.append(self.wake)
        self._recorder = asyncio.create_task(self._record_loop(), name="crisisflow-recorder")
        self._task = asyncio.create_task(self.run(), name="crisisflow-worker")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=15)
            except TimeoutError:
                self._task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=15)
        if self._recorder is not None:
            await self._results.join()
            self._recorder.cancel()
        if self.wake in self.db.delivery_listeners:
            self.db.delivery_listeners.remove(self.wake)
        await self.registry.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def run(self) -> None:
        log.info("worker %s started", self.name)
        while not self._stop.is_set():
            try:
                busy = await self._fire_deadlines() > 0
                busy = await self._dispatch() > 0 or busy
            except Exception as exc:
                self._log_failure(exc)
                busy = False
                await self._sleep(2.0)
            if not busy:
                await self._sleep(self.settings.worker_poll_seconds)
        log.info("worker %s stopped", self.name)

    def _log_failure(self, exc: Exception) -> None:
        if is_database_unavailable(exc):
            log.warning("worker: database unavailable, retrying")
        else:
            log.exception("worker cycle failed")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _fire_deadlines(self) -> int:
        fired = 0
        for hook in self.deadline_hooks:
            fired += await hook(self.db)
        return fired

    async def _dispatch(self) -> int:
        free = self.settings.delivery_concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        s = self.settings
        batch = await delivery.claim(self.db, self.name, min(free, BATCH),
                                     s.delivery_lease_seconds)
        for claimed in batch:
            task = asyncio.create_task(self._send(claimed))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(batch)

    async def _send(self, claimed: delivery.Claimed) -> None:
        [result] = await delivery.send_all(self.registry, [claimed], 1)
        await self._results.put((claimed, result))
        self._wake.set()

    async def _record_loop(self) -> None:
        """Write results in batches; a database outage keeps them queued until it is back."""
        while True:
            items = [await self._results.get()]
            while not self._results.empty() and len(items) < BATCH:
                items.append(self._results.get_nowait())
            while True:
                try:
                    await delivery.record(self.db, self.name, [c for c, _ in items],
                                          [r for _, r in items], self.settings.retry_window_seconds)
                    break
                except Exception as exc:
                    self._log_failure(exc)
                    await asyncio.sleep(1.0)
            for _ in items:
                self._results.task_done()
            self._wake.set()  # the next delivery of each chain is now due

    async def run_once(self) -> bool:
        """One synchronous cycle (tests, CLI): fire due deadlines, then claim, send and record
        one batch. True if there was work."""
        fired = await self._fire_deadlines()
        s = self.settings
        batch = await delivery.claim(self.db, self.name, BATCH, s.delivery_lease_seconds)
        if batch:
            results = await delivery.send_all(self.registry, batch, s.delivery_concurrency)
            await delivery.record(self.db, self.name, batch, results, s.retry_window_seconds)
        return bool(batch) or fired > 0

    async def drain(self, max_cycles: int = 50) -> None:
        """Run cycles until nothing is due."""
        for _ in range(max_cycles):
            if not await self.run_once():
                return


async def run_forever(settings: Settings) -> None:
    import signal

    from app.bootstrap import build_env, open_database

    db = open_database(settings)
    worker = Worker(db, settings, env=build_env(settings))
    worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await worker.stop()
        await db.dispose()
