"""The live feed: Server-Sent Events read from the `event` table.

Events are sent in `seq` order with `id: <seq>`, so a client that reconnects with
`Last-Event-ID` resumes without gaps. On PostgreSQL a sequence number is taken at insert but
becomes visible at commit, so a lower number can appear after a higher one: the feed holds
back events behind such a hole for a short while (a hole that stays is a rolled-back
transaction) rather than skip past an event that is about to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from app.auth.models import Role
from app.auth.service import Principal
from app.core.db import Database
from app.core.jsonutil import dumps
from app.core.types import table_of
from app.notifications.models import Event

HOLE_WAIT_SECONDS = 2.0
BATCH = 500


class Broadcaster:
    """Wakes every open stream when a local transaction commits events."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def wait(self, seconds: float) -> None:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), seconds)
        finally:
            self._waiters.discard(waiter)


def visible_to(principal: Principal, agencies: list[str]) -> bool:
    if principal.role != Role.viewer or principal.agency is None:
        return True
    return principal.agency in agencies


def format_event(seq: int, type_: str, payload: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, type_.encode(), dumps(payload))


async def latest_seq(db: Database) -> int:
    async with db.read() as session:
        value = (await session.execute(sa.select(sa.func.max(table_of(Event).c.seq)))).scalar()
    return int(value or 0)


async def stream(db: Database, broadcaster: Broadcaster, principal: Principal, after: int,
                 heartbeat: float, poll: float = 1.0) -> AsyncIterator[bytes]:
    e = table_of(Event)
    cursor = after
    hole_since: float | None = None
    last_sent = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        async with db.read() as session:
            rows = (await session.execute(
                sa.select(e.c.seq, e.c.id, e.c.type, e.c.at, e.c.agencies, e.c.data)
                .where(e.c.seq > cursor).order_by(e.c.seq).limit(BATCH)
            )).all()
        for row in rows:
            if row.seq != cursor + 1:
                if hole_since is None:
                    hole_since = time.monotonic()
                if time.monotonic() - hole_since < HOLE_WAIT_SECONDS:
                    break  # wait for the missing number to commit (or never appear)
            hole_since = None
            cursor = row.seq
            if visible_to(principal, list(row.agencies or [])):
                payload = {"type": row.type, "id": row.id, "timestamp": row.at.isoformat(),
                           "data": row.data}
                yield format_event(row.seq, row.type, payload)
                last_sent = time.monotonic()
        if time.monotonic() - last_sent >= heartbeat:
            yield b": heartbeat\n\n"
            last_sent = time.monotonic()
        if len(rows) < BATCH or hole_since is not None:
            await broadcaster.wait(min(poll, heartbeat, 0.25 if hole_since else poll))
