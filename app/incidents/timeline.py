"""The tamper-evident timeline: entry N stores sha256(hash of N-1 + canonical content of N)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.bulk import insert_rows
from app.core.db import Database
from app.core.ids import new_id
from app.core.jsonutil import canonical
from app.core.types import row_of, table_of, unvalidated
from app.incidents.models import Incident, TimelineEntry

GENESIS = "0" * 64


def entry_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(content)).hexdigest()


_HASHED = ("id", "incident_id", "seq", "at", "actor", "kind", "from_state", "to_state", "data")


def _content_of(values: dict[str, Any]) -> dict[str, Any]:
    content = {k: values[k] for k in _HASHED}
    content["at"] = values["at"].isoformat()
    return content


def _content(e: TimelineEntry) -> dict[str, Any]:
    return _content_of({k: getattr(e, k) for k in _HASHED})


def _next(incident: Incident, *, at: datetime, actor: str, kind: str, data: dict[str, Any],
          from_state: str | None, to_state: str | None) -> dict[str, Any]:
    """The next entry's values, linked to the incident's chain (whose head moves on)."""
    values: dict[str, Any] = {
        "id": new_id(), "incident_id": incident.id, "seq": incident.timeline_seq + 1,
        "at": at, "actor": actor, "kind": kind, "from_state": from_state,
        "to_state": to_state, "data": data, "prev_hash": incident.timeline_head,
    }
    values["hash"] = entry_hash(values["prev_hash"], _content_of(values))
    incident.timeline_seq = values["seq"]
    incident.timeline_head = values["hash"]
    return values


def append(
    session: AsyncSession,
    incident: Incident,
    *,
    at: datetime,
    actor: str,
    kind: str,
    data: dict[str, Any],
    from_state: str | None = None,
    to_state: str | None = None,
) -> TimelineEntry:
    """Append an entry; the caller holds the incident's row lock (or SQLite's write lock)."""
    entry = TimelineEntry(**_next(incident, at=at, actor=actor, kind=kind, data=data,
                                  from_state=from_state, to_state=to_state))
    session.add(entry)
    return entry


def chain(
    incident: Incident,
    *,
    at: datetime,
    actor: str,
    kind: str,
    data: dict[str, Any],
    from_state: str | None = None,
    to_state: str | None = None,
) -> TimelineEntry:
    """The next entry of the incident's chain, linked in memory, stored with `store`;
    never added to a session."""
    return unvalidated(TimelineEntry, _next(incident, at=at, actor=actor, kind=kind, data=data,
                                            from_state=from_state, to_state=to_state))


async def store(session: AsyncSession, entries: list[TimelineEntry]) -> None:
    """Insert entries made by `chain`, in one statement."""
    if entries:
        await insert_rows(session, table_of(TimelineEntry), [row_of(e) for e in entries])


def first_broken_link(entries: Iterable[TimelineEntry]) -> tuple[TimelineEntry, str] | None:
    """Walk one incident's entries in seq order; return the first bad entry and why."""
    prev = GENESIS
    expected_seq = 1
    for e in entries:
        if e.seq != expected_seq:
            return e, f"sequence gap: expected {expected_seq}, found {e.seq}"
        if e.prev_hash != prev:
            return e, "prev_hash does not match the previous entry"
        if entry_hash(e.prev_hash, _content(e)) != e.hash:
            return e, "content does not match its hash"
        prev = e.hash
        expected_seq += 1
    return None


# -- audit ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BrokenLink:
    incident_id: str
    reference: str
    seq: int
    reason: str


@dataclass(slots=True)
class AuditResult:
    incidents: int = 0
    entries: int = 0
    broken: BrokenLink | None = None


def _check_chain(inc: Any, entries: list[TimelineEntry]) -> BrokenLink | None:
    bad = first_broken_link(entries)
    if bad is not None:
        return BrokenLink(inc.id, inc.reference, bad[0].seq, bad[1])
    last_seq = entries[-1].seq if entries else 0
    last_hash = entries[-1].hash if entries else GENESIS
    if last_seq != inc.timeline_seq or last_hash != inc.timeline_head:
        # Entries missing at the end (or a head rewritten): the chain no longer reaches it.
        return BrokenLink(inc.id, inc.reference, last_seq + 1,
                          f"the incident's timeline head is seq {inc.timeline_seq} but the "
                          f"chain ends at seq {last_seq}")
    return None


async def verify_all(db: Database, *, batch_size: int = 500,
                     progress: Callable[[int, int], None] | None = None) -> AuditResult:
    """Walk every incident's chain, `batch_size` incidents per short read transaction;
    stop at the first broken link. `progress(done, total)` is called after each batch."""
    result = AuditResult()
    async with db.read() as session:
        total = int((await session.execute(sa.select(sa.func.count()).select_from(
            table_of(Incident)))).scalar_one())  # type: ignore[attr-defined]
    after: str | None = None
    while True:
        async with db.read() as session:
            if not db.is_sqlite:
                # One snapshot for the incidents and their entries (a writer may be busy).
                await session.connection(
                    execution_options={"isolation_level": "REPEATABLE READ"})
            stmt = (sa.select(col(Incident.id), col(Incident.reference),
                              col(Incident.timeline_seq), col(Incident.timeline_head))
                    .order_by(col(Incident.id)).limit(batch_size))
            if after is not None:
                stmt = stmt.where(col(Incident.id) > after)
            incidents = list((await session.execute(stmt)).all())
            if not incidents:
                break
            by_id = {r.id: r for r in incidents}
            entries_stmt = (
                select(TimelineEntry)
                .where(col(TimelineEntry.incident_id).in_(list(by_id)))
                .order_by(col(TimelineEntry.incident_id), col(TimelineEntry.seq))
                .execution_options(yield_per=1000)
            )
            current: str | None = None
            chain: list[TimelineEntry] = []
            seen: set[str] = set()
            stream = await session.stream_scalars(entries_stmt)
            async for entry in stream:
                if entry.incident_id != current:
                    if current is not None:
                        result.broken = _check_chain(by_id[current], chain)
                        if result.broken:
                            return result
                    current, chain = entry.incident_id, []
                    seen.add(current)
                chain.append(entry)
                result.entries += 1
            if current is not None:
                result.broken = _check_chain(by_id[current], chain)
                if result.broken:
                    return result
            for ident in by_id.keys() - seen:  # incidents without a single entry
                result.broken = _check_chain(by_id[ident], [])
                if result.broken:
                    return result
            result.incidents += len(incidents)
            after = incidents[-1].id
        if progress is not None:
            progress(result.incidents, total)
    return result
