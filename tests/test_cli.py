"""`crisisflow audit verify`: walks every incident's hash-chained timeline, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import col
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import get_settings
from app.incidents.models import Incident, TimelineEntry
from app.incidents.timeline import verify_all
from tests.factories import ASSESS, PROPOSAL, RESPONSE, fire, open_incident, portal

API = "/api/v1"


@pytest.fixture
def audit(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Run `crisisflow audit verify [args]` in-process against the test database."""
    monkeypatch.setenv("CRISISFLOW_DATABASE_URL", db_url)
    get_settings.cache_clear()

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["audit", "verify", *args])

    yield run
    get_settings.cache_clear()


def history(client: TestClient, make_key: Any, n: int = 5) -> list[dict[str, Any]]:
    """`n` incidents with varied timelines (transitions, a decision, comments)."""
    duty, leader = make_key("duty_officer"), make_key("leader")
    made = []
    for i in range(n):
        inc = open_incident(client, duty, title=f"Sự cố số {i}")
        if i % 2:
            fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "high"})
            fire(client, duty, inc["id"], "propose_task_force", **PROPOSAL)
            proposal = client.get(f"{API}/proposals", params={"incident": inc["id"]},
                                  headers=leader).json()["items"][0]
            client.post(f"{API}/proposals/{proposal['id']}/approve", headers=leader)
            fire(client, duty, inc["id"], "issue_response", **RESPONSE)
        client.post(f"{API}/incidents/{inc['id']}/comments", json={"body": f"Ghi chú {i}"},
                    headers=leader)
        made.append(inc)
    return made


def count_entries(client: TestClient) -> int:
    async def count() -> int:
        async with client.app.state.db.read() as session:  # type: ignore[attr-defined]
            result = await session.execute(sa.select(sa.func.count()).select_from(
                TimelineEntry.__table__))  # type: ignore[attr-defined]
            return int(result.scalar_one())

    total: int = portal(client).call(count)
    return total


def tamper(client: TestClient, statement: Any) -> None:
    async def run() -> None:
        async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            await session.execute(statement)

    portal(client).call(run)


def entry_where(incident_id: str, seq: int) -> Any:
    return sa.and_(col(TimelineEntry.incident_id) == incident_id, col(TimelineEntry.seq) == seq)


def test_audit_verify_passes_on_a_clean_database(client: TestClient, make_key: Any,
                                                 audit: Callable[..., Any]) -> None:
    empty = audit()
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.strip() == "0 incidents, 0 entries verified"

    history(client, make_key)
    entries = count_entries(client)
    assert entries == 5 * 2 + 2 * 4  # created + comment each, 4 transitions on two of them
    for args in ((), ("--batch-size", "2"), ("--batch-size", "1")):
        result = audit(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"5 incidents, {entries} entries verified"

    # the walk goes batch by batch, reporting progress after each
    db = client.app.state.db  # type: ignore[attr-defined]
    calls: list[tuple[int, int]] = []
    result = portal(client).call(lambda: verify_all(
        db, batch_size=2, progress=lambda done, total: calls.append((done, total))))
    assert (result.broken, result.incidents, result.entries) == (None, 5, entries)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_installed_command_reports_the_first_broken_link(client: TestClient, make_key: Any,
                                                         db_url: str) -> None:
    made = history(client, make_key)
    target = made[3]  # assessed, proposed, approved, responded, commented: 6 entries
    tamper(client, sa.update(TimelineEntry).where(entry_where(target["id"], 3))
           .values(data={"trigger": "propose_task_force", "payload": {"forged": True}}))

    env = {**os.environ, "CRISISFLOW_DATABASE_URL": db_url}
    exe = Path(sys.executable).with_name("crisisflow")
    done = subprocess.run([str(exe), "audit", "verify", "--batch-size", "2"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.startswith(
        f"BROKEN: {target['reference']} (incident {target['id']}) seq 3: ")
    assert "content does not match its hash" in done.stdout
    assert "Traceback" not in done.stderr

    # the API still serves what is stored; only the audit notices
    resp = client.get(f"{API}/incidents/{target['id']}/timeline", headers=make_key("viewer"))
    assert resp.json()["items"][2]["data"]["payload"] == {"forged": True}


async def _forge_rehashed(session: Any, incident_id: str) -> None:
    """A forger who rewrites entry 3 and recomputes its own hash: entry 4 still points at
    the old one."""
    from app.incidents.timeline import _content, entry_hash

    entry = (await session.execute(sa.select(TimelineEntry).where(
        entry_where(incident_id, 3)))).scalar_one()
    entry.actor = "leader:someone else"
    entry.hash = entry_hash(entry.prev_hash, _content(entry))
    session.add(entry)


def test_audit_verify_catches_each_kind_of_damage(client: TestClient, make_key: Any,
                                                  audit: Callable[..., Any]) -> None:
    target = history(client, make_key, n=2)[1]  # 6 entries
    table = TimelineEntry.__table__  # type: ignore[attr-defined]
    incidents = Incident.__table__  # type: ignore[attr-defined]
    mine = table.c.incident_id == target["id"]

    async def snapshot() -> list[dict[str, Any]]:
        async with client.app.state.db.read() as session:  # type: ignore[attr-defined]
            rows = await session.execute(sa.select(table).where(mine))
            return [dict(r._mapping) for r in rows]

    async def restore(rows: list[dict[str, Any]]) -> None:
        async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            await session.execute(sa.delete(table).where(mine))
            await session.execute(sa.insert(table), rows)
            await session.execute(sa.update(incidents).where(incidents.c.id == target["id"])
                                  .values(timeline_seq=6))

    async def damage(kind: str) -> None:
        async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            if kind == "delete_middle":
                await session.execute(sa.delete(table).where(mine, table.c.seq == 2))
            elif kind == "delete_last":
                await session.execute(sa.delete(table).where(mine, table.c.seq == 6))
            elif kind == "rehash":
                await _forge_rehashed(session, target["id"])
            elif kind == "actor":
                await session.execute(sa.update(table).where(mine, table.c.seq == 5)
                                      .values(actor="admin:mallory"))
            else:  # the incident's head claims more entries than there are
                await session.execute(sa.update(incidents).where(incidents.c.id == target["id"])
                                      .values(timeline_seq=7))

    original = portal(client).call(snapshot)
    for kind, seq, reason in (
        ("delete_middle", 3, "sequence gap: expected 2, found 3"),
        ("delete_last", 6, "chain ends at seq 5"),
        ("rehash", 4, "prev_hash does not match the previous entry"),
        ("actor", 5, "content does not match its hash"),
        ("head", 7, "timeline head is seq 7"),
    ):
        portal(client).call(damage, kind)
        result = audit()
        assert result.exit_code == 1, (kind, result.output)
        assert result.stdout.startswith(f"BROKEN: {target['reference']} "), kind
        assert f" seq {seq}: " in result.stdout and reason in result.stdout, result.stdout
        portal(client).call(restore, original)
        assert audit().exit_code == 0, kind


def test_audit_verify_on_an_unmigrated_database_exits_2(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISFLOW_DATABASE_URL", f"sqlite:///{tmp_path}/blank.db")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["audit", "verify"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "no such table" in result.stderr and "crisisflow migrate" in result.stderr
    assert result.stdout == ""
