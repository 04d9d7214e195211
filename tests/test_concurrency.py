"""Racing writers against a real server (uvicorn in a thread), on SQLite and PostgreSQL.

Each worker thread has its own `httpx.Client` (its own connections); a barrier releases
them together so the requests really overlap inside the server.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.auth.models import ApiKeyCreate, Role
from app.auth.service import create_key
from app.core.db import Database
from app.incidents.timeline import verify_all
from tests.factories import ASSESS, PROPOSAL, RESPONSE, live_server

API = "/api/v1"
Headers = dict[str, str]


def _with_db(db_url: str, fn: Callable[[Database], Any]) -> Any:
    async def run() -> Any:
        db = Database(db_url, pool_size=2)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def make_keys(db_url: str, role: str, n: int) -> list[Headers]:
    async def create(db: Database) -> list[Headers]:
        async with db.transaction() as session:
            made = [await create_key(session, ApiKeyCreate(name=f"{role}-{i}", role=Role(role)))
                    for i in range(n)]
        return [{"Authorization": f"Bearer {k.key}"} for k in made]

    keys: list[Headers] = _with_db(db_url, create)
    return keys


def seed_agencies(db_url: str) -> None:
    from app.agencies.models import AgencyCreate
    from app.agencies.service import seed_records, upsert_many

    async def seed(db: Database) -> None:
        async with db.transaction() as session:
            await upsert_many(session, [AgencyCreate.model_validate(r) for r in seed_records()])

    _with_db(db_url, seed)


@pytest.fixture
def base_url(app: Any, db_url: str) -> Iterator[str]:
    seed_agencies(db_url)
    with live_server(app) as url:
        yield url


@pytest.fixture
def duty(db_url: str) -> Headers:
    return make_keys(db_url, "duty_officer", 1)[0]


def race(base_url: str, calls: list[tuple[str, str, Headers, Any]]) -> list[httpx.Response]:
    """Send every (method, path, headers, json) at once, one thread and client each."""
    barrier = threading.Barrier(len(calls))

    def send(call: tuple[str, str, Headers, Any]) -> httpx.Response:
        method, path, headers, body = call
        with httpx.Client(base_url=base_url, timeout=60, verify=False) as client:
            barrier.wait(timeout=30)
            return client.request(method, path, headers=headers, json=body)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(send, calls))


def post(base_url: str, path: str, headers: Headers, body: Any) -> dict[str, Any]:
    with httpx.Client(verify=False, timeout=30) as client:  # plain http: no CA bundle
        resp = client.post(base_url + path, headers=headers, json=body)
    assert resp.status_code in (200, 201), resp.text
    data: dict[str, Any] = resp.json()
    return data


def get(base_url: str, path: str, headers: Headers) -> Any:
    with httpx.Client(verify=False, timeout=30) as client:
        resp = client.get(base_url + path, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_no_server_errors(responses: list[httpx.Response]) -> None:
    for r in responses:
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json"), r.text


def transitions(base_url: str, headers: Headers, incident_id: str) -> list[dict[str, Any]]:
    items = get(base_url, f"{API}/incidents/{incident_id}/timeline", headers)["items"]
    return [e for e in items if e["kind"] == "transition"]


def test_twenty_leaders_approve_one_proposal(base_url: str, db_url: str,
                                            duty: Headers) -> None:
    inc = post(base_url, f"{API}/incidents", duty, {"title": "Tin giả lan rộng"})
    url = f"{API}/incidents/{inc['id']}/transitions"
    post(base_url, url, duty, {"trigger": "assess", **ASSESS, "severity": "critical"})
    post(base_url, url, duty, {"trigger": "propose_task_force", **PROPOSAL})
    proposal = get(base_url, f"{API}/proposals?status=pending", duty)["items"][0]
    before = get(base_url, f"{API}/incidents/{inc['id']}", duty)["version"]

    leaders = make_keys(db_url, "leader", 20)
    responses = race(base_url, [("POST", f"{API}/proposals/{proposal['id']}/approve", h,
                                 {"comment": f"đồng ý {i}"}) for i, h in enumerate(leaders)])

    assert_no_server_errors(responses)
    assert Counter(r.status_code for r in responses) == {200: 1, 409: 19}
    winner = next(r.json() for r in responses if r.status_code == 200)
    assert all(r.json()["type"] == "/problems/conflict" for r in responses
               if r.status_code == 409)
    stored = get(base_url, f"{API}/proposals/{proposal['id']}", duty)
    assert stored["status"] == "approved"
    assert (stored["decided_by"], stored["decision_comment"]) == (winner["decided_by"],
                                                                  winner["decision_comment"])
    approvals = [e for e in transitions(base_url, duty, inc["id"])
                 if e["data"]["trigger"] == "approve_task_force"]
    assert len(approvals) == 1
    assert get(base_url, f"{API}/incidents/{inc['id']}", duty)["version"] == before + 1


def test_fifty_transitions_on_one_incident(base_url: str, db_url: str, duty: Headers) -> None:
    inc = post(base_url, f"{API}/incidents", duty, {"title": "Sự cố truyền thông"})
    url = f"{API}/incidents/{inc['id']}/transitions"
    post(base_url, url, duty, {"trigger": "assess", **ASSESS})
    start = post(base_url, url, duty, {"trigger": "issue_response", **RESPONSE})
    assert (start["state"], start["version"]) == ("response_issued", 3)

    severities = ["low", "medium", "high", "critical"]
    calls: list[tuple[str, str, Headers, Any]] = []
    for i in range(50):
        headers = dict(duty)
        if i % 10 == 0:
            headers["If-Match"] = '"1"'  # long stale: must be 412
        elif i % 10 == 1:
            headers["If-Match"] = '"3"'  # current at the start: at most one can win
        body = ({"trigger": "reassess", "severity": severities[i % 4], "summary": f"lần {i}"}
                if i % 2 else {"trigger": "issue_response", **RESPONSE, "statement": f"#{i}"})
        calls.append(("POST", url, headers, body))
    responses = race(base_url, calls)

    assert_no_server_errors(responses)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409, 412}, Counter(statuses)
    assert all(statuses[i] == 412 for i in range(0, 50, 10))
    assert sum(statuses[i] == 200 for i in range(1, 50, 10)) <= 1
    ok = statuses.count(200)
    assert ok >= 1
    # Writers racing from one version: one wins, the others lose with 409 (api.md).
    assert all(r.json()["type"] in {"/problems/conflict", "/problems/precondition-failed"}
               for r in responses if r.status_code in (409, 412))
    final = get(base_url, f"{API}/incidents/{inc['id']}", duty)
    assert final["version"] == 3 + ok
    assert final["state"] == "response_issued"
    assert len(transitions(base_url, duty, inc["id"])) == 2 + ok
    versions = sorted(r.json()["version"] for r in responses if r.status_code == 200)
    assert versions == list(range(4, 4 + ok))  # every winner saw its own, distinct version

    # state-changing racers: exactly one close wins, the rest see a closed incident
    closers = race(base_url, [("POST", url, duty, {"trigger": "close", "resolution": "resolved",
                                                   "summary": f"đóng {i}"}) for i in range(10)])
    assert_no_server_errors(closers)
    assert Counter(r.status_code for r in closers) == {200: 1, 409: 9}
    assert {r.json()["type"] for r in closers if r.status_code == 409} <= {
        "/problems/invalid-transition", "/problems/conflict"}
    assert get(base_url, f"{API}/incidents/{inc['id']}", duty)["version"] == 4 + ok

    result = _with_db(db_url, verify_all)
    assert result.broken is None, result.broken
    assert (result.incidents, result.entries) == (1, 1 + 2 + ok + 1)


def test_thirty_incidents_opened_at_once_get_consecutive_references(
        base_url: str, duty: Headers) -> None:
    responses = race(base_url, [("POST", f"{API}/incidents", duty, {"title": f"Sự cố {i}"})
                                for i in range(30)])
    assert_no_server_errors(responses)
    assert [r.status_code for r in responses] == [201] * 30
    refs = [r.json()["reference"] for r in responses]
    assert len(set(refs)) == 30
    year = refs[0].split("-")[1]
    assert sorted(refs) == [f"INC-{year}-{n:06d}" for n in range(1, 31)]
    assert len({r.json()["id"] for r in responses}) == 30
