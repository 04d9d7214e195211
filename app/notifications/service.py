"""Subscriptions and the delivery log."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.agencies.service import require_agencies
from app.core.clock import utcnow
from app.core.errors import Conflict, NotFound, ValidationProblem
from app.core.ids import new_id
from app.core.pagination import Page, decode_cursor, encode_cursor, keyset
from app.notifications.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryAttemptPublic,
    DeliveryPublic,
    DeliveryStatus,
    Event,
    Subscription,
    SubscriptionCreate,
    SubscriptionPublic,
)
from notifiers.base import NotifierRegistry


def subscription_public(row: Subscription) -> SubscriptionPublic:
    return SubscriptionPublic.model_validate(row, update={"has_secret": row.secret is not None})


async def create_subscription(session: AsyncSession, registry: NotifierRegistry,
                              item_in: SubscriptionCreate) -> SubscriptionPublic:
    await require_agencies(session, [item_in.agency], loc=["body", "agency"])
    try:
        notifier = registry.get(item_in.notifier)
    except KeyError:
        msg = f"unknown notifier {item_in.notifier!r}; available: {', '.join(registry.names())}"
        raise ValidationProblem(msg, [{"loc": ["body", "notifier"], "msg": msg}]) from None
    try:
        config = notifier.validate(item_in.target, item_in.config)
    except ValueError as exc:
        msg = str(exc)
        raise ValidationProblem(msg, [{"loc": ["body", "target"], "msg": msg}]) from None
    if item_in.secret is not None and item_in.notifier == "webhook":
        from app.auth.service import validate_signing_secret

        try:
            validate_signing_secret(item_in.secret)
        except ValueError as exc:
            msg = str(exc)
            raise ValidationProblem(msg, [{"loc": ["body", "secret"], "msg": msg}]) from None
    row = Subscription(
        id=new_id(),
        agency=item_in.agency,
        notifier=item_in.notifier,
        target=item_in.target,
        events=list(dict.fromkeys(item_in.events)),
        min_severity=item_in.min_severity,
        categories=list(dict.fromkeys(item_in.categories)) if item_in.categories else None,
        scope=item_in.scope,
        config=config,
        secret=item_in.secret,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return subscription_public(row)


async def list_subscriptions(session: AsyncSession, limit: int,
                             cursor: str | None) -> Page[SubscriptionPublic]:
    stmt = select(Subscription).where(Subscription.active == True)  # noqa: E712
    after = decode_cursor(cursor, 2)
    if after is not None:
        at = datetime.fromisoformat(str(after[0]))
        stmt = stmt.where(keyset(col(Subscription.created_at), col(Subscription.id),
                                 [at, str(after[1])], ascending=False))
    stmt = stmt.order_by(col(Subscription.created_at).desc(), col(Subscription.id).desc())
    rows = list((await session.exec(stmt.limit(limit + 1))).all())
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return Page(items=[subscription_public(r) for r in rows[:limit]], next_cursor=next_cursor)


async def delete_subscription(session: AsyncSession, subscription_id: str) -> None:
    row = await session.get(Subscription, subscription_id)
    if row is None or not row.active:
        raise NotFound(f"no subscription with id {subscription_id}")
    row.active = False
    row.deleted_at = utcnow()
    session.add(row)


async def list_deliveries(session: AsyncSession, *, status: str | None, incident_id: str | None,
                          limit: int, cursor: str | None) -> Page[DeliveryPublic]:
    stmt = (
        sa.select(Delivery, col(Event.id), col(Event.type), col(Subscription.agency),
                  col(Subscription.notifier))
        .join(Event, col(Event.seq) == Delivery.event_seq)
        .join(Subscription, col(Subscription.id) == Delivery.subscription_id)
    )
    if status:
        stmt = stmt.where(col(Delivery.status) == status)
    if incident_id:
        stmt = stmt.where(col(Delivery.incident_id) == incident_id)
    after = decode_cursor(cursor, 2)
    if after is not None:
        at = datetime.fromisoformat(str(after[0]))
        stmt = stmt.where(keyset(col(Delivery.created_at), col(Delivery.id), [at, str(after[1])],
                                 ascending=False))
    stmt = stmt.order_by(col(Delivery.created_at).desc(), col(Delivery.id).desc()).limit(limit + 1)
    rows = list((await session.execute(stmt)).tuples().all())
    page = rows[:limit]
    attempts: dict[str, list[DeliveryAttemptPublic]] = defaultdict(list)
    if page:
        ids = [r[0].id for r in page]
        for a in (await session.exec(
            select(DeliveryAttempt).where(col(DeliveryAttempt.delivery_id).in_(ids))
            .order_by(col(DeliveryAttempt.at), col(DeliveryAttempt.id))
        )).all():
            attempts[a.delivery_id].append(DeliveryAttemptPublic.model_validate(a))
    items = [
        DeliveryPublic(
            id=d.id, event_id=event_id, event_type=event_type, incident_id=d.incident_id,
            subscription_id=d.subscription_id, agency=agency, notifier=notifier, status=d.status,
            attempt_count=d.attempts,
            next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.pending else None,
            last_error=d.last_error, last_status_code=d.last_status_code,
            created_at=d.created_at, delivered_at=d.delivered_at, attempts=attempts[d.id],
        )
        for d, event_id, event_type, agency, notifier in page
    ]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return Page(items=items, next_cursor=next_cursor)


async def retry_delivery(session: AsyncSession, delivery_id: str) -> None:
    row = await session.get(Delivery, delivery_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no notification with id {delivery_id}")
    if row.status not in (DeliveryStatus.failed, DeliveryStatus.dead):
        raise Conflict(f"only failed or dead notifications can be retried; this one is "
                       f"{row.status.value}")
    now = utcnow()
    # A manual retry opens a fresh retry window from now.
    await session.execute(
        sa.update(Delivery).where(col(Delivery.id) == delivery_id).values(
            status=DeliveryStatus.pending.value, next_attempt_at=now, window_started_at=now,
            claimed_until=None, claimed_by=None)
    )
