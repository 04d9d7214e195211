"""SLA clocks: started when an incident enters a state, met by named triggers, re-timed
when severity changes. Firing due ones is the worker's job (app/deadlines/firing.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.ids import new_id
from app.core.types import unvalidated
from app.deadlines.models import Deadline
from app.incidents.models import Incident
from workflows.engine import Workflow
from workflows.sla import Overrides


def _due(wf: Workflow, clock: str, severity: str, start: datetime,
         overrides: Overrides) -> datetime | None:
    seconds = wf.deadline_seconds(clock, severity, overrides)
    return None if seconds is None else start + timedelta(seconds=seconds)


async def open_deadlines(session: AsyncSession, incident_id: str) -> list[Deadline]:
    stmt = select(Deadline).where(
        Deadline.incident_id == incident_id, col(Deadline.met_at).is_(None)
    )
    return list((await session.exec(stmt)).all())


async def start_for_state(session: AsyncSession, wf: Workflow, incident: Incident, state: str,
                          now: datetime, overrides: Overrides) -> list[Deadline]:
    """Start the clocks of `state`, each in the cycle after its last one."""
    started = []
    for spec in wf.deadlines.values():
        if spec.starts_in != state:
            continue
        cycles = await session.exec(
            select(Deadline.cycle).where(
                Deadline.incident_id == incident.id, Deadline.clock == spec.clock
            )
        )
        cycle = max(cycles.all(), default=0) + 1
        deadline = Deadline(**_values(wf, spec.clock, cycle, incident, now, overrides))
        session.add(deadline)
        started.append(deadline)
    return started


def _values(wf: Workflow, clock: str, cycle: int, incident: Incident, now: datetime,
            overrides: Overrides) -> dict[str, Any]:
    return {"id": new_id(), "incident_id": incident.id, "clock": clock, "cycle": cycle,
            "started_at": now,
            "due_at": _due(wf, clock, incident.severity.value, now, overrides)}


def initial(wf: Workflow, incident: Incident, now: datetime,
            overrides: Overrides) -> list[Deadline]:
    """The clocks a new incident starts with, for a bulk insert with a Core statement
    (`row_of`); never added to a session."""
    return [unvalidated(Deadline, _values(wf, spec.clock, 1, incident, now, overrides))
            for spec in wf.deadlines.values() if spec.starts_in == wf.initial]


def retime(wf: Workflow, incident: Incident, pending: list[Deadline],
           overrides: Overrides) -> None:
    """Re-time open clocks for the incident's current severity."""
    for d in pending:
        if d.met_at is None:
            d.due_at = _due(wf, d.clock, incident.severity.value, d.started_at, overrides)


async def on_trigger(session: AsyncSession, wf: Workflow, incident: Incident, trigger: str,
                     entered: str | None, now: datetime, overrides: Overrides) -> None:
    """Meet the clocks `trigger` stops, start those of the entered state, re-time the rest
    for the current severity, then refresh the incident's `deadline_at` and `overdue`."""
    met_clocks = {d.clock for d in wf.deadlines.values() if trigger in d.met_by}
    pending = []
    for d in await open_deadlines(session, incident.id):
        if d.clock in met_clocks:
            d.met_at = now
        else:
            pending.append(d)
        session.add(d)
    retime(wf, incident, pending, overrides)
    if entered is not None:
        pending += await start_for_state(session, wf, incident, entered, now, overrides)
    summarize(incident, pending)


async def refresh(session: AsyncSession, incident: Incident, now: datetime) -> None:
    summarize(incident, await open_deadlines(session, incident.id))


def summarize(incident: Incident, pending: list[Deadline]) -> None:
    """Set `deadline_at` (the nearest open deadline) and `overdue` from the open clocks."""
    due = [d.due_at for d in pending if d.due_at is not None]
    incident.deadline_at = min(due) if due else None
    incident.overdue = any(d.fired_at is not None for d in pending)
