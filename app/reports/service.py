"""Figures for leadership: counts and medians (`/stats`) and the spokesperson report that
Decree 244/2026 asks of every ministry and province (`/reports/spokesperson`)."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.models import Role
from app.auth.service import Principal
from app.core.types import table_of
from app.deadlines.models import Deadline
from app.incidents.models import Incident, IncidentAgency, State
from app.reports.models import ReportRow, SpokespersonReport, Stats

UNASSIGNED = "unassigned"


def _scope(stmt: Any, principal: Principal, agency: str | None = None) -> Any:
    i = table_of(Incident)
    ia = table_of(IncidentAgency)
    codes = [a for a in (agency, principal.agency if principal.role == Role.viewer else None) if a]
    for code in codes:
        stmt = stmt.where(sa.exists().where(ia.c.incident_id == i.c.id, ia.c.agency == code))
    return stmt


def _median_minutes(pairs: list[tuple[datetime, datetime]]) -> float | None:
    minutes = [(end - start).total_seconds() / 60 for start, end in pairs if end >= start]
    return round(statistics.median(minutes), 1) if minutes else None


async def stats(session: AsyncSession, principal: Principal) -> Stats:
    i = table_of(Incident)
    counts: dict[str, dict[str, int]] = {}
    for column in ("state", "severity", "category"):
        rows = await session.execute(
            _scope(sa.select(i.c[column], sa.func.count()).group_by(i.c[column]), principal))
        counts[column] = {str(k): int(n) for k, n in rows.all()}
    overdue = (await session.execute(_scope(
        sa.select(sa.func.count()).select_from(i)
        .where(i.c.overdue.is_(True), i.c.state != State.closed.value), principal))).scalar_one()
    assess = (await session.execute(_scope(
        sa.select(i.c.created_at, i.c.assessed_at).where(i.c.assessed_at.is_not(None)),
        principal))).all()
    respond = (await session.execute(_scope(
        sa.select(i.c.created_at, i.c.first_response_at)
        .where(i.c.first_response_at.is_not(None)), principal))).all()
    return Stats(
        by_state=counts["state"], by_severity=counts["severity"], by_category=counts["category"],
        total=sum(counts["state"].values()), open_overdue=int(overdue),
        median_minutes_to_assess=_median_minutes([(a, b) for a, b in assess]),
        median_minutes_to_first_response=_median_minutes([(a, b) for a, b in respond]),
    )


async def spokesperson(session: AsyncSession, principal: Principal, start: datetime,
                       end: datetime, agency: str | None) -> SpokespersonReport:
    i = table_of(Incident)
    d = table_of(Deadline)
    first_due = (
        sa.select(d.c.due_at)
        .where(d.c.incident_id == i.c.id, d.c.clock == "first_response")
        .order_by(d.c.cycle).limit(1).scalar_subquery()
    )
    stmt = _scope(
        sa.select(i.c.lead_agency, i.c.created_at, i.c.first_response_at, first_due.label("due"))
        .where(i.c.created_at >= start, i.c.created_at < end),
        principal, agency,
    )
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in (await session.execute(stmt)).all():
        groups[row.lead_agency or UNASSIGNED].append(row)
    rows = []
    for lead in sorted(groups):
        items = groups[lead]
        answered = [r for r in items if r.first_response_at is not None]
        on_time = [r for r in answered if r.due is None or r.first_response_at <= r.due]
        rows.append(ReportRow(
            agency=lead,
            incidents=len(items),
            incidents_with_response=len(answered),
            first_responses_on_time=len(on_time),
            median_minutes_to_first_response=_median_minutes(
                [(r.created_at, r.first_response_at) for r in answered]),
        ))
    return SpokespersonReport(from_=start, to=end, rows=rows)


def default_period(now: datetime, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    return local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)


def report_csv(report: SpokespersonReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["agency", "incidents", "incidents_with_response",
                     "first_responses_on_time", "median_minutes_to_first_response"])
    for r in report.rows:
        median = "" if r.median_minutes_to_first_response is None \
            else r.median_minutes_to_first_response
        writer.writerow([r.agency, r.incidents, r.incidents_with_response,
                         r.first_responses_on_time, median])
    return out.getvalue()
