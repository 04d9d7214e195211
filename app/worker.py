"""The worker: delivers the outbox and fires due deadlines.

It runs inside `crisisflow serve` (one per serving process) or alone as `crisisflow worker`.
It wakes when a local transaction commits events, and polls otherwise, so a due delivery is
attempted within a second even when another process wrote it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from app.core.config import Settings
from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.notifications import delivery
from notifiers.base import NotifierContext, NotifierRegistry, make_http_client

log = logging.getLogger("crisisflow.worker")
BATCH = 100


class Worker:
    def __init__(self, db: Database, settings: Settings, *,
                 registry: NotifierRegistry | None = None, name: str | None = None) -> None:
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
        self.deadline_hooks: list[Any] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.db.event_listeners.append(self.wake)
        self._task = asyncio.create_task(self.run(), name="crisisflow-worker")

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=15)
            except TimeoutError:
                self._task.cancel()
        if self.wake in self.db.event_listeners:
            self.db.event_listeners.remove(self.wake)
        await self.registry.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def run(self) -> None:
        log.info("worker %s started", self.name)
        while not self._stop.is_set():
            try:
                busy = await self.run_once()
            except Exception as exc:
                if is_database_unavailable(exc):
                    log.warning("worker: database unavailable, retrying")
                else:
                    log.exception("worker cycle failed")
                busy = False
                await self._sleep(2.0)
            if not busy:
                await self._sleep(self.settings.worker_poll_seconds)
        log.info("worker %s stopped", self.name)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def run_once(self) -> bool:
        """One cycle: fire due deadlines, then deliver one batch. True if there was work."""
        fired = 0
        for hook in self.deadline_hooks:
            fired += await hook(self.db)
        return await self.deliver_batch() > 0 or fired > 0

    async def deliver_batch(self) -> int:
        s = self.settings
        batch = await delivery.claim(self.db, self.name, BATCH, s.delivery_lease_seconds)
        if not batch:
            return 0
        results = await delivery.send_all(self.registry, batch, s.delivery_concurrency)
        await delivery.record(self.db, self.name, batch, results, s.retry_window_seconds)
        return len(batch)

    async def drain(self, max_cycles: int = 50) -> None:
        """Run cycles until nothing is due (tests and the CLI)."""
        for _ in range(max_cycles):
            if not await self.run_once():
                return


async def run_forever(settings: Settings) -> None:
    from app.bootstrap import open_database

    import signal

    db = open_database(settings)
    worker = Worker(db, settings)
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
