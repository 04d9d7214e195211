"""Emitting events: each becomes an `event` row plus one `delivery` row per matching
subscription, in the caller's transaction (the transactional outbox).

Rows are inserted with Core statements, a whole list at a time: an alert storm opens many
incidents in one group commit, and each of them emits `incident.detected`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.bulk import insert_returning, insert_rows
from app.core.db import after_commit
from app.core.ids import new_id
from app.core.types import table_of
from app.notifications.models import Event

EventRow = dict[str, Any]


def event_row(*, type: str, at: datetime, incident: dict[str, Any] | None,
              extra: dict[str, Any] | None = None, dedup_key: str | None = None) -> EventRow:
    data: dict[str, Any] = {"incident": incident} if incident is not None else {}
    data.update(extra or {})
    agencies: list[str] = []
    severity = None
    if incident is not None:
        agencies = [a for a in [incident.get("lead_agency"), *incident.get("affected_agencies", [])]
                    if a]
        severity = incident.get("severity")
    return {
        "id": new_id(),
        "incident_id": incident.get("id") if incident else None,
        "type": type,
        "at": at,
        "agencies": sorted(set(agencies)),
        "severity": severity,
        "data": data,
        "dedup_key": dedup_key,
    }


async def emit(session: AsyncSession, *, type: str, at: datetime,
               incident: dict[str, Any] | None, extra: dict[str, Any] | None = None,
               dedup_key: str | None = None) -> None:
    await emit_rows(session, [event_row(type=type, at=at, incident=incident, extra=extra,
                                        dedup_key=dedup_key)])


async def emit_rows(session: AsyncSession, rows: list[EventRow]) -> None:
    """Insert events in list order (their `seq` follows it) and their deliveries."""
    if not rows:
        return
    from app.notifications.fanout import fan_out, matching

    matched = await matching(session, rows)
    if any(matched):
        # Matched by id: a multi-row INSERT ... RETURNING need not return rows in their order.
        inserted = await insert_returning(session, table_of(Event), rows, ("id", "seq"),
                                          omit=("seq",))
        seq_of = dict(inserted)
        queued = await fan_out(session, rows, [seq_of[row["id"]] for row in rows], matched)
    else:
        # Nothing to deliver needs their sequence numbers: no round trip to read them back.
        await insert_rows(session, table_of(Event), rows, omit=("seq",))
        queued = 0
    # Once per transaction: after it commits, wake the live feed, and the worker if there is
    # something to deliver.
    for hook, wanted in (("events_committed", True), ("deliveries_committed", queued > 0)):
        wake = session.info.get(hook)
        if wanted and wake is not None and not session.info.get(f"{hook}:registered"):
            session.info[f"{hook}:registered"] = True
            after_commit(session, wake)
