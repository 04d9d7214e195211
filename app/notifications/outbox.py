"""Emitting events: each becomes an `event` row plus one `delivery` row per matching
subscription, in the caller's transaction (the transactional outbox)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import after_commit
from app.core.ids import new_id
from app.notifications.models import Event


async def emit(
    session: AsyncSession,
    *,
    type: str,
    at: datetime,
    incident: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
    dedup_key: str | None = None,
) -> Event:
    data: dict[str, Any] = {"incident": incident} if incident is not None else {}
    data.update(extra or {})
    agencies: list[str] = []
    severity = None
    if incident is not None:
        agencies = [a for a in [incident.get("lead_agency"), *incident.get("affected_agencies", [])]
                    if a]
        severity = incident.get("severity")
    event = Event(
        id=new_id(),
        incident_id=incident.get("id") if incident else None,
        type=type,
        at=at,
        agencies=sorted(set(agencies)),
        severity=severity,
        data=data,
        dedup_key=dedup_key,
    )
    session.add(event)
    from app.notifications.fanout import fan_out

    await fan_out(session, event, incident or {})
    # Once per transaction: after it commits, wake the worker and the live feed.
    wake = session.info.get("events_committed")
    if wake is not None and not session.info.get("wake_registered"):
        session.info["wake_registered"] = True
        after_commit(session, wake)
    return event
