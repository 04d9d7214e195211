"""Turning parsed alerts into incidents (api.md, "Alerts"), in order, also within a batch:

1. a firing alert whose fingerprint leads to an open incident attaches to it (deduplicated);
2. else one whose grouping labels lead to an open incident attaches to it;
3. else it opens a new incident in `detected`;
4. a resolved alert marks the alert it names resolved (never closing the incident).

The keys live in `alert_key`, so each decision is one indexed lookup whatever the storm's
size. The caller's transaction is the boundary: a batch is all-or-nothing.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.agencies.models import Agency
from app.alerts.models import Alert, AlertKey, AlertPublic, Outcome
from app.alerts.parsers import ParsedAlert
from app.core.bulk import (
    IN_LIST,
    Driver,
    array_literal,
    driver,
    insert_rows,
    select_rows,
    update_rows,
)
from app.core.ids import new_id
from app.core.jsonutil import dumps
from app.core.pagination import Page, decode_cursor, encode_cursor, keyset
from app.core.types import M, row_of, table_of, unvalidated
from app.deadlines import service as deadlines
from app.deadlines.models import Deadline
from app.incidents import service as incidents
from app.incidents import timeline
from app.incidents.models import Incident, IncidentCreate, Severity, State, TimelineEntry
from workflows.registry import SEVERITY_RANK

Row = dict[str, Any]
IGNORED_CAP_TYPES = {"Ack", "Error"}
# Serialises alert ingestion across API processes on PostgreSQL, so two processes never
# both open an incident for one new fingerprint. (SQLite has one writer anyway.)
INGEST_LOCK_ID = 0x0C415E
_INGEST_LOCK = ("SELECT pg_advisory_xact_lock(?)", (INGEST_LOCK_ID,))
# incident.group_key holds 200 characters; longer keys are stored as a digest.
MAX_GROUP_KEY = 200
# `ingest_keys_unchanged` (migrations 0011, 0012) fails a transaction with this when a key the
# writer remembers no longer leads where it remembers.
STALE_KEYS = "CF001"
# Groups up to this many alerts use and feed `KeyMemory`: the round trip it saves matters to
# small groups (a storm of single alerts); to a large one (arrays) it is a small share of its
# time, its check costs the server what the lookup does, and remembering its keys would cost
# the writer's thread more than it saves.
REMEMBERED_GROUP_MAX = 256


@dataclass
class IngestContext:
    env: incidents.Env
    actor: str
    now: datetime
    known_agencies: set[str] | None = None


def group_key(alert: ParsedAlert, group_by: list[str]) -> str | None:
    if not group_by or any(not alert.labels.get(label) for label in group_by):
        return None
    key = "|".join(f"{label}={alert.labels[label]}" for label in group_by)
    if len(key) > MAX_GROUP_KEY:
        # Long label values must not fail the insert; a readable key always holds "=", so a
        # digest can never equal one.
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _raw_text(alert: ParsedAlert, limit: int) -> str:
    data = alert.raw.encode() if isinstance(alert.raw, str) else dumps(alert.raw)
    if len(data) > limit:
        # Keep valid UTF-8 while capping: audit needs the start of the payload, not all of it.
        return data[:limit].decode("utf-8", "ignore") + "…[truncated]"
    return alert.raw if isinstance(alert.raw, str) else data.decode()


def prepare(alerts: list[ParsedAlert], group_by: list[str], raw_max_bytes: int) -> None:
    """Give each alert what storing it needs that no stored row decides: its group key, and
    its payload as the text stored. Done where the request is read (its own task, or the API
    process in front of an ingest process), not in the writer's transaction, which every
    request of a storm queues behind."""
    for alert in alerts:
        if not alert.prepared:
            alert.group_key = group_key(alert, group_by)
            alert.raw = _raw_text(alert, raw_max_bytes)
            alert.prepared = True


def draft(alert: ParsedAlert, key_id: str | None) -> Row:
    """The row of an alert `prepare` has seen, but for what the writer decides (incident,
    outcome, time), made outside the writer's transaction: a plain dict, inserted with the
    group's others in one statement (far cheaper than ORM objects). `ingest` copies it, so a
    group that is written again (request by request, after a failure) starts from it
    unchanged."""
    return {
        "id": new_id(), "incident_id": None, "format": alert.format, "source": alert.source,
        "fingerprint": alert.fingerprint, "group_key": alert.group_key,
        "status": alert.status, "deduplicated": False, "severity": alert.severity,
        "category": alert.category, "title": alert.title, "labels": alert.labels,
        "raw": alert.raw, "observed_at": alert.observed_at, "received_at": None,
        "resolved_at": None, "received_by": key_id,
    }


@dataclass(slots=True)
class _Target:
    """An open incident alerts attach to in this transaction: stored already (its counters
    are added up and written with one statement at the end), or opened here (still in
    memory until the end, so later alerts of the batch change it before it is stored)."""

    id: str
    state: str
    severity: str
    opening: incidents.Opening | None = None
    attached: int = 0
    raises: list[tuple[ParsedAlert, str]] = field(default_factory=list)


@dataclass
class _Batch:
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    targets: dict[str, _Target] = field(default_factory=dict)
    new_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    known_agencies: set[str] = field(default_factory=set)
    openings: list[incidents.Opening] = field(default_factory=list)
    # Stored incidents and clocks read for changes beyond counters, as plain objects (no
    # ORM session: loading and flushing through it cost a fifth of a group's time), each
    # with the row it was read as; what differs is written back at the end (`_write_back`).
    locked: dict[str, Incident] = field(default_factory=dict)
    clocks: dict[str, list[Deadline]] = field(default_factory=dict)
    read_as: dict[int, Row] = field(default_factory=dict)
    # What the batch's resolved alerts name, and per stored incident its firing alerts of
    # those names (alert ids by fingerprint), read at its first resolution (`_stored_firing`).
    resolving: list[str] = field(default_factory=list)
    firing: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # Numbers for the incidents the batch may open, taken with the key lookup (a round trip
    # less than asking once the openings are known); what is left is given back.
    references: incidents.Reservation | None = None
    # Taken from `KeyMemory` instead of the lookup: each key used, with what it led to, and
    # the remembered incidents the batch raises (read and locked with the memory's check).
    remembered: dict[tuple[str, str], _Leads] = field(default_factory=dict)
    raising: set[str] = field(default_factory=set)


# Where a key leads: an open incident, its state and severity; or nowhere (None).
_Leads = tuple[str, str, str] | None


class KeyMemory:
    """What alert keys led to when this writer last looked them up or wrote them (PostgreSQL).

    A group of alerts costs two round trips: the key lookup, then the writes with the COMMIT;
    three when it raises a stored incident's severity (its locked row and open clocks are
    read in between). A group whose every alert attaches to a remembered open incident is
    decided from memory: written in one round trip, or two when it raises, the incidents it
    raises read with the check. `ingest_keys_unchanged` runs first, after the ingest lock,
    and fails the transaction before anything is read or written if a key leads elsewhere
    now (an incident closed, assessed or raised meanwhile, a key another writer made); the
    writer then forgets that group's keys and writes it the long way. So the memory changes
    how many round trips a group costs, never what it stores."""

    group_max = REMEMBERED_GROUP_MAX  # the largest group it decides or learns from

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self.leads: dict[tuple[str, str], str | None] = {}  # a key's open incident, or none
        # Each remembered incident's state and severity, shared by all its keys: one key's
        # group raising it must not leave its other keys remembering the old severity.
        self.incidents: dict[str, tuple[str, str]] = {}

    def forget(self, alerts: list[ParsedAlert] | None = None) -> None:
        """Everything, or (a group found stale) what these alerts' keys led to."""
        if alerts is None:
            self.leads.clear()
            self.incidents.clear()
            return
        for alert in alerts:
            for name in _key_names(alert):
                incident_id = self.leads.pop(name, None)
                if incident_id is not None:
                    self.incidents.pop(incident_id, None)

    def batch(self, ctx: IngestContext, alerts: list[ParsedAlert]) -> _Batch | None:
        """The batch `_load` would read, from memory; None unless every alert attaches to a
        remembered open incident. A fingerprint never seen is taken to lead nowhere when its
        grouping labels lead to an incident (a new post on a known topic: most of a storm),
        which the check confirms."""
        if len(alerts) > self.group_max:
            return None
        batch = _Batch(known_agencies=ctx.known_agencies or set())
        used = batch.remembered
        for alert in alerts:
            if alert.status == "resolved" or alert.msg_type != "Alert" or _ignored(alert):
                return None
            fp = ("fp", alert.fingerprint)
            group = ("group", alert.group_key) if alert.group_key is not None else None
            if group is not None and not self._use(group, used):
                return None
            if not self._use(fp, used):
                if group is None or used[group] is None:
                    return None
                used[fp] = None
            # As `_one` decides: the fingerprint's incident, else the grouping labels'.
            found = used[fp] or (used[group] if group is not None else None)
            if found is None:
                return None  # it would open an incident
            if _raises(found[1], found[2], alert):
                batch.raising.add(found[0])
        for name, leads in used.items():
            if leads is not None:
                batch.keys[name] = leads[0]
                batch.targets.setdefault(leads[0], _Target(*leads))
        return batch

    def _use(self, name: tuple[str, str], used: dict[tuple[str, str], _Leads]) -> bool:
        """Put what `name` leads to in `used`; False if it is not remembered."""
        if name in used:
            return True
        if name not in self.leads:
            return False
        incident_id = self.leads[name]
        if incident_id is None:
            used[name] = None
        elif incident_id in self.incidents:
            used[name] = (incident_id, *self.incidents[incident_id])
        else:
            return False
        return True

    def learn(self, alerts: list[ParsedAlert], batch: _Batch) -> None:
        """What the group's keys lead to once it is written (before its COMMIT: a group that
        fails makes the writer forget)."""
        if len(alerts) > self.group_max:
            return
        if len(self.leads) > self.limit:
            self.forget()
        for alert in alerts:
            for name in _key_names(alert):
                self._learn(name, batch)

    def _learn(self, name: tuple[str, str], batch: _Batch) -> None:
        incident_id = batch.keys.get(name)
        target = batch.targets.get(incident_id) if incident_id is not None else None
        if target is None:
            self.leads[name] = None
        else:
            self.leads[name] = target.id
            self.incidents[target.id] = (target.state, target.severity)


class ExactKeyMemory(KeyMemory):
    """SQLite: what alert keys led to, trusted only while nothing but this writer has written
    the database; a group looks up only the keys it does not remember.

    On SQLite the lookup costs no round trip but the writer's own time: about a sixth of an
    array's write. Nothing checks a remembered key against the tables; instead `sync`,
    under the group's write lock (BEGIN IMMEDIATE), compares the connection's
    `PRAGMA data_version`, which moves when any other connection commits (in this process or
    another), and its `total_changes`, which moves when this connection writes (another
    transaction that had it from the pool), with what they were when this writer's last
    group sealed its transaction. If either moved, or the pool handed over another
    connection, it forgets everything first: it is exact, or empty."""

    group_max = sys.maxsize  # arrays too: their lookup is the largest

    def __init__(self, limit: int = 50_000) -> None:
        super().__init__(limit)
        self._opened: tuple[sqlite3.Connection, int] | None = None  # this group's, at `sync`
        self._sealed: tuple[sqlite3.Connection, int, int] | None = None

    def forget(self, alerts: list[ParsedAlert] | None = None) -> None:
        super().forget(alerts)
        if alerts is None:
            self._sealed = None

    def batch(self, ctx: IngestContext, alerts: list[ParsedAlert]) -> _Batch | None:
        return None  # always `_load`, which asks `recall` first

    def sync(self, db: Driver) -> None:
        raw = db.sqlite_connection
        if raw is None:  # not a write transaction of the inline driver: nothing to trust
            self.forget()
            self._opened = None
            return
        version: int = raw.execute("PRAGMA data_version").fetchone()[0]
        sealed = self._sealed
        if sealed is None or sealed[0] is not raw or sealed[1:] != (version, raw.total_changes):
            self.forget()
        # data_version as read under this group's write lock: no other connection can commit
        # before this group does, and its own COMMIT does not move it.
        self._opened = (raw, version)

    def seal(self, db: Driver) -> None:
        """Called after the group's last write, before its COMMIT."""
        raw = db.sqlite_connection
        opened, self._opened = self._opened, None
        if opened is None or raw is None or opened[0] is not raw:
            self.forget()
            return
        self._sealed = (raw, opened[1], raw.total_changes)

    def recall(self, kind: str, names: list[str], found: list[tuple[str, ...]]) -> list[str]:
        """The names it does not remember; each remembered one that leads to an open incident
        is added to `found` as the lookup would return it."""
        unknown = []
        leads, incidents = self.leads, self.incidents
        for name in names:
            key = (kind, name)
            if key not in leads:
                unknown.append(name)
                continue
            incident_id = leads[key]
            if incident_id is None:
                continue  # leads nowhere
            state = incidents.get(incident_id)
            if state is None:
                unknown.append(name)
            else:
                found.append((kind, name, incident_id, *state))
        return unknown


def _key_names(alert: ParsedAlert) -> list[tuple[str, str]]:
    """The `alert_key` rows (kind, key) an alert is decided by: its fingerprint's, and its
    grouping labels' if it has them."""
    names = [("fp", alert.fingerprint)]
    if alert.group_key is not None:
        names.append(("group", alert.group_key))
    return names


def stale_keys(exc: BaseException) -> bool:
    """Whether a group failed because the writer's `KeyMemory` was stale."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == STALE_KEYS


async def _check_remembered(session: AsyncSession, batch: _Batch) -> None:
    """The ingest lock and `ingest_keys_unchanged` for a batch decided from memory: held to
    go first in the group's one pipeline, or, when the batch raises incidents, sent at once
    with the reading of those incidents (the lock and the check before their row locks)."""
    columns: list[list[str]] = [[], [], [], [], []]
    for (kind, key), found in sorted(batch.remembered.items()):
        for column, value in zip(columns, (kind, key, *(found or ("", "", ""))), strict=True):
            column.append(value)
    check = [_INGEST_LOCK, (_KEYS_UNCHANGED, tuple(array_literal(c) for c in columns))]
    if batch.raising:
        await _lock(session, batch, list(batch.raising), first=check)
        return
    db = await driver(session)
    for sql, params in check:
        await db.execute(sql, params, wait=False)


_KEYS_UNCHANGED = ("SELECT ingest_keys_unchanged(?::text[], ?::text[], ?::text[], ?::text[], "
                   "?::text[])")


def _open_keys_sql(match: str) -> str:
    def of_kind(kind: str) -> str:
        return (f"SELECT k.kind, k.key, k.incident_id, i.state, i.severity FROM alert_key AS k "
                f"JOIN incident AS i ON i.id = k.incident_id WHERE k.kind = '{kind}' "
                f"AND k.key {match} AND i.state <> '{State.closed.value}'")

    return f"{of_kind('fp')} UNION ALL {of_kind('group')}"


# Fingerprints and group keys of a whole group in one round trip, each list as one
# parameter (a JSON array on SQLite, an array on PostgreSQL), through the primary key
# (key, kind). SQLAlchemy's expanding IN lists cost more per key than the lookup itself.
_OPEN_KEYS = {name: _open_keys_sql(in_list) for name, in_list in IN_LIST.items()}


async def _load(session: AsyncSession, ctx: IngestContext, alerts: list[ParsedAlert],
                memory: KeyMemory | None = None) -> _Batch:
    batch = _Batch()
    db = await driver(session)
    fps = sorted({a.fingerprint for a in alerts} | {r for a in alerts for r in a.references})
    keys = sorted({a.group_key for a in alerts if a.group_key})
    recalled: list[tuple[str, ...]] = []
    if isinstance(memory, ExactKeyMemory):
        memory.sync(db)
        fps, keys = memory.recall("fp", fps, recalled), memory.recall("group", keys, recalled)
    statements: list[tuple[str, Any]] = [] if db.sqlite else [_INGEST_LOCK]
    looking = bool(fps or keys)
    if looking:
        statements.append((_OPEN_KEYS[db.conn.dialect.name], (db.listed(fps), db.listed(keys))))
    # Each firing alert may open an incident; after the lookup, so that the counter's row is
    # locked only once this writer holds the ingest lock.
    may_open = sum(a.status != "resolved" for a in alerts)
    reserving, reserved = incidents.reserve_references(session, ctx.env, ctx.now, may_open)
    results = await db.execute_all(statements + (reserving if may_open else []))
    found = [*recalled, *(results[len(statements) - 1] if looking else [])]
    if may_open:
        batch.references = reserved(results[len(statements):])
    targets = batch.targets
    for kind, key, incident_id, state, severity in found:
        batch.keys[(kind, key)] = incident_id
        if incident_id not in targets:
            targets[incident_id] = _Target(incident_id, state, severity)
    if ctx.known_agencies is not None:
        batch.known_agencies = ctx.known_agencies
    else:
        batch.known_agencies = set((await session.exec(select(Agency.code))).all())
    return batch


async def _lock(session: AsyncSession, batch: _Batch, ids: list[str],
                first: list[tuple[str, Any]] | None = None) -> None:
    """Read stored incidents with their row locks (in id order) and their open clocks, for
    changes beyond their alert counters; each is read once per batch. `first`: statements
    to run before, in the same round trip."""
    missing = sorted(set(ids) - batch.locked.keys())
    if not missing:
        return
    db = await driver(session)
    in_list, listed = IN_LIST[db.conn.dialect.name], (db.listed(missing),)
    locking = "" if db.sqlite else " FOR UPDATE"
    # In one round trip: the clocks' query runs after the rows are locked.
    locked, clocks = await select_rows(session, [
        (table_of(Incident), f"id {in_list}", listed, f" ORDER BY id{locking}"),
        (table_of(Deadline), f"incident_id {in_list} AND met_at IS NULL", listed, "")],
        first=first)
    for row in locked:
        batch.locked[row["id"]] = _read(batch, Incident, row)
        batch.clocks[row["id"]] = []
    for row in clocks:
        batch.clocks[row["incident_id"]].append(_read(batch, Deadline, row))


def _read(batch: _Batch, model: type[M], row: Row) -> M:
    obj = unvalidated(model, row)  # copies `row`, which stays as it was read
    batch.read_as[id(obj)] = row
    return obj


async def _write_back(session: AsyncSession, batch: _Batch) -> None:
    """Write the columns of locked incidents and their clocks that changed in memory."""
    for table, objects in ((table_of(Incident), list(batch.locked.values())),
                           (table_of(Deadline), [c for cs in batch.clocks.values() for c in cs])):
        changes = []
        for obj in objects:
            before, now = batch.read_as[id(obj)], row_of(obj)
            changed = {k: v for k, v in now.items() if v != before[k]}
            if changed:
                changes.append({"id": obj.id, **changed})
        await update_rows(session, table, sorted(changes, key=lambda r: r["id"]))


def _point(batch: _Batch, kind: str, key: str | None, incident_id: str) -> None:
    if key is not None and batch.keys.get((kind, key)) != incident_id:
        batch.keys[(kind, key)] = incident_id
        batch.new_keys[(kind, key)] = incident_id


async def ingest(session: AsyncSession, ctx: IngestContext, alerts: list[ParsedAlert],
                 actors: list[str], drafts: list[Row], memory: KeyMemory | None = None
                 ) -> list[Outcome]:
    """Store `alerts` (each through `prepare`) in order: `actors` gives each alert's actor (one
    transaction carries the requests of several monitors: the group commit), `drafts` each
    alert's row (`draft`). With `memory` (PostgreSQL), keys are taken from it when it can
    decide the whole batch, and what they lead to afterwards is remembered."""
    batch = memory.batch(ctx, alerts) if memory is not None else None
    if batch is not None:
        await _check_remembered(session, batch)
    else:
        batch = await _load(session, ctx, alerts, memory)
    batch.resolving = sorted({n for a in alerts if a.status == "resolved" for n in _names(a)})
    results: list[Outcome] = []
    rows: list[Row] = []
    for i, alert in enumerate(alerts):
        ctx.actor = actors[i]
        result = await _one(session, ctx, batch, alert, {**drafts[i], "received_at": ctx.now},
                            rows)
        results.append(result)
    await _apply_raises(session, ctx, batch, list(batch.targets.values()))
    await _write_back(session, batch)
    # Incidents first: the alerts and keys refer to them.
    await incidents.store_openings(session, ctx.env, batch.openings, batch.references)
    if batch.references is not None:
        await incidents.give_back(session, batch.references)
    await session.flush()
    await _count_attached(session, ctx, batch)
    await _save_keys(session, ctx, batch)
    # Last: on PostgreSQL a large group's alerts go by COPY, after everything else.
    if rows:
        await insert_rows(session, table_of(Alert), rows)
    if memory is not None:
        memory.learn(alerts, batch)
    return results


async def _one(session: AsyncSession, ctx: IngestContext, batch: _Batch, alert: ParsedAlert,
               row: Row, rows: list[Row]) -> Outcome:
    group = alert.group_key
    if _ignored(alert):
        row["status"] = "ignored"
        rows.append(row)
        return Outcome(alert_id=row["id"], incident_id=None, deduplicated=False,
                       status="ignored")
    if alert.status == "resolved":
        return await _resolve(session, ctx, batch, alert, row, rows)

    incident_id = _by_fingerprint(batch, [*alert.references, alert.fingerprint]) \
        if alert.msg_type == "Update" else batch.keys.get(("fp", alert.fingerprint))
    deduplicated = incident_id is not None
    if incident_id is None and group is not None:
        incident_id = batch.keys.get(("group", group))
    if incident_id is None:
        incident_id = _open_incident(ctx, batch, alert, group)
    else:
        await _attach(session, ctx, batch, batch.targets[incident_id], alert)
    _point(batch, "fp", alert.fingerprint, incident_id)
    _point(batch, "group", group, incident_id)
    row["incident_id"] = incident_id
    row["deduplicated"] = deduplicated
    rows.append(row)
    return Outcome(alert_id=row["id"], incident_id=incident_id, deduplicated=deduplicated,
                   status="firing")


def _ignored(alert: ParsedAlert) -> bool:
    """A CAP message kept for audit only: an exercise or test, an acknowledgement, an error."""
    cap_status = alert.labels.get("cap_status", "Actual") if alert.format == "cap" else "Actual"
    return cap_status != "Actual" or alert.msg_type in IGNORED_CAP_TYPES


def _by_fingerprint(batch: _Batch, names: list[str]) -> str | None:
    """The open incident the first of these fingerprints leads to."""
    return next((batch.keys[("fp", n)] for n in names if ("fp", n) in batch.keys), None)


def _open_incident(ctx: IngestContext, batch: _Batch, alert: ParsedAlert,
                   group: str | None) -> str:
    # Unknown agency codes stay in the labels and are left out of routing.
    lead = alert.lead_agency if alert.lead_agency in batch.known_agencies else None
    affected = [a for a in alert.affected_agencies if a in batch.known_agencies and a != lead]
    item = IncidentCreate(
        title=alert.title, description=alert.description, severity=Severity(alert.severity),
        category=alert.category,  # type: ignore[arg-type]
        lead_agency=lead, affected_agencies=affected, links=alert.links[:50],
    )
    origin = {"source": alert.source, "fingerprint": alert.fingerprint, "format": alert.format}
    opening = incidents.open_incident(ctx.env, item, ctx.actor, ctx.now, group_key=group,
                                      origin=origin)
    inc = opening.incident
    batch.openings.append(opening)
    batch.targets[inc.id] = _Target(inc.id, inc.state.value, inc.severity.value, opening)
    return inc.id


def _raises(state: str, severity: str, alert: ParsedAlert) -> bool:
    """A higher-severity alert raises an incident nobody has assessed yet."""
    return state == State.detected and SEVERITY_RANK[alert.severity] > SEVERITY_RANK[severity]


def _raised(inc: Incident, now: datetime, actor: str, alert: ParsedAlert) -> TimelineEntry:
    previous = inc.severity.value
    inc.severity = Severity(alert.severity)
    return timeline.chain(inc, at=now, actor=actor, kind="severity_raised",
                          data={"from": previous, "to": alert.severity,
                                "fingerprint": alert.fingerprint, "source": alert.source})


async def _attach(session: AsyncSession, ctx: IngestContext, batch: _Batch, target: _Target,
                  alert: ParsedAlert) -> None:
    if target.opening is not None:
        opening = target.opening
        inc = opening.incident
        inc.alert_count += 1
        inc.last_alert_at = ctx.now
        if _raises(target.state, target.severity, alert):
            opening.timeline.append(_raised(inc, ctx.now, ctx.actor, alert))
            deadlines.retime(opening.workflow, inc, opening.deadlines, ctx.env.overrides)
            deadlines.summarize(inc, opening.deadlines)
            target.severity = inc.severity.value
        return
    target.attached += 1
    if _raises(target.state, target.severity, alert):
        # Applied to the stored incident for the whole batch at once (`_apply_raises`).
        target.raises.append((alert, ctx.actor))
        target.severity = alert.severity


async def _apply_raises(session: AsyncSession, ctx: IngestContext, batch: _Batch,
                        targets: list[_Target]) -> None:
    """Raise stored incidents' severity: their rows and open clocks are read (and locked)
    with one query each for the whole batch, and each raise is decided again on the locked
    row, since a duty officer may have assessed the incident meanwhile."""
    targets = [t for t in targets if t.raises]
    if not targets:
        return
    await _lock(session, batch, [t.id for t in targets])
    entries = []
    for target in targets:
        inc = batch.locked[target.id]
        for alert, actor in target.raises:
            if _raises(inc.state.value, inc.severity.value, alert):
                entries.append(_raised(inc, ctx.now, actor, alert))
        target.raises = []
        wf = ctx.env.workflows.get(inc.workflow, inc.workflow_version)
        deadlines.retime(wf, inc, batch.clocks[inc.id], ctx.env.overrides)
        deadlines.summarize(inc, batch.clocks[inc.id])
        target.state, target.severity = inc.state.value, inc.severity.value
    await timeline.store(session, entries)


async def _count_attached(session: AsyncSession, ctx: IngestContext, batch: _Batch) -> None:
    """One statement for the counters of every stored incident that got alerts; the sum is
    added in SQL, so it is right whatever else changed the row meanwhile."""
    counts = sorted((t.id, t.attached) for t in batch.targets.values() if t.attached)
    if not counts:
        return
    db = await driver(session)
    now = db.time(ctx.now)
    if db.sqlite:
        await db.execute(_COUNT_ATTACHED, [(n, now, now, incident_id) for incident_id, n in counts],
                         wait=False)
        return
    # One statement over two arrays: an executemany is a statement per incident, which
    # psycopg adapts and the server plans one by one.
    ids, added = zip(*counts, strict=True)
    await db.execute(_COUNT_ATTACHED_PG, (now, now, array_literal(list(ids)),
                                          array_literal([str(n) for n in added])), wait=False)


_COUNT_ATTACHED = ("UPDATE incident SET alert_count = alert_count + ?, last_alert_at = ?, "
                   "first_alert_at = coalesce(first_alert_at, ?) WHERE id = ?")
# Arrays, not a JSON list: the planner knows an array's length, but takes any JSON list for
# 100 rows and then prefers a hash join over a scan of the whole incident table (2 ms a group
# at 2,000 incidents) to 100 lookups by primary key.
_COUNT_ATTACHED_PG = ("UPDATE incident AS i SET alert_count = i.alert_count + c.n, "
                      "last_alert_at = ?, first_alert_at = coalesce(i.first_alert_at, ?) "
                      "FROM unnest(?::text[], ?::integer[]) AS c(id, n) WHERE i.id = c.id")


async def _resolve(session: AsyncSession, ctx: IngestContext, batch: _Batch, alert: ParsedAlert,
                   row: Row, rows: list[Row]) -> Outcome:
    names = _names(alert)
    incident_id = _by_fingerprint(batch, names)
    if incident_id is None:
        # Nothing open to resolve: keep the message for audit only.
        rows.append(row)
        return Outcome(alert_id=row["id"], incident_id=None, deduplicated=False,
                       status="resolved")
    target = batch.targets[incident_id]
    ids: list[str] = []
    if target.opening is None:
        await _apply_raises(session, ctx, batch, [target])  # earlier alerts come first
        await _lock(session, batch, [incident_id])
        inc = batch.locked[incident_id]
        firing = await _stored_firing(session, batch, incident_id)
        ids = [alert_id for name in names for alert_id in firing.pop(name, [])]
        if ids:
            db = await driver(session)
            await db.execute(_RESOLVE[db.conn.dialect.name], (db.time(ctx.now), db.listed(ids)),
                             wait=False)
    else:
        inc = target.opening.incident
    # Rows still waiting in this batch's list were never stored: resolve them too.
    for pending in rows:
        if pending["incident_id"] == incident_id and pending["fingerprint"] in names \
                and pending["status"] == "firing":
            pending["status"], pending["resolved_at"] = "resolved", ctx.now
            ids.append(pending["id"])
    entry = timeline.chain(inc, at=ctx.now, actor=ctx.actor, kind="alert_resolved",
                           data={"fingerprint": alert.fingerprint, "source": alert.source,
                                 "alerts": len(ids)})
    if target.opening is None:
        await timeline.store(session, [entry])
    else:
        target.opening.timeline.append(entry)
    alert_id = ids[-1] if ids else row["id"]
    if not ids:
        row["incident_id"], row["status"] = incident_id, "resolved"
        rows.append(row)
    return Outcome(alert_id=alert_id, incident_id=incident_id, deduplicated=True,
                   status="resolved")


def _names(alert: ParsedAlert) -> list[str]:
    """The fingerprints a resolved alert resolves."""
    return alert.references if alert.msg_type == "Cancel" else [alert.fingerprint]


async def _stored_firing(session: AsyncSession, batch: _Batch, incident_id: str
                         ) -> dict[str, list[str]]:
    """The incident's stored firing alerts that any resolved alert of the batch names, read
    once per incident and batch: alerts have no index by fingerprint (migration 0009), so the
    read goes through the incident's alerts, and a webhook resolving a hundred alerts of a
    large incident must not do that a hundred times. Resolutions then take their alerts from
    this, in the order of the batch."""
    found = batch.firing.get(incident_id)
    if found is None:
        db = await driver(session)
        rows = await db.execute(_FIRING[db.conn.dialect.name],
                                (incident_id, db.listed(batch.resolving)))
        found = batch.firing[incident_id] = {}
        for alert_id, fingerprint in rows:
            found.setdefault(fingerprint, []).append(alert_id)
    return found


_FIRING = {name: "SELECT id, fingerprint FROM alert WHERE incident_id = ? "
                 f"AND status = 'firing' AND fingerprint {in_list}"
           for name, in_list in IN_LIST.items()}
_RESOLVE = {name: f"UPDATE alert SET status = 'resolved', resolved_at = ? WHERE id {in_list}"
            for name, in_list in IN_LIST.items()}


async def _save_keys(session: AsyncSession, ctx: IngestContext, batch: _Batch) -> None:
    values = [{"kind": k, "key": key, "incident_id": v} for (k, key), v in batch.new_keys.items()]
    await insert_rows(session, table_of(AlertKey), values, _KEY_UPSERT)


_KEY_UPSERT = " ON CONFLICT (key, kind) DO UPDATE SET incident_id = excluded.incident_id"


async def list_for_incident(session: AsyncSession, incident_id: str, limit: int,
                            cursor: str | None) -> Page[AlertPublic]:
    stmt = select(Alert).where(Alert.incident_id == incident_id)
    after = decode_cursor(cursor, 2)
    if after is not None:
        at = datetime.fromisoformat(str(after[0]))
        stmt = stmt.where(keyset(col(Alert.received_at), col(Alert.id), [at, str(after[1])],
                                 ascending=False))
    stmt = stmt.order_by(col(Alert.received_at).desc(), col(Alert.id).desc()).limit(limit + 1)
    found = list((await session.exec(stmt)).all())
    next_cursor = None
    if len(found) > limit:
        last = found[limit - 1]
        next_cursor = encode_cursor([last.received_at.isoformat(), last.id])
    return Page(items=[AlertPublic.model_validate(r) for r in found[:limit]],
                next_cursor=next_cursor)


def result_body(results: list[Outcome]) -> dict[str, Any]:
    """The body of IngestResponse (AlertResult's fields)."""
    return {"results": [{"alert_id": a, "incident_id": i, "deduplicated": d, "status": s}
                        for a, i, d, s in results]}
