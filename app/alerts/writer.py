"""Group commit for alert ingestion: concurrent requests are merged into one transaction.

A storm is thousands of small requests; committing each alone would make the database's
commit (an fsync) the bottleneck. The writer takes every request waiting in its queue, runs
each inside a savepoint of one shared transaction (so each request stays all-or-nothing),
commits once, and only then answers: a 202 still means the alert is durably stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app.alerts import service
from app.alerts.models import AlertResult, WebhookReceipt
from app.alerts.parsers import ParsedAlert
from app.core.clock import utcnow
from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.core.types import table_of

log = logging.getLogger("crisisflow.ingest")
MAX_GROUP_ALERTS = 2000
MAX_WEBHOOK_ID = 200  # webhook_receipt.webhook_id


def receipt_key(webhook_id: str) -> str:
    """The stored form of a `webhook-id`: as sent, or a digest when it would not fit."""
    if len(webhook_id) <= MAX_WEBHOOK_ID:
        return webhook_id
    return "sha256:" + hashlib.sha256(webhook_id.encode()).hexdigest()


@dataclass
class _Request:
    alerts: list[ParsedAlert]
    actor: str
    key_id: str
    webhook_id: str | None
    done: asyncio.Future[tuple[list[AlertResult], bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class IngestWriter:
    def __init__(self, db: Database, env: Any, group_by: list[str], raw_max_bytes: int) -> None:
        self.db = db
        self.env = env
        self.group_by = group_by
        self.raw_max_bytes = raw_max_bytes
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="crisisflow-ingest")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, alerts: list[ParsedAlert], actor: str, key_id: str,
                     webhook_id: str | None = None) -> tuple[list[AlertResult], bool]:
        """Store the alerts; returns their results and whether this was a replayed webhook."""
        if self._task is None:  # no writer running (CLI, some tests): one transaction alone
            return await self._write([_Request(alerts, actor, key_id, webhook_id)], single=True)
        request = _Request(alerts, actor, key_id, webhook_id)
        await self._queue.put(request)
        return await request.done

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            size = len(group[0].alerts)
            while not self._queue.empty() and size < MAX_GROUP_ALERTS:
                nxt = self._queue.get_nowait()
                group.append(nxt)
                size += len(nxt.alerts)
            try:
                await self._write(group)
            except Exception as exc:  # the commit itself failed: every request in it fails
                for r in group:
                    if not r.done.done():
                        r.done.set_exception(exc)

    async def _write(self, group: list[_Request], *, single: bool = False
                     ) -> tuple[list[AlertResult], bool]:
        outcomes: list[tuple[_Request, Any]] = []
        async with self.db.transaction() as session:
            for request in group:
                try:
                    async with session.begin_nested():
                        outcomes.append((request, await self._one(session, request)))
                except Exception as exc:
                    if single or is_database_unavailable(exc):
                        raise  # the whole group fails: its transaction is gone
                    outcomes.append((request, exc))
        if single:
            return outcomes[0][1]  # type: ignore[no-any-return]
        for request, outcome in outcomes:
            if request.done.done():
                continue
            if isinstance(outcome, BaseException):
                request.done.set_exception(outcome)
            else:
                request.done.set_result(outcome)
        return [], False

    async def _one(self, session: Any, request: _Request) -> tuple[list[AlertResult], bool]:
        now = utcnow()
        receipts = table_of(WebhookReceipt)
        webhook_id = None if request.webhook_id is None else receipt_key(request.webhook_id)
        if webhook_id is not None:
            stored = (await session.execute(
                sa.select(receipts.c.result).where(receipts.c.principal == request.key_id,
                                                   receipts.c.webhook_id == webhook_id)
            )).scalar_one_or_none()
            if stored is not None:
                return [AlertResult.model_validate(r) for r in stored["results"]], True
        ctx = service.IngestContext(env=self.env, group_by=self.group_by,
                                    raw_max_bytes=self.raw_max_bytes, actor=request.actor,
                                    key_id=request.key_id, now=now)
        results = await service.ingest(session, ctx, request.alerts)
        if webhook_id is not None:
            try:
                async with session.begin_nested():
                    session.add(WebhookReceipt(principal=request.key_id,
                                               webhook_id=webhook_id,
                                               result=service.result_body(results),
                                               created_at=now))
                    await session.flush()
            except IntegrityError:  # another process took this webhook-id first
                raise DuplicateWebhook() from None
        return results, False


class DuplicateWebhook(Exception):
    """A concurrent request with the same webhook-id won; the caller retries to replay it."""
