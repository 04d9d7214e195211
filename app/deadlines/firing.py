"""Firing missed deadlines: `incident.overdue`, then the escalation level up by one (at most
2) with `incident.escalated` (reason `overdue`). Each deadline fires exactly once: the row is
claimed with `UPDATE ... WHERE fired_at IS NULL` under the incident's lock, and the events
carry unique keys, so restarts, several workers or a late start cannot fire it twice."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.clock import utcnow
from app.core.db import Database
from app.core.metrics import OVERDUE
from app.core.types import table_of
from app.deadlines import service as deadlines
from app.deadlines.models import Deadline
from app.incidents import service as incidents
from app.incidents import timeline
from app.incidents.models import Incident, State
from app.notifications.outbox import emit

log = logging.getLogger("crisisflow.deadlines")
MAX_LEVEL = 2
BATCH = 50


async def fire_due(db: Database, env: incidents.Env) -> int:
    """Fire every due deadline (in batches); returns how many fired."""
    fired = 0
    while True:
        try:
            n = await _fire_batch(db, env)
        except IntegrityError:
            # Another worker fired one of these first; its transaction won. Look again.
            continue
        fired += n
        if n < BATCH:
            return fired


def _due_statements() -> tuple[sa.Select[Any], sa.Select[Any], sa.Select[Any]]:
    """(probe, batch on SQLite, batch on PostgreSQL), built once: the worker asks every
    cycle, and a statement built per call costs SQLAlchemy a new cache key each time."""
    d = table_of(Deadline)
    due = (
        sa.select(d.c.id, d.c.incident_id)
        .where(d.c.fired_at.is_(None), d.c.met_at.is_(None),
               d.c.due_at <= sa.bindparam("now", type_=d.c.due_at.type))
        .order_by(d.c.due_at)
    )
    batch = due.limit(BATCH)
    return due.limit(1), batch, batch.with_for_update(skip_locked=True)


_DUE_PROBE, _DUE, _DUE_LOCKED = _due_statements()


async def _fire_batch(db: Database, env: incidents.Env) -> int:
    now = utcnow()
    d = table_of(Deadline)
    if not await db.any_row(_DUE_PROBE, {"now": now}):
        return 0
    count = 0
    async with db.transaction() as session:
        rows = (await session.execute(_DUE if db.is_sqlite else _DUE_LOCKED,
                                      {"now": now})).all()
        for deadline_id, incident_id in sorted(rows, key=lambda r: r[1]):
            inc = (await session.exec(
                select(Incident).where(Incident.id == incident_id).with_for_update()
            )).one()
            claimed = await session.execute(
                sa.update(d)
                .where(d.c.id == deadline_id, d.c.fired_at.is_(None), d.c.met_at.is_(None))
                .values(fired_at=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue
            deadline = await session.get(Deadline, deadline_id)
            assert deadline is not None
            await _escalate(session, env, inc, deadline, now)
            count += 1
    if count:
        log.info("fired %d deadline(s)", count)
    return count


async def _escalate(session: AsyncSession, env: incidents.Env, inc: Incident,
                    deadline: Deadline, now: datetime) -> None:
    due_at = deadline.due_at.isoformat() if deadline.due_at else None
    timeline.append(session, inc, at=now, actor="system", kind="overdue",
                    data={"clock": deadline.clock, "due_at": due_at})
    previous = inc.escalation_level
    inc.escalation_level = min(MAX_LEVEL, previous + 1)
    await session.flush()
    await deadlines.refresh(session, inc, now)
    session.add(inc)
    await session.flush()
    snapshot = incidents.snapshot(inc)
    await emit(session, type="incident.overdue", at=now, incident=snapshot,
               extra={"clock": deadline.clock, "due_at": due_at},
               dedup_key=f"overdue:{deadline.id}")
    if inc.escalation_level > previous:
        await emit(session, type="incident.escalated", at=now, incident=snapshot,
                   extra={"reason": "overdue", "clock": deadline.clock,
                          "level": inc.escalation_level, "previous_level": previous},
                   dedup_key=f"escalated:{deadline.id}")


async def overdue_count(db: Database) -> int:
    async with db.read() as session:
        n = (await session.exec(
            select(sa.func.count()).select_from(Incident)
            .where(Incident.overdue == True, col(Incident.state) != State.closed.value)  # noqa: E712
        )).one()
    OVERDUE.set(int(n))
    return int(n)
