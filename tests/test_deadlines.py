"""Deadlines with a moved clock: no test sleeps for a deadline (but the end-to-end one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import col

from app.bootstrap import build_env, open_database
from app.core.clock import clock
from app.core.config import Settings
from app.deadlines.firing import fire_due
from app.notifications.models import Event
from app.worker import Worker
from tests.factories import ASSESS, RESPONSE, fire, live_server, open_incident, portal
from tests.helpers.receivers import HttpReceiver

H = timedelta(hours=1)




@pytest.fixture
def tick(client: TestClient, app: Any) -> Callable[[], None]:
    worker = Worker(app.state.db, app.state.settings, registry=app.state.notifiers,
                    env=app.state.env, name="test")
    return lambda: portal(client).call(worker.drain)


def events(client: TestClient, type_: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        async with client.app.state.db.read() as session:  # type: ignore[attr-defined]
            rows = await session.execute(sa.select(col(Event.data)).where(col(Event.type) == type_)
                                         .order_by(col(Event.seq)))
            return [r[0] for r in rows]

    return portal(client).call(run)


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.parametrize(
    ("severity", "assess_in", "respond_in"),
    [("critical", 1, 6), ("high", 2, 24), ("medium", 8, 24), ("low", 24, None)],
)
def test_default_clocks_per_severity(client: TestClient, duty: dict[str, str], severity: str,
                                     assess_in: int, respond_in: int | None,
                                     tick: Callable[[], None]) -> None:
    inc = open_incident(client, duty, severity=severity)
    created = at(inc["created_at"])
    assert at(inc["deadline_at"]) == created + assess_in * H
    fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": severity})
    got = client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()
    if respond_in is None:
        assert got["deadline_at"] is None
    else:
        assert at(got["deadline_at"]) == created + respond_in * H
    clock.advance(assess_in * H + timedelta(seconds=1))
    tick()
    assert events(client, "incident.overdue") == []  # the assess clock was met in time
    assert client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()["overdue"] is False


class TestOverrides:
    @pytest.fixture
    def settings_env(self) -> dict[str, Any]:
        return {"sla_overrides": "assess.medium=30m,first_response.medium=none"}

    def test_overrides_change_the_clock(self, client: TestClient, duty: dict[str, str],
                                        tick: Callable[[], None]) -> None:
        inc = open_incident(client, duty)  # medium
        assert at(inc["deadline_at"]) == at(inc["created_at"]) + timedelta(minutes=30)
        clock.advance(timedelta(minutes=31))
        tick()
        assert [e["clock"] for e in events(client, "incident.overdue")] == ["assess"]
        fire(client, duty, inc["id"], "assess", **ASSESS)
        got = client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()
        assert got["deadline_at"] is None and got["overdue"] is False


def test_missed_deadline_fires_once_and_escalates(client: TestClient, duty: dict[str, str],
                                                  admin: dict[str, str],
                                                  tick: Callable[[], None]) -> None:
    with HttpReceiver() as rx:
        for agency in ("MIC", "VPCP", "MOH"):
            resp = client.post("/api/v1/subscriptions", headers=admin, json={
                "agency": agency, "notifier": "webhook", "target": f"{rx.url}?{agency}",
                "events": ["incident.overdue", "incident.escalated"]})
            assert resp.status_code == 201
        inc = open_incident(client, duty, severity="critical", affected_agencies=["MOH"])
        # The service was "down" for five hours: the assess deadline (1 h) is found late.
        clock.advance(5 * H)
        tick()
        tick()
        got = client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()
        assert got["overdue"] is True and got["escalation_level"] == 1
        assert [e["clock"] for e in events(client, "incident.overdue")] == ["assess"]
        rx.wait_for(3)
        time.sleep(0.1)
        seen = sorted((r.path.split("?")[1], r.json()["type"]) for r in rx.requests)
        # MOH (involved) gets both; MIC gets the level-1 escalation; VPCP nothing yet.
        assert seen == [("MIC", "incident.escalated"), ("MOH", "incident.escalated"),
                        ("MOH", "incident.overdue")]
        rx.clear()
        clock.advance(2 * H)  # 7 h: the first-response clock (6 h for critical) is missed too
        tick()
        got = client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()
        assert got["escalation_level"] == 2
        assert [e["clock"] for e in events(client, "incident.overdue")] == ["assess",
                                                                             "first_response"]
        rx.wait_for(4)
        time.sleep(0.1)
        seen = sorted((r.path.split("?")[1], r.json()["type"]) for r in rx.requests)
        assert ("VPCP", "incident.escalated") in seen and len(seen) == 4
        escalations = events(client, "incident.escalated")
        assert [(e["reason"], e["level"], e["clock"]) for e in escalations] == [
            ("overdue", 1, "assess"), ("overdue", 2, "first_response")]
        timeline = client.get(f"/api/v1/incidents/{inc['id']}/timeline", headers=duty).json()
        assert [e["kind"] for e in timeline["items"]].count("overdue") == 2
        # Meeting the clocks later clears `overdue`; the level never goes down.
        fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "medium"})
        fire(client, duty, inc["id"], "issue_response", **RESPONSE)
        got = client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()
        assert got["overdue"] is False and got["escalation_level"] == 2
        clock.advance(48 * H)
        tick()
        assert len(events(client, "incident.overdue")) == 2


def test_overdue_filter(client: TestClient, duty: dict[str, str],
                        tick: Callable[[], None]) -> None:
    late = open_incident(client, duty, severity="critical")
    on_time = open_incident(client, duty, severity="critical")
    fire(client, duty, on_time["id"], "assess", **{**ASSESS, "severity": "low"})
    clock.advance(2 * H)
    tick()
    ids = [i["id"] for i in client.get("/api/v1/incidents?overdue=true",
                                        headers=duty).json()["items"]]
    assert ids == [late["id"]]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_workers_race_for_one_deadline(client: TestClient, duty: dict[str, str],
                                           settings: Settings) -> None:
    for _ in range(5):
        open_incident(client, duty, severity="critical")
    clock.advance(2 * H)

    async def race() -> list[int]:
        env = build_env(settings)
        dbs = [open_database(settings, pool_size=3) for _ in range(4)]
        try:
            return list(await asyncio.gather(*(fire_due(db, env) for db in dbs)))
        finally:
            for db in dbs:
                await db.dispose()

    fired = asyncio.run(race())
    assert sum(fired) == 5, fired
    assert len(events(client, "incident.overdue")) == 5


def test_overdue_reaches_a_receiver_within_two_seconds_end_to_end(
        db_url: str, make_key: Callable[..., dict[str, str]], client: TestClient) -> None:
    from app.main import create_app

    settings = Settings(database_url=db_url, log_json=False, access_log=False,
                        sla_overrides="assess.critical=2s", worker_poll_seconds=0.5)
    duty, admin = make_key("duty_officer"), make_key("admin")
    app = create_app(settings, run_worker=True)
    with HttpReceiver() as rx, live_server(app) as base, httpx.Client(base_url=base) as http:
        resp = http.post("/api/v1/subscriptions", headers=admin, json={
            "agency": "MOH", "notifier": "webhook", "target": rx.url, "scope": "all",
            "events": ["incident.overdue"]})
        assert resp.status_code == 201
        inc = http.post("/api/v1/incidents", headers=duty,
                        json={"title": "Khủng hoảng truyền thông", "severity": "critical"}).json()
        due = at(inc["deadline_at"]).timestamp()
        [req] = rx.wait_for(1, timeout=10)
        body = req.json()
        assert body["type"] == "incident.overdue" and body["data"]["clock"] == "assess"
        late = req.received_at - due
        print(f"\nincident.overdue arrived {late:.3f} s after the deadline")
        assert 0 <= late <= 2.0
