"""Logs and metrics: one JSON line per request, no secret ever logged or returned."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.logging import JsonFormatter
from tests.factories import ASSESS, PROPOSAL, RESPONSE, fire, open_incident

SIGNING = "whsec_" + "b2JzZXJ2YWJpbGl0eS1zZWNyZXQtMTIzNDU2Nzg="
SUB_SECRET = "whsec_" + "c3Vic2NyaXB0aW9uLXNlY3JldC0xMjM0NTY3OA=="


@pytest.fixture
def settings_env() -> dict[str, Any]:
    return {"access_log": True}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, formatted exactly as production formats it (JSON lines)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_full_lifecycle_never_logs_or_returns_a_secret(
        client: TestClient, make_key: Callable[..., dict[str, str]],
        captured: io.StringIO) -> None:
    import time

    from app.core.signing import headers as sign_headers

    admin, duty, leader = make_key("admin"), make_key("duty_officer"), make_key("leader")
    monitor = make_key("monitor", signing_secret=SIGNING)
    bodies: list[str] = []
    sub = client.post("/api/v1/subscriptions", headers=admin, json={
        "agency": "MOH", "notifier": "webhook", "target": "https://moh.example.vn/hook",
        "events": ["incident.detected"], "secret": SUB_SECRET})
    bodies.append(sub.text)
    payload = json.dumps({"source": "s", "title": "Tin giả", "labels": {"topic": "t"}}).encode()
    signed = sign_headers(SIGNING, "msg-1", int(time.time()), payload)
    resp = client.post("/api/v1/alerts", content=payload,
                       headers={**monitor, **signed, "content-type": "application/json"})
    assert resp.status_code == 202
    bodies.append(resp.text)
    bad = client.post("/api/v1/alerts", content=payload,
                      headers={**monitor, **signed, "webhook-signature": "v1,AAAA",
                               "webhook-id": "msg-2", "content-type": "application/json"})
    assert bad.status_code == 401
    bodies.append(bad.text)
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "high"})
    fire(client, duty, inc["id"], "propose_task_force", **PROPOSAL)
    [p] = client.get("/api/v1/proposals?status=pending", headers=leader).json()["items"]
    bodies.append(client.post(f"/api/v1/proposals/{p['id']}/approve", json={},
                              headers=leader).text)
    fire(client, duty, inc["id"], "issue_response", **RESPONSE)
    bodies.append(client.get("/api/v1/subscriptions", headers=admin).text)
    bodies.append(client.get("/api/v1/notifications", headers=admin).text)
    bodies.append(client.get("/api/v1/agencies", headers={"Authorization": "Bearer cf_wrong"}).text)
    logs = captured.getvalue()
    keys = [h["Authorization"].split()[1] for h in (admin, duty, leader, monitor)]
    for secret in [*keys, SIGNING, SUB_SECRET, SIGNING[6:], SUB_SECRET[6:]]:
        assert secret not in logs
        for body in bodies:
            assert secret not in body
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]
    access = [x for x in lines if x["logger"] == "crisisflow.access"]
    assert len(access) >= 10
    for line in access:
        assert {"method", "path", "status", "duration_ms", "request_id"} <= set(line)
        assert re.fullmatch(r"[0-9a-f-]{36}", line["request_id"])


def test_request_id_reaches_the_access_log(client: TestClient, captured: io.StringIO) -> None:
    resp = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert resp.headers["x-request-id"] == "trace-42"
    lines = [json.loads(x) for x in captured.getvalue().splitlines() if x.strip()]
    assert any(x.get("request_id") == "trace-42" and x.get("path") == "/healthz" for x in lines)


def test_metrics_cover_requests_alerts_transitions_deliveries_and_backlog(
        client: TestClient, make_key: Callable[..., dict[str, str]]) -> None:
    duty, monitor = make_key("duty_officer"), make_key("monitor")
    client.post("/api/v1/alerts", json={"source": "s", "title": "a", "fingerprint": "f1"},
                headers=monitor)
    client.post("/api/v1/alerts", json={"source": "s", "title": "a", "fingerprint": "f1"},
                headers=monitor)
    inc = open_incident(client, duty)
    fire(client, duty, inc["id"], "assess", **ASSESS)
    text = client.get("/metrics").text
    for name in ("crisisflow_http_requests_total", "crisisflow_alerts_total",
                 "crisisflow_transitions_total", "crisisflow_outbox_backlog",
                 "crisisflow_outbox_oldest_due_seconds", "crisisflow_overdue_incidents",
                 "crisisflow_delivery_latency_seconds_bucket", "crisisflow_deliveries"):
        assert name in text, name
    assert re.search(r'crisisflow_alerts_total\{format="generic",outcome="deduplicated"\} [1-9]',
                     text)
    assert re.search(r'crisisflow_transitions_total\{outcome="ok",trigger="assess"\} [1-9]', text)
    assert 'route="/api/v1/incidents/{incident_id}/transitions"' in text
    # How many requests each ingest transaction carried (the group commit at work).
    assert re.search(r"crisisflow_ingest_group_requests_count [1-9]", text)
