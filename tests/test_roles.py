"""Who may call what: one row per route, as api.md gives it, checked for every role.

A role that api.md allows must never see 401/403 (nor a 5xx); every other role gets 403
with a problem body; no key at all gets 401. `monitor` may only ingest alerts, so it gets
403 on every read route. To cover a new route, add a row to ROUTES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import ASSESS, PROPOSAL, fire, open_incident

API = "/api/v1"
ROLES = ("monitor", "viewer", "leader", "duty_officer", "admin")
READERS = frozenset({"admin", "duty_officer", "leader", "viewer"})
OFFICERS = frozenset({"admin", "duty_officer"})
DECIDERS = frozenset({"admin", "leader"})
PROPOSAL_READERS = frozenset({"admin", "duty_officer", "leader"})
ADMIN = frozenset({"admin"})
INGEST = frozenset({"admin", "monitor"})
CAP = (Path(__file__).parent / "fixtures" / "cap" / "valid-vi.xml").read_bytes()
ALERTMANAGER = {
    "version": "4", "groupKey": "{}:{alertname=\"Roles\"}", "truncatedAlerts": 0,
    "status": "firing", "receiver": "crisisflow", "groupLabels": {"alertname": "Roles"},
    "commonLabels": {"alertname": "Roles"}, "commonAnnotations": {},
    "externalURL": "http://alertmanager.local",
    "alerts": [{"status": "firing", "labels": {"alertname": "Roles"}, "annotations": {},
                "startsAt": "2026-11-26T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph", "fingerprint": "0f0f0f0f"}],
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {incident}, {proposal}, {agency}, {subscription}, {delivery} get filled in
    allowed: frozenset[str]
    ok: frozenset[int] = frozenset({200})  # what an allowed role may get back
    body: Callable[[str], Any] | None = None  # role -> JSON body
    raw: tuple[bytes, str] | None = None  # (content, content type) instead of JSON
    streams: bool = False  # an endless response: only refusals are checked here
    params: dict[str, str] = field(default_factory=dict)


ROUTES = [
    # directory
    Route("GET", "/agencies", READERS),
    Route("GET", "/agencies/{agency}", READERS),
    Route("POST", "/agencies", ADMIN, frozenset({201}), body=lambda role: {
        "code": f"T-{role[:5].upper()}", "name": "Cơ quan thử", "kind": "other"}),
    Route("PUT", "/agencies/{agency}", ADMIN, body=lambda role: {
        "name": "Bộ Y tế", "kind": "ministry"}),
    # incidents
    Route("POST", "/incidents", OFFICERS, frozenset({201}),
          body=lambda role: {"title": f"Mở bởi {role}"}),
    Route("GET", "/incidents", READERS),
    Route("GET", "/incidents/{incident}", READERS),
    Route("PATCH", "/incidents/{incident}", OFFICERS,
          body=lambda role: {"description": f"sửa bởi {role}"}),
    Route("POST", "/incidents/{incident}/transitions", OFFICERS,
          body=lambda role: {"trigger": "reassess", "severity": "medium", "summary": role}),
    Route("GET", "/incidents/{incident}/timeline", READERS),
    Route("POST", "/incidents/{incident}/comments", OFFICERS | {"leader"}, frozenset({201}),
          body=lambda role: {"body": f"ý kiến của {role}"}),
    Route("GET", "/incidents/{incident}/alerts", READERS),
    Route("GET", "/incidents/{incident}/notifications", READERS),
    # proposals: the first decider approves, the next one finds it decided (409)
    Route("GET", "/proposals", PROPOSAL_READERS, params={"status": "pending"}),
    Route("GET", "/proposals/{proposal}", PROPOSAL_READERS),
    Route("POST", "/proposals/{proposal}/approve", DECIDERS, frozenset({200, 409}),
          body=lambda role: {"comment": role}),
    Route("POST", "/proposals/{proposal}/reject", DECIDERS, frozenset({409}),
          body=lambda role: {"comment": role}),
    # workflows
    Route("GET", "/workflows", READERS),
    Route("GET", "/workflows/communication-incident", READERS),
    Route("GET", "/workflows/communication-incident/diagram", READERS),
    # alerts
    Route("POST", "/alerts", INGEST, frozenset({202}),
          body=lambda role: {"source": "roles-test", "title": f"Cảnh báo từ {role}"}),
    Route("POST", "/alerts/alertmanager", INGEST, frozenset({202}),
          body=lambda role: ALERTMANAGER),
    Route("POST", "/alerts/cap", INGEST, frozenset({202}), raw=(CAP, "application/cap+xml")),
    # subscriptions and notifications
    Route("GET", "/subscriptions", ADMIN),
    Route("POST", "/subscriptions", ADMIN, frozenset({201}), body=lambda role: {
        "agency": "MOH", "notifier": "log", "target": "crisis", "events": ["incident.detected"],
        "scope": "all"}),
    Route("DELETE", "/subscriptions/{subscription}", ADMIN, frozenset({204})),
    Route("GET", "/notifications", OFFICERS),
    Route("POST", "/notifications/{delivery}/retry", ADMIN, frozenset({404})),
    # live and operational
    Route("GET", "/events/stream", READERS, streams=True),
    Route("GET", "/stats", READERS),
    Route("GET", "/reports/spokesperson", READERS),
]


def test_every_role_reaches_exactly_its_routes(client: TestClient, make_key: Any) -> None:
    keys = {role: make_key(role, name=role) for role in ROLES}
    duty = keys["duty_officer"]
    incident = open_incident(client, duty, lead_agency="MOH")
    fire(client, duty, incident["id"], "assess", **ASSESS)
    other = open_incident(client, duty)
    fire(client, duty, other["id"], "assess", **{**ASSESS, "severity": "high"})
    fire(client, duty, other["id"], "propose_task_force", **PROPOSAL)
    proposal = client.get(f"{API}/proposals", headers=duty).json()["items"][0]
    subscription = client.post(f"{API}/subscriptions", headers=keys["admin"], json={
        "agency": "MIC", "notifier": "log", "target": "x", "events": ["incident.closed"]})
    assert subscription.status_code == 201, subscription.text
    ids = {"incident": incident["id"], "proposal": proposal["id"], "agency": "MOH",
           "subscription": subscription.json()["id"], "delivery": "no-such-delivery"}

    failures: list[str] = []
    checked = 0
    for route in ROUTES:
        path = API + route.path.format(**ids)
        for role in (None, *ROLES):
            headers = dict(keys[role]) if role else {}
            if route.streams and role in route.allowed:
                continue  # 200 and an endless body: covered by tests/test_live.py
            kwargs: dict[str, Any] = {"params": route.params}
            if route.raw is not None:
                kwargs["content"] = route.raw[0]
                headers["Content-Type"] = route.raw[1]
            elif route.body is not None:
                kwargs["json"] = route.body(role or "anonymous")
            resp = client.request(route.method, path, headers=headers, **kwargs)
            checked += 1
            where = f"{route.method} {route.path} as {role or 'no key'}: {resp.status_code}"
            if role is None:
                expected = {401}
            elif role in route.allowed:
                expected = set(route.ok)
            else:
                expected = {403}
            if resp.status_code not in expected:
                failures.append(f"{where}, expected {sorted(expected)}: {resp.text[:160]}")
            elif resp.status_code in (401, 403):
                problem = resp.json()
                wanted = "/problems/unauthenticated" if role is None else "/problems/forbidden"
                if problem.get("type") != wanted or not resp.headers["content-type"].startswith(
                        "application/problem+json"):
                    failures.append(f"{where}: not a {wanted} problem: {resp.text[:160]}")
    assert not failures, "\n".join(failures)
    assert checked == len(ROUTES) * (len(ROLES) + 1) - len(READERS)


def test_every_api_route_is_in_the_table(tmp_path: Path) -> None:
    """A new route must get a row here (and so a decision about who may call it)."""
    from app.core.config import Settings
    from app.main import create_app

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/unused.db"))
    names = {"incident_id": "{incident}", "proposal_id": "{proposal}", "code": "{agency}",
             "subscription_id": "{subscription}", "delivery_id": "{delivery}",
             "name": "communication-incident"}
    served = set()
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith(API):
            continue
        for old, new in names.items():
            path = path.replace("{" + old + "}", new)
        served |= {(method.upper(), path.removeprefix(API)) for method in operations}
    table = {(route.method, route.path) for route in ROUTES}
    assert served - table == set(), "routes without a row in ROUTES"
    assert table - served == set(), "rows for routes that are not served"
