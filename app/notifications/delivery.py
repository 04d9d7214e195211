"""Claiming, sending and recording deliveries (workflow.md, "Notifications").

1. claim: a short transaction marks up to N due deliveries as leased to this worker
   (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so workers never take the same row; SQLite has a
   single writer). Only the oldest pending delivery of each (subscription, incident) is due,
   which keeps an incident's events in order for every receiver. A lease that runs out
   (the worker crashed) makes the row claimable again.
2. send: outside any transaction, through the notifier, with bounded concurrency.
3. record: a short transaction stores every attempt and the next state: delivered, failed
   (a permanent 4xx), retried later (back-off with jitter, or Retry-After), or dead once the
   retry window has passed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.bulk import insert_rows, pipelined, update_rows
from app.core.clock import utcnow
from app.core.db import Database
from app.core.ids import new_id
from app.core.metrics import DELIVERIES, DELIVERY_SECONDS
from app.core.types import table_of
from app.notifications.models import Delivery, DeliveryAttempt, DeliveryStatus, Event, Subscription
from notifiers.base import DeliveryResult, Envelope, NotifierRegistry, Target

log = logging.getLogger("crisisflow.worker")

# Back-off after the 1st, 2nd, ... failure; then every 2 h until the window closes.
BACKOFF = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
BACKOFF_TAIL = 7200.0
JITTER = 0.2


def backoff_seconds(failures: int, rng: random.Random | None = None) -> float:
    base = BACKOFF[failures - 1] if failures <= len(BACKOFF) else BACKOFF_TAIL
    spread = base * JITTER
    return base + (rng or random).uniform(-spread, spread)


@dataclass(slots=True)
class Claimed:
    delivery_id: str
    attempts: int
    window_started_at: datetime
    notifier: str
    target: Target
    envelope: Envelope
    active: bool


d = table_of(Delivery)
ev = table_of(Event)
sub = table_of(Subscription)


def _due_statements() -> tuple[sa.Select[Any], sa.Select[Any], sa.Select[Any]]:
    """(probe, claim on SQLite, claim on PostgreSQL): built once, with the time and the
    batch size as parameters, so SQLAlchemy computes their cache keys once rather than on
    every worker cycle."""
    now = sa.bindparam("now", type_=d.c.next_attempt_at.type)
    pending = d.c.status == DeliveryStatus.pending.value
    # A delivery waits while an earlier one of its chain (subscription, incident) is pending:
    # only the first pending delivery of each chain may go. Numbered in one pass over the
    # pending deliveries, not tested one by one with NOT EXISTS: PostgreSQL planned that
    # test from statistics that lag a growing backlog (or say "empty" on a new database)
    # and read every pending delivery for every due one, so claims slowed as the backlog
    # grew, and the backlog grew faster (escalation at 100 alerts/s: 2-23 s, not 0.2 s).
    chains = (
        sa.select(d.c.id, sa.func.row_number().over(
            partition_by=(d.c.subscription_id, d.c.incident_id),
            order_by=d.c.event_seq).label("place"))
        .where(pending)
        .subquery("chains")
    )
    first = sa.select(chains.c.id).where(chains.c.place == 1)
    due = (
        sa.select(d.c.id)
        .where(
            pending,
            d.c.next_attempt_at <= now,
            sa.or_(d.c.claimed_until.is_(None), d.c.claimed_until < now),
            d.c.id.in_(first),
        )
        .order_by(d.c.next_attempt_at, d.c.event_seq)
    )
    batch = due.limit(sa.bindparam("batch", type_=sa.Integer))
    return due.limit(1), batch, batch.with_for_update(skip_locked=True, of=d)


_DUE_PROBE, _DUE, _DUE_LOCKED = _due_statements()
_CLAIM = (sa.update(d).where(d.c.id.in_(sa.bindparam("ids", expanding=True)))
          .values(claimed_until=sa.bindparam("until"), claimed_by=sa.bindparam("worker")))
_CLAIMED = (
    sa.select(d.c.id, d.c.attempts, d.c.window_started_at, ev.c.id.label("event_id"), ev.c.type,
              ev.c.at, ev.c.data, sub.c.id.label("sub_id"), sub.c.agency, sub.c.notifier,
              sub.c.target, sub.c.config, sub.c.secret, sub.c.active)
    .join(ev, ev.c.seq == d.c.event_seq)
    .join(sub, sub.c.id == d.c.subscription_id)
    .where(d.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(d.c.next_attempt_at, d.c.event_seq)
)


async def claim(db: Database, worker_id: str, limit: int, lease: float) -> list[Claimed]:
    now = utcnow()
    if not await db.any_row(_DUE_PROBE, {"now": now}):
        return []
    due = _DUE if db.is_sqlite else _DUE_LOCKED
    async with db.transaction() as session:
        ids = [r[0] for r in (await session.execute(due, {"now": now, "batch": limit})).all()]
        if not ids:
            return []
        await session.execute(_CLAIM, {"ids": ids, "worker": worker_id,
                                       "until": now + timedelta(seconds=lease)})
        rows = (await session.execute(_CLAIMED, {"ids": ids})).all()
    return [_claimed(r) for r in rows]


def _claimed(r: Any) -> Claimed:
    return Claimed(
        delivery_id=r.id,
        attempts=r.attempts,
        window_started_at=_aware(r.window_started_at),
        notifier=r.notifier,
        target=Target(subscription_id=r.sub_id, agency=r.agency, target=r.target,
                      config=r.config or {}, secret=r.secret),
        envelope=Envelope(delivery_id=r.id, event_id=r.event_id, type=r.type,
                          timestamp=_aware(r.at), data=r.data),
        active=bool(r.active),
    )


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def send_all(registry: NotifierRegistry, batch: list[Claimed],
                   concurrency: int) -> list[DeliveryResult]:
    gate = asyncio.Semaphore(concurrency)

    async def one(c: Claimed) -> DeliveryResult:
        if not c.active:
            return DeliveryResult(ok=False, permanent=True, error="subscription deleted")
        async with gate:
            try:
                return await registry.send(c.notifier, c.envelope, c.target)
            except KeyError as exc:  # the notifier's package was uninstalled
                return DeliveryResult(ok=False, error=str(exc))

    return list(await asyncio.gather(*(one(c) for c in batch)))


async def record(db: Database, worker_id: str, batch: list[Claimed],
                 results: list[DeliveryResult], window: float) -> None:
    """Each delivery's outcome and its attempt, for the whole batch in two statements (one
    round trip on PostgreSQL): recorded one by one, at 100 deliveries/s the worker spent
    more time recording than sending, and the backlog grew."""
    now = utcnow()
    changes: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for c, result in zip(batch, results, strict=True):
        values, outcome = _outcome(c, result, now, window)
        changes.append({"id": c.delivery_id, **values})
        attempts.append({"id": new_id(), "delivery_id": c.delivery_id, "at": now,
                         "outcome": outcome, "status_code": result.status_code,
                         "error": values["last_error"],
                         "duration_ms": round(result.duration_ms, 2), "worker": worker_id})
    async with db.transaction() as session, pipelined(session):
        await update_rows(session, d, sorted(changes, key=lambda r: r["id"]))
        await insert_rows(session, table_of(DeliveryAttempt), attempts)


def _outcome(c: Claimed, result: DeliveryResult, now: datetime, window: float
             ) -> tuple[dict[str, Any], str]:
    """The delivery's columns after this attempt, and the attempt's outcome."""
    attempts = c.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "claimed_until": None,
        "claimed_by": None,
        "last_status_code": result.status_code,
        "last_error": (result.error or None) and str(result.error)[:500],
    }
    if result.ok:
        outcome = "delivered"
        values.update(status=DeliveryStatus.delivered.value, delivered_at=now)
        DELIVERY_SECONDS.observe(max(0.0, (now - c.envelope.timestamp).total_seconds()))
    elif result.permanent:
        outcome = "failed"
        values["status"] = DeliveryStatus.failed.value
    else:
        delay = backoff_seconds(attempts)
        if result.retry_after is not None:
            delay = max(result.retry_after, 1.0)
        next_at = now + timedelta(seconds=delay)
        if next_at > c.window_started_at + timedelta(seconds=window):
            outcome = "dead"
            values["status"] = DeliveryStatus.dead.value
        else:
            outcome = "retry"
            values.update(status=DeliveryStatus.pending.value, next_attempt_at=next_at)
    DELIVERIES.labels(c.notifier, outcome).inc()
    if outcome in ("failed", "dead"):
        log.warning("delivery %s %s after %d attempts: %s", c.delivery_id, outcome, attempts,
                    values["last_error"], extra={"delivery_id": c.delivery_id,
                                                 "outcome": outcome})
    return values, outcome


async def backlog(session: AsyncSession) -> tuple[int, float]:
    """Deliveries waiting, and the age in seconds of the oldest one that is due."""
    now = utcnow()
    count, oldest = (await session.execute(
        sa.select(sa.func.count(),
                  sa.func.min(sa.case((d.c.next_attempt_at <= now, d.c.next_attempt_at))))
        .where(d.c.status == DeliveryStatus.pending.value)
    )).one()
    if oldest is None:
        return int(count), 0.0
    return int(count), max(0.0, (now - _aware(oldest)).total_seconds())
