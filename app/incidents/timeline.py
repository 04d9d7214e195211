"""The tamper-evident timeline: entry N stores sha256(hash of N-1 + canonical content of N)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.ids import new_id
from app.core.jsonutil import canonical
from app.incidents.models import Incident, TimelineEntry

GENESIS = "0" * 64


def entry_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(content)).hexdigest()


def _content(e: TimelineEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "incident_id": e.incident_id,
        "seq": e.seq,
        "at": e.at.isoformat(),
        "actor": e.actor,
        "kind": e.kind,
        "from_state": e.from_state,
        "to_state": e.to_state,
        "data": e.data,
    }


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
    entry = TimelineEntry(
        id=new_id(),
        incident_id=incident.id,
        seq=incident.timeline_seq + 1,
        at=at,
        actor=actor,
        kind=kind,
        from_state=from_state,
        to_state=to_state,
        data=data,
        prev_hash=incident.timeline_head,
        hash="",
    )
    entry.hash = entry_hash(entry.prev_hash, _content(entry))
    incident.timeline_seq = entry.seq
    incident.timeline_head = entry.hash
    session.add(entry)
    return entry


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
