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
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import get_settings
from app.incidents.models import Incident, TimelineEntry
from app.incidents.timeline import verify_all
from tests.factories import ASSESS, PROPOSAL, RESPONSE, fire, open_incident

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

    total: int = client.portal.call(count)
    return total


def tamper(client: TestClient, statement: Any) -> None:
    async def run() -> None:
        async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            await session.execute(statement)

    client.portal.call(run)


def entry_where(incident_id: str, seq: int) -> Any:
    return sa.and_(TimelineEntry.incident_id == incident_id, TimelineEntry.seq == seq)


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


def test_audit_verify_reports_the_first_broken_link(client: TestClient, make_key: Any,
                                                    audit: Callable[..., Any]) -> None:
    made = history(client, make_key)
    target = made[3]  # assessed, proposed, approved, responded, commented: 6 entries
    tamper(client, sa.update(TimelineEntry).where(entry_where(target["id"], 3))
           .values(data={"trigger": "propose_task_force", "payload": {"forged": True}}))

    result = audit("--batch-size", "2")
    assert result.exit_code == 1, result.output
    line = result.stdout.strip()
    assert line.startswith(f"BROKEN: {target['reference']} (incident {target['id']}) seq 3: ")
    assert "content does not match its hash" in line

    # the API still serves what is stored; only the audit notices
    resp = client.get(f"{API}/incidents/{target['id']}/timeline", headers=make_key("viewer"))
    assert resp.json()["items"][2]["data"]["payload"] == {"forged": True}


@pytest.mark.parametrize(
    ("damage", "seq", "reason"),
    [
        ("delete_middle", 3, "sequence gap: expected 2, found 3"),
        ("delete_last", 6, "chain ends at seq 5"),
        ("rehash", 4, "prev_hash does not match the previous entry"),
        ("actor", 5, "content does not match its hash"),
    ],
)
def test_audit_verify_catches_each_kind_of_damage(client: TestClient, make_key: Any,
                                                  audit: Callable[..., Any], damage: str,
                                                  seq: int, reason: str) -> None:
    made = history(client, make_key, n=2)
    target = made[1]  # 6 entries
    where = entry_where(target["id"], seq if damage != "delete_middle" else 2)
    if damage.startswith("delete"):
        tamper(client, sa.delete(TimelineEntry).where(where))
    elif damage == "rehash":  # a forger who recomputes the entry's own hash still breaks
        # the link to the next one; here: entry 3 rewritten with a fresh (self-consistent)
        # hash, so entry 4's prev_hash no longer matches
        from app.incidents.timeline import _content, entry_hash

        async def forge() -> None:
            async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
                entry = (await session.execute(sa.select(TimelineEntry).where(
                    entry_where(target["id"], 3)))).scalar_one()
                entry.actor = "leader:someone else"
                entry.hash = entry_hash(entry.prev_hash, _content(entry))
                session.add(entry)

        client.portal.call(forge)
    else:
        tamper(client, sa.update(TimelineEntry).where(where).values(actor="admin:mallory"))

    result = audit()
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(f"BROKEN: {target['reference']} ")
    assert f" seq {seq}: " in result.stdout and reason in result.stdout, result.stdout


def test_verify_all_streams_in_batches(client: TestClient, make_key: Any) -> None:
    history(client, make_key, n=5)
    calls: list[tuple[int, int]] = []

    result = client.portal.call(lambda: verify_all(
        client.app.state.db, batch_size=2, progress=lambda done, total: calls.append(  # type: ignore[attr-defined]
            (done, total))))
    assert result.broken is None
    assert (result.incidents, result.entries) == (5, count_entries(client))
    assert calls == [(2, 5), (4, 5), (5, 5)]

    # an incident whose head moved past its last entry (entries lost at the end)
    target = Incident.__table__  # type: ignore[attr-defined]
    tamper(client, sa.update(target).values(timeline_seq=target.c.timeline_seq + 1))
    result = client.portal.call(lambda: verify_all(client.app.state.db))  # type: ignore[attr-defined]
    assert result.broken is not None and "timeline head" in result.broken.reason


def test_installed_command_runs_against_the_database(client: TestClient, make_key: Any,
                                                     db_url: str) -> None:
    history(client, make_key, n=2)
    env = {**os.environ, "CRISISFLOW_DATABASE_URL": db_url}
    exe = Path(sys.executable).with_name("crisisflow")
    done = subprocess.run([str(exe), "audit", "verify"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"2 incidents, {count_entries(client)} entries verified\n"
