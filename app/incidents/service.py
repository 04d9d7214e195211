"""Incidents: open, read, edit, and drive through their workflow.

Services never commit: the caller's transaction boundary does. Every change to an incident
happens with its row locked (FOR UPDATE on PostgreSQL; SQLite's single writer elsewhere),
so the state, the version, the timeline chain and the outbox rows move together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.agencies.service import require_agencies
from app.auth.models import Role
from app.auth.service import Principal
from app.core.bulk import driver, insert_rows
from app.core.clock import utcnow
from app.core.errors import (
    Conflict,
    Forbidden,
    GuardFailed,
    InvalidTransition,
    NotFound,
    PreconditionFailed,
    ValidationProblem,
    validation_errors,
)
from app.core.ids import new_id
from app.core.jsonutil import loads
from app.core.metrics import TRANSITIONS
from app.core.pagination import Page, decode_cursor, encode_cursor, keyset
from app.core.rawrows import json_objects
from app.core.types import constructed, row_of, table_of, unvalidated
from app.deadlines import service as deadlines
from app.deadlines.models import Deadline
from app.incidents import timeline
from app.incidents.actions import ActionContext, latest_proposal
from app.incidents.models import (
    Incident,
    IncidentAgency,
    IncidentCreate,
    IncidentPublic,
    IncidentUpdate,
    Proposal,
    ProposalPublic,
    State,
    TimelineEntry,
    TimelineEntryPublic,
)
from app.incidents.search import fold, like_pattern, search_clause, search_text
from app.notifications import fanout
from app.notifications.outbox import EventRow, emit, emit_rows, event_row
from workflows.engine import GuardRefused, InvalidTrigger, Workflow, WorkflowRegistry
from workflows.registry import ACTIONS, GuardContext
from workflows.sla import Overrides


@dataclass(frozen=True)
class Env:
    """What the incident service needs from the running app."""

    workflows: WorkflowRegistry
    overrides: Overrides
    zone: ZoneInfo
    dialect: str


# -- reading ----------------------------------------------------------------------------

def in_scope(principal: Principal | None, incident: Incident) -> bool:
    """Agency-scoped viewers see only incidents naming their agency."""
    if principal is None or principal.role != Role.viewer or principal.agency is None:
        return True
    agency = principal.agency
    return agency == incident.lead_agency or agency in incident.affected_agencies


def guard_context(wf: Workflow, inc: Incident, proposal: Proposal | None,
                  payload: dict[str, Any] | None = None) -> GuardContext:
    return GuardContext(
        state=inc.state.value,
        severity=inc.severity.value,
        lead_agency=inc.lead_agency,
        affected_agencies=list(inc.affected_agencies),
        latest_proposal_status=proposal.status.value if proposal else None,
        settings=wf.settings,
        payload=payload or {},
    )


_SNAPSHOT_FIELDS = tuple(f for f in IncidentPublic.model_fields if f != "allowed_triggers")
_PUBLIC_JSON = IncidentPublic.__pydantic_serializer__


def snapshot(inc: Incident) -> dict[str, Any]:
    """The incident as GET returns it, minus the caller-specific `allowed_triggers`."""
    # The table object's values are already of the public types (IncidentPublic has no
    # validators), so they are serialised without validating them again: every incident a
    # storm opens takes a snapshot for its `incident.detected` event.
    values = {k: getattr(inc, k) for k in _SNAPSHOT_FIELDS}
    values["allowed_triggers"] = None
    public = constructed(IncidentPublic, values)
    data: dict[str, Any] = _PUBLIC_JSON.to_python(public, mode="json",
                                                  exclude={"allowed_triggers"})
    return data


async def to_public(session: AsyncSession, env: Env, inc: Incident,
                    principal: Principal | None) -> IncidentPublic:
    public = IncidentPublic.model_validate(inc)
    if principal is not None:
        wf = env.workflows.find(inc.workflow, inc.workflow_version)
        if wf is None:  # its definition is not loaded: readable, but nothing can be fired
            public.allowed_triggers = []
            return public
        proposal = await latest_proposal(session, inc.id)
        public.allowed_triggers = wf.allowed_triggers(
            guard_context(wf, inc, proposal), principal.role.value
        )
    return public


async def get_visible(session: AsyncSession, incident_id: str, principal: Principal | None,
                      *, for_update: bool = False) -> Incident:
    stmt = select(Incident).where(Incident.id == incident_id)
    if for_update:
        stmt = stmt.with_for_update()
    inc = (await session.exec(stmt)).first()
    if inc is None or not in_scope(principal, inc):
        raise NotFound(f"no incident with id {incident_id}")
    return inc


@dataclass
class IncidentFilters:
    state: list[str] | None = None
    severity: list[str] | None = None
    category: str | None = None
    agency: str | None = None
    q: str | None = None
    overdue: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    ascending: bool = False


# The list reads plain rows of exactly the public fields: building ORM objects and validating
# them again into IncidentPublic cost ten times the query itself.
LIST_FIELDS = tuple(name for name in IncidentPublic.model_fields if name != "allowed_triggers")


async def list_incidents(session: AsyncSession, env: Env, principal: Principal,
                         f: IncidentFilters, limit: int, cursor: str | None
                         ) -> dict[str, Any]:
    """A page of incidents as JSON-ready dicts (the shape of `Page[IncidentPublic]`)."""
    for name in ("created_after", "created_before"):
        value = getattr(f, name)
        if value is not None and value.tzinfo is None:
            msg = f"{name} needs a UTC offset (RFC 3339), e.g. 2026-01-01T00:00:00+07:00"
            raise ValidationProblem(msg, [{"loc": ["query", name], "msg": msg}])
    agencies = tuple(a for a in (f.agency, _scope_agency(principal)) if a)
    after = decode_cursor(cursor, 2)
    params: dict[str, Any] = {"state": f.state, "severity": f.severity, "category": f.category,
                              "overdue": f.overdue, "after": f.created_after,
                              "before": f.created_before, "limit": limit + 1}
    params.update((f"agency{i}", agency) for i, agency in enumerate(agencies))
    if after is not None:
        params["cursor_at"], params["cursor_id"] = _cursor_time(after[0]), str(after[1])
    shape = _Shape(env.dialect, bool(f.state), bool(f.severity), f.category is not None,
                   f.overdue is not None, f.created_after is not None,
                   f.created_before is not None, len(agencies), after is not None, f.ascending)
    conn = await session.connection()  # rows as JSON need none of the ORM's loading
    rows: list[str] = []
    if f.q and f.q.strip():
        params["pattern"] = like_pattern(fold(f.q))
        for window in SEARCH_WINDOWS:
            rows = list((await conn.execute(_recent_statement(shape, window), params)).scalars())
            if len(rows) > limit:
                break
        else:  # not a full page among the recent rows: ask the index
            stmt = _page_statement(shape).where(search_clause(env.dialect, Incident, f.q))
            rows = list((await conn.execute(stmt, params)).scalars())
    else:
        rows = list((await conn.execute(_page_statement(shape), params)).scalars())
    next_cursor = None
    if len(rows) > limit:
        last = loads(rows[limit - 1])
        at = datetime.fromisoformat(last["created_at"])
        next_cursor = encode_cursor([at.isoformat(), last["id"]])
    return {"items": [orjson.Fragment(row) for row in rows[:limit]], "next_cursor": next_cursor}


# A word in a third of all incidents fills a page from the newest few hundred rows; one in
# a few percent needs a few thousand; rarer ones are looked up in the index.
SEARCH_WINDOWS = (250, 2000)


@dataclass(frozen=True)
class _Shape:
    """Which filters a listing uses: its statement is built once per shape, with the values
    as parameters (building it anew cost a third of a listing's CPU)."""

    dialect: str
    state: bool
    severity: bool
    category: bool
    overdue: bool
    after: bool
    before: bool
    agencies: int
    cursor: bool
    ascending: bool


def _order(created: Any, ident: Any, ascending: bool) -> tuple[Any, Any]:
    return (created.asc(), ident.asc()) if ascending else (created.desc(), ident.desc())


@functools.lru_cache(maxsize=256)
def _filtered(shape: _Shape) -> Any:
    """SELECT the public columns WHERE the shape's filters hold (values bound by name)."""
    t, link = table_of(Incident), table_of(IncidentAgency)
    stmt: Any = sa.select(json_objects(t, LIST_FIELDS, shape.dialect)).select_from(t)
    if shape.state:
        stmt = stmt.where(t.c.state.in_(sa.bindparam("state", expanding=True)))
    if shape.severity:
        stmt = stmt.where(t.c.severity.in_(sa.bindparam("severity", expanding=True)))
    if shape.category:
        stmt = stmt.where(t.c.category == sa.bindparam("category"))
    if shape.overdue:
        stmt = stmt.where(t.c.overdue == sa.bindparam("overdue"))
    if shape.after:
        stmt = stmt.where(t.c.created_at >= sa.bindparam("after"))
    if shape.before:
        stmt = stmt.where(t.c.created_at < sa.bindparam("before"))
    for i in range(shape.agencies):
        stmt = stmt.where(sa.exists().where(link.c.incident_id == t.c.id,
                                            link.c.agency == sa.bindparam(f"agency{i}")))
    if shape.cursor:
        stmt = stmt.where(keyset(t.c.created_at, t.c.id,
                                 [sa.bindparam("cursor_at", type_=t.c.created_at.type),
                                  sa.bindparam("cursor_id")], ascending=shape.ascending))
    return stmt


@functools.lru_cache(maxsize=256)
def _page_statement(shape: _Shape) -> Any:
    t = table_of(Incident)
    return (_filtered(shape).order_by(*_order(t.c.created_at, t.c.id, shape.ascending))
            .limit(sa.bindparam("limit", type_=sa.Integer())))


@functools.lru_cache(maxsize=256)
def _recent_statement(shape: _Shape, window: int) -> Any:
    """A common word ("tin giả") matches a large share of all incidents; the search index
    then returns tens of thousands of rows to sort for one page. Looking through the newest
    `window` rows first answers such a query from a few thousand index-ordered rows."""
    t = table_of(Incident)
    order = _order(t.c.created_at, t.c.id, shape.ascending)
    # The window carries only what the filter needs; full rows are read for one page only.
    recent = (_filtered(shape).with_only_columns(t.c.id, t.c.created_at, t.c.search_text)
              .order_by(*order).limit(window).subquery())
    page = (sa.select(recent.c.id)
            .where(recent.c.search_text.like(sa.bindparam("pattern"), escape="\\"))
            .order_by(*_order(recent.c.created_at, recent.c.id, shape.ascending))
            .limit(sa.bindparam("limit", type_=sa.Integer())))
    return (sa.select(json_objects(t, LIST_FIELDS, shape.dialect)).select_from(t)
            .where(t.c.id.in_(page)).order_by(*order))


def _cursor_time(value: Any) -> datetime:
    """The timestamp inside a cursor; a cursor we did not issue is a 422, never a 500."""
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise ValidationProblem("cursor is not one this API returned",
                                [{"loc": ["query", "cursor"], "msg": "invalid cursor"}])
    return at


def _scope_agency(principal: Principal) -> str | None:
    return principal.agency if principal.role == Role.viewer else None


# -- creating and editing ---------------------------------------------------------------

# One atomic upsert hands out a range of numbers (SQLite and PostgreSQL spell it alike).
_REFERENCE_UPSERT = ("INSERT INTO reference_counter (year, value) VALUES (?, ?) "
                     "ON CONFLICT (year) DO UPDATE SET value = reference_counter.value + "
                     "excluded.value RETURNING value")
_REFERENCE_GIVE_BACK = "UPDATE reference_counter SET value = value - ? WHERE year = ?"


@dataclass
class Reservation:
    """Reference numbers taken before anyone knows how many incidents a transaction will
    open (an ingest group asks with its key lookup, in the same round trip): the upsert
    holds the counter's row lock until the transaction ends, so nobody takes a number in
    between, and what is given back (`give_back`) leaves the sequence without a gap."""

    year: int
    last: int
    count: int
    used: int = 0

    def take(self, n: int) -> list[str]:
        if self.used + n > self.count:
            raise RuntimeError("more incidents opened than references reserved")
        first = self.last - self.count + self.used + 1
        self.used += n
        return [f"INC-{self.year}-{value:06d}" for value in range(first, first + n)]


def reserve_references(session: AsyncSession, env: Env, now: datetime, count: int
                       ) -> tuple[list[tuple[str, Any]], Callable[[list[list[Any]]], Reservation]]:
    """The statements that reserve `count` numbers and read the subscriptions that new
    incidents' events are matched against (if this transaction has not read them yet), for
    a caller that sends them with its own (one round trip); and what makes the reservation
    of their rows."""
    year = now.astimezone(env.zone).year
    statements = [(_REFERENCE_UPSERT, (year, count)), *fanout.unread(session)]

    def reserved(results: list[list[Any]]) -> Reservation:
        [(last,)], *subscriptions = results
        for rows in subscriptions:
            fanout.remember(session, rows)
        return Reservation(year, last, count)

    return statements, reserved


async def give_back(session: AsyncSession, reservation: Reservation) -> None:
    """Return the numbers not taken (before the transaction ends; no result is read)."""
    unused = reservation.count - reservation.used
    if unused:
        db = await driver(session)
        await db.execute(_REFERENCE_GIVE_BACK, (unused, reservation.year), wait=False)


async def next_references(session: AsyncSession, env: Env, now: datetime,
                          count: int) -> list[str]:
    """`count` numbers `INC-YYYY-NNNNNN` from one atomic upsert, so concurrent creators never
    share a number (one round trip, with the subscriptions: `reserve_references`)."""
    statements, reserved = reserve_references(session, env, now, count)
    return reserved(await (await driver(session)).execute_all(statements)).take(count)


def agency_codes(inc: Incident) -> list[str]:
    """The agencies an incident names (lead or affected): one `incident_agency` row each."""
    return sorted({a for a in [inc.lead_agency, *inc.affected_agencies] if a})


async def _replace_agencies(session: AsyncSession, inc: Incident) -> None:
    await session.execute(
        sa.delete(IncidentAgency).where(col(IncidentAgency.incident_id) == inc.id))
    session.add_all(IncidentAgency(incident_id=inc.id, agency=c) for c in agency_codes(inc))


@dataclass
class Opening:
    """A new incident and the rows that come with it, built in memory so that a group of
    them (an alert storm) is stored with one statement per table (`store_openings`)."""

    incident: Incident
    workflow: Workflow
    timeline: list[TimelineEntry]
    deadlines: list[Deadline]
    detected: EventRow


def open_incident(env: Env, item_in: IncidentCreate, actor: str, now: datetime, *,
                  workflow: str | None = None, group_key: str | None = None,
                  origin: dict[str, Any] | None = None) -> Opening:
    """An incident in the workflow's initial state. `origin` describes the alert that opened
    it (the incident then starts with that alert counted). Its reference is given when it
    is stored."""
    wf = env.workflows.latest(workflow) if workflow else env.workflows.latest()
    # `item_in` is validated already; a storm opens hundreds of incidents per second.
    inc = unvalidated(Incident, {
        **dict(item_in),
        "id": new_id(),
        "reference": "",
        "workflow": wf.name,
        "workflow_version": wf.version,
        "state": State(wf.initial),
        "search_text": search_text(item_in.title, item_in.description),
        "created_by": actor,
        "created_at": now,
        "updated_at": now,
        "state_changed_at": now,
        "group_key": group_key,
        "alert_count": 1 if origin else 0,
        "first_alert_at": now if origin else None,
        "last_alert_at": now if origin else None,
    })
    entry = timeline.chain(inc, at=now, actor=actor, kind="created", to_state=inc.state.value,
                           data={"severity": inc.severity.value, "category": inc.category.value,
                                 **({"alert": origin} if origin else {})})
    started = deadlines.initial(wf, inc, now, env.overrides)
    deadlines.summarize(inc, started)
    detected = event_row(type="incident.detected", at=now, incident=snapshot(inc))
    return Opening(inc, wf, [entry], started, detected)


async def store_openings(session: AsyncSession, env: Env, openings: list[Opening],
                         reservation: Reservation | None = None) -> None:
    """Number and insert new incidents with their agency links, timeline, clocks and
    `incident.detected` events (in the order given), numbered from `reservation` if given."""
    if not openings:
        return
    if reservation is not None:
        refs = reservation.take(len(openings))
    else:
        refs = await next_references(session, env, openings[0].incident.created_at,
                                     len(openings))
    for opening, ref in zip(openings, refs, strict=True):
        opening.incident.reference = ref
        opening.detected["data"]["incident"]["reference"] = ref
    await insert_rows(session, table_of(Incident), [row_of(o.incident) for o in openings])
    links = [{"incident_id": o.incident.id, "agency": code}
             for o in openings for code in agency_codes(o.incident)]
    if links:
        await insert_rows(session, table_of(IncidentAgency), links)
    await timeline.store(session, [e for o in openings for e in o.timeline])
    clocks = [row_of(d) for o in openings for d in o.deadlines]
    if clocks:
        await insert_rows(session, table_of(Deadline), clocks)
    await emit_rows(session, [o.detected for o in openings])


async def create(session: AsyncSession, env: Env, item_in: IncidentCreate, actor: str,
                 *, workflow: str | None = None) -> Incident:
    """Open one incident (a duty officer's POST)."""
    await require_agencies(session, [item_in.lead_agency], loc=["body", "lead_agency"])
    await require_agencies(session, item_in.affected_agencies, loc=["body", "affected_agencies"])
    opening = open_incident(env, item_in, actor, utcnow(), workflow=workflow)
    await store_openings(session, env, [opening])
    return opening.incident


async def observed_version(session: AsyncSession, incident_id: str) -> int | None:
    """The version a request saw when it arrived, before it queued for the incident's lock."""
    stmt = select(Incident.version).where(Incident.id == incident_id)
    return (await session.exec(stmt)).first()


def check_if_match(inc: Incident, if_match: str | None, observed: int | None = None) -> None:
    """If-Match decides when given (412 when stale). Without it, a writer that raced another
    one (the incident moved on while it waited for the lock) loses with 409: exactly one of
    the writers racing from one version wins, and none is applied on top of a state it
    never saw."""
    if if_match is None or if_match.strip() == "*":
        if observed is not None and if_match is None and inc.version != observed:
            raise Conflict(
                "Another writer changed the incident while this request waited; "
                "read it again and retry.",
                current_version=inc.version,
            )
        return
    wanted = {tag.strip().removeprefix("W/").strip('"') for tag in if_match.split(",")}
    if str(inc.version) not in wanted:
        raise PreconditionFailed(
            f"If-Match {if_match} does not match the current version \"{inc.version}\"",
            current_version=inc.version,
        )


async def update(session: AsyncSession, env: Env, incident_id: str, item_in: IncidentUpdate,
                 principal: Principal, if_match: str | None,
                 observed: int | None = None) -> Incident:
    inc = await get_visible(session, incident_id, principal, for_update=True)
    check_if_match(inc, if_match, observed)
    changes = item_in.model_dump(exclude_unset=True)
    if "title" in changes and changes["title"] is None:
        raise ValidationProblem("title cannot be null", [{"loc": ["body", "title"], "msg": "null"}])
    for key in ("affected_agencies", "channels", "links", "tags"):
        if key in changes and changes[key] is None:
            changes[key] = []
    await require_agencies(
        session, [changes.get("lead_agency"), *changes.get("affected_agencies", [])],
        loc=["body", "agencies"])
    before = {k: getattr(inc, k) for k in changes}
    changed = {k: v for k, v in changes.items() if before[k] != v}
    now = utcnow()
    if changed:
        inc.sqlmodel_update(changed)
        if "title" in changed or "description" in changed:
            inc.search_text = search_text(inc.title, inc.description)
        if "lead_agency" in changed or "affected_agencies" in changed:
            await _replace_agencies(session, inc)
        inc.version += 1
        inc.updated_at = now
        timeline.append(session, inc, at=now, actor=principal.actor, kind="updated",
                        data={"changed": sorted(changed), "values": _jsonable(changed)})
        session.add(inc)
        await session.flush()
    return inc


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, datetime) else v) for k, v in values.items()}


# -- transitions ------------------------------------------------------------------------

def validate_payload(wf: Workflow, trigger: str, body: dict[str, Any]) -> dict[str, Any]:
    model = wf.payloads.get(trigger)
    if model is None:
        msg = f"unknown trigger {trigger!r}; known: {', '.join(wf.triggers(public_only=True))}"
        raise ValidationProblem(msg, [{"loc": ["body", "trigger"], "msg": msg}])
    try:
        parsed = model.model_validate({**body, "trigger": trigger})
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        for e in errors:
            e["loc"] = ["body", *e["loc"]]
        first = errors[0]
        where = ".".join(map(str, first["loc"]))
        raise ValidationProblem(f"{where}: {first['msg']}", errors) from None
    data = parsed.model_dump(mode="json", exclude={"trigger"})
    return data


async def fire(session: AsyncSession, env: Env, incident_id: str, trigger: str,
               body: dict[str, Any], principal: Principal, if_match: str | None = None,
               *, internal: bool = False,
               observed: int | None = None) -> tuple[Incident, Proposal | None]:
    inc = await get_visible(session, incident_id, principal, for_update=True)
    check_if_match(inc, if_match, observed)
    wf = env.workflows.find(inc.workflow, inc.workflow_version)
    if wf is None:
        raise Conflict(f"{inc.reference} follows workflow {inc.workflow} v{inc.workflow_version}, "
                       "which this service has not loaded")
    payload = validate_payload(wf, trigger, body)
    specs = [t for t in wf.transitions if t.trigger == trigger]
    if not internal and all(t.internal for t in specs):
        msg = f"{trigger} is decided through the proposals API"
        raise ValidationProblem(msg, [{"loc": ["body", "trigger"], "msg": msg}])
    role = principal.role.value
    if role != "admin" and not any(role in t.roles for t in specs):
        raise Forbidden(f"the {role} role may not fire {trigger}")
    proposal = await latest_proposal(session, inc.id)
    ctx = guard_context(wf, inc, proposal, payload)
    source = inc.state.value
    try:
        spec, dest = wf.fire(trigger, ctx)
    except InvalidTrigger:
        TRANSITIONS.labels(trigger, "invalid").inc()
        raise InvalidTransition(
            f"{trigger} is not allowed while the incident is {source}",
            current_state=source,
            allowed_triggers=wf.allowed_triggers(guard_context(wf, inc, proposal), role),
            rule="source_state",
        ) from None
    except GuardRefused as refused:
        TRANSITIONS.labels(trigger, "guard_failed").inc()
        raise GuardFailed(
            f"{trigger} refused by rule {refused.rule}: {refused.description}",
            current_state=source,
            allowed_triggers=wf.allowed_triggers(guard_context(wf, inc, proposal), role),
            rule=refused.rule,
        ) from None
    now = utcnow()
    actx = ActionContext(session=session, incident=inc, payload=payload, principal=principal,
                         workflow=wf, now=now, latest_proposal=proposal)
    for name in spec.actions:
        await ACTIONS[name](actx)
    inc.state = State(dest)
    entered = dest if dest != source else None
    if entered:
        inc.state_changed_at = now
    inc.version += 1
    inc.updated_at = now
    if actx.agencies_changed:
        await _replace_agencies(session, inc)
    session.add(inc)
    await session.flush()
    await deadlines.on_trigger(session, wf, inc, trigger, entered, now, env.overrides)
    timeline.append(session, inc, at=now, actor=principal.actor, kind="transition",
                    from_state=source, to_state=dest,
                    data={"trigger": trigger, "payload": payload, **actx.timeline})
    session.add(inc)
    await session.flush()
    current = snapshot(inc)
    extra = dict(actx.event_data)
    touched = actx.latest_proposal if "proposal_id" in actx.timeline else None
    if touched is not None:
        extra["proposal"] = proposal_public(touched, inc.reference).model_dump(mode="json")
    for event_type in spec.emits:
        await emit(session, type=event_type, at=now, incident=current, extra=extra)
    for event_type, data in actx.events:
        await emit(session, type=event_type, at=now, incident=current, extra=data)
    TRANSITIONS.labels(trigger, "ok").inc()
    return inc, touched


# -- timeline and comments --------------------------------------------------------------

async def list_timeline(session: AsyncSession, incident_id: str,
                        principal: Principal) -> list[TimelineEntryPublic]:
    await get_visible(session, incident_id, principal)
    stmt = select(TimelineEntry).where(TimelineEntry.incident_id == incident_id).order_by(
        col(TimelineEntry.seq)
    )
    return [TimelineEntryPublic.model_validate(e) for e in (await session.exec(stmt)).all()]


async def add_comment(session: AsyncSession, incident_id: str, body: str,
                      principal: Principal) -> TimelineEntryPublic:
    inc = await get_visible(session, incident_id, principal, for_update=True)
    entry = timeline.append(session, inc, at=utcnow(), actor=principal.actor, kind="comment",
                            data={"body": body})
    session.add(inc)
    await session.flush()
    return TimelineEntryPublic.model_validate(entry)


# -- proposals --------------------------------------------------------------------------

def proposal_public(p: Proposal, reference: str) -> ProposalPublic:
    return ProposalPublic.model_validate(p, update={"incident_reference": reference})


async def list_proposals(session: AsyncSession, status: str | None, incident_id: str | None,
                         limit: int, cursor: str | None) -> Page[ProposalPublic]:
    stmt = select(Proposal, Incident.reference).join(
        Incident, col(Incident.id) == Proposal.incident_id)
    if status:
        stmt = stmt.where(Proposal.status == status)
    if incident_id:
        stmt = stmt.where(Proposal.incident_id == incident_id)
    after = decode_cursor(cursor, 2)
    if after is not None:
        at = _cursor_time(after[0])
        stmt = stmt.where(keyset(col(Proposal.proposed_at), col(Proposal.id), [at, str(after[1])],
                                 ascending=False))
    stmt = stmt.order_by(col(Proposal.proposed_at).desc(), col(Proposal.id).desc()).limit(limit + 1)
    rows = list((await session.exec(stmt)).all())
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor([last.proposed_at.isoformat(), last.id])
    return Page(items=[proposal_public(p, ref) for p, ref in rows[:limit]], next_cursor=next_cursor)


async def get_proposal(session: AsyncSession, proposal_id: str) -> ProposalPublic:
    row = (await session.exec(
        select(Proposal, Incident.reference)
        .join(Incident, col(Incident.id) == Proposal.incident_id)
        .where(Proposal.id == proposal_id)
    )).first()
    if row is None:
        raise NotFound(f"no proposal with id {proposal_id}")
    return proposal_public(row[0], row[1])


async def decide(session: AsyncSession, env: Env, proposal_id: str, approve: bool,
                 comment: str | None, principal: Principal) -> ProposalPublic:
    proposal = await session.get(Proposal, proposal_id)
    if proposal is None:
        raise NotFound(f"no proposal with id {proposal_id}")
    incident_id = proposal.incident_id
    # Lock the incident first: decisions on one proposal then queue behind each other.
    inc = await get_visible(session, incident_id, None, for_update=True)
    await session.refresh(proposal)
    if proposal.status != "pending":
        raise Conflict(f"the proposal is already {proposal.status.value}",
                       proposal_status=proposal.status.value)
    latest = await latest_proposal(session, incident_id)
    if latest is None or latest.id != proposal.id:
        raise Conflict("a newer proposal exists for this incident")
    if proposal.proposed_by_key == principal.key_id:
        raise Forbidden("The key that proposed a task force cannot decide on it.")
    trigger = "approve_task_force" if approve else "reject_task_force"
    body = {"comment": comment} if comment is not None else {}
    await fire(session, env, inc.id, trigger, body, principal, internal=True)
    await session.refresh(proposal)
    return proposal_public(proposal, inc.reference)
