"""Which subscriptions receive an event (workflow.md, "Notifications" and escalation levels).

A subscription matches an event of a type it names, at or above its minimum severity, in one
of its categories (if it names any), and within its scope: `all`, or `involved` when its
agency is the incident's lead or an affected agency. Escalation adds recipients of
`incident.escalated` whatever their scope: from level 1 the communications authority's
subscriptions, from level 2 also the Government Office's. It never removes any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.bulk import driver, insert_rows
from app.core.ids import new_id
from app.core.jsonutil import loads
from app.core.types import table_of
from app.notifications.models import Delivery, DeliveryStatus
from workflows.registry import SEVERITY_RANK

ESCALATED = "incident.escalated"


@dataclass(frozen=True, slots=True)
class Authorities:
    communications: str = "MIC"
    government_office: str = "VPCP"


@dataclass(frozen=True, slots=True)
class Routing:
    """What matching reads of an active subscription."""

    id: str
    agency: str
    events: list[str]
    min_severity: str | None
    categories: list[str] | None
    scope: str


def matches(sub: Routing, event_type: str, incident: dict[str, Any], level: int,
            authorities: Authorities) -> bool:
    if event_type not in sub.events:
        return False
    severity = incident.get("severity")
    if sub.min_severity and severity and SEVERITY_RANK[severity] < SEVERITY_RANK[sub.min_severity]:
        return False
    if sub.categories and incident.get("category") not in sub.categories:
        return False
    if sub.scope == "all":
        return True
    involved = {incident.get("lead_agency"), *incident.get("affected_agencies", [])}
    if sub.agency in involved:
        return True
    if event_type == ESCALATED:
        if level >= 1 and sub.agency == authorities.communications:
            return True
        if level >= 2 and sub.agency == authorities.government_office:
            return True
    return False


_ACTIVE = ("SELECT id, agency, events, min_severity, categories, scope FROM subscription "
           "WHERE active")


def _json(value: Any) -> Any:
    # SQLite hands JSON back as its text; PostgreSQL's driver has parsed it already.
    return loads(value) if isinstance(value, str) else value


_SUBSCRIPTIONS = "subscriptions"


def unread(session: AsyncSession) -> list[tuple[str, tuple[()]]]:
    """The query of active subscriptions if this transaction has not read them yet, for a
    caller that sends it with statements of its own (one round trip) and hands its rows to
    `remember`."""
    return [] if _SUBSCRIPTIONS in session.info else [(_ACTIVE, ())]


def remember(session: AsyncSession, rows: list[Any]) -> None:
    session.info[_SUBSCRIPTIONS] = [
        Routing(i, agency, _json(events), floor, _json(categories), scope)
        for i, agency, events, floor, categories, scope in rows]


async def _active_subscriptions(session: AsyncSession) -> list[Routing]:
    # Loaded once per transaction (a batch of alerts emits many events), through the driver:
    # in every group commit that opens incidents, SQLAlchemy's handling of this one query
    # cost several times what the database takes to answer it.
    if _SUBSCRIPTIONS not in session.info:
        remember(session, await (await driver(session)).execute(_ACTIVE, ()))
    cached: list[Routing] = session.info[_SUBSCRIPTIONS]
    return cached


async def matching(session: AsyncSession, events: list[dict[str, Any]]
                   ) -> list[list[Routing]]:
    """The subscriptions each event (a row of the `event` table) is delivered to."""
    subs = await _active_subscriptions(session)
    if not subs:
        return [[] for _ in events]
    authorities: Authorities = session.info.get("authorities") or Authorities()
    found = []
    for event in events:
        incident = event["data"].get("incident") or {}
        level = int(event["data"].get("level", incident.get("escalation_level", 0)) or 0)
        found.append([s for s in subs if matches(s, event["type"], incident, level,
                                                   authorities)])
    return found


async def fan_out(session: AsyncSession, events: list[dict[str, Any]], seqs: list[int],
                  matched: list[list[Routing]]) -> int:
    """Add one pending delivery per matching subscription of each event (rows of the `event`
    table, with their sequence numbers and `matching` subscriptions), in the caller's
    transaction."""
    rows: list[dict[str, Any]] = []
    for event, seq, subs in zip(events, seqs, matched, strict=True):
        at = event["at"]
        rows.extend(
            {"id": new_id(), "event_seq": seq, "subscription_id": s.id,
             "incident_id": event["incident_id"], "status": DeliveryStatus.pending.value,
             "attempts": 0, "next_attempt_at": at, "claimed_until": None, "claimed_by": None,
             "last_error": None, "last_status_code": None, "created_at": at,
             "window_started_at": at, "delivered_at": None}
            for s in subs
        )
    if rows:
        await insert_rows(session, table_of(Delivery), rows)
    return len(rows)
