"""The outbox: subscriptions, fan-out, delivery with retries, escalation recipients."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.clock import clock
from app.core.signing import verify
from app.worker import Worker
from tests.factories import ASSESS, PROPOSAL, assert_problem, fire, open_incident, portal
from tests.helpers.receivers import HttpReceiver

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx




@pytest.fixture
def drain(client: TestClient, app: Any) -> Callable[[], None]:
    worker = Worker(app.state.db, app.state.settings, registry=app.state.notifiers, name="test")

    def run() -> None:
        portal(client).call(worker.drain)

    return run


def subscribe(client: TestClient, admin: dict[str, str], url: str, **fields: Any) -> dict[str, Any]:
    body = {"agency": "MOH", "notifier": "webhook", "target": url,
            "events": ["incident.detected"], **fields}
    resp = client.post("/api/v1/subscriptions", json=body, headers=admin)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


def notifications(client: TestClient, headers: dict[str, str], **params: Any) -> list[Any]:
    resp = client.get("/api/v1/notifications", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    items: list[Any] = resp.json()["items"]
    return items


# -- subscriptions ----------------------------------------------------------------------

def test_subscription_secret_is_write_only(client: TestClient, admin: dict[str, str]) -> None:
    sub = subscribe(client, admin, "https://moh.example.vn/hook", secret=SECRET)
    assert "secret" not in sub and sub["has_secret"] is True
    listed = client.get("/api/v1/subscriptions", headers=admin)
    assert SECRET not in listed.text
    assert [s["id"] for s in listed.json()["items"]] == [sub["id"]]


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("notifier", "carrier-pigeon", "unknown notifier"),
        ("target", "ftp://moh.example.vn/hook", "http"),
        ("target", "http://169.254.169.254/latest/meta-data", "link-local"),
        ("agency", "NOPE", "NOPE"),
        ("events", ["incident.exploded"], ""),
        ("scope", "galaxy", ""),
    ],
)
def test_bad_subscriptions_are_422(client: TestClient, admin: dict[str, str], field: str,
                                   value: Any, needle: str) -> None:
    body = {"agency": "MOH", "notifier": "webhook", "target": "https://moh.example.vn/hook",
            "events": ["incident.detected"], field: value}
    problem = assert_problem(client.post("/api/v1/subscriptions", json=body, headers=admin), 422,
                             "/problems/validation")
    assert needle.lower() in problem["detail"].lower()


def test_subscriptions_are_admin_only_and_deletable(client: TestClient, admin: dict[str, str],
                                                     duty: dict[str, str]) -> None:
    assert_problem(client.get("/api/v1/subscriptions", headers=duty), 403, "/problems/forbidden")
    sub = subscribe(client, admin, "https://moh.example.vn/hook")
    assert client.delete(f"/api/v1/subscriptions/{sub['id']}", headers=admin).status_code == 204
    assert_problem(client.delete(f"/api/v1/subscriptions/{sub['id']}", headers=admin), 404,
                   "/problems/not-found")
    assert client.get("/api/v1/subscriptions", headers=admin).json()["items"] == []


# -- delivery ---------------------------------------------------------------------------

def test_signed_delivery_reaches_a_real_receiver(client: TestClient, admin: dict[str, str],
                                                  duty: dict[str, str], receiver: HttpReceiver,
                                                  drain: Callable[[], None]) -> None:
    subscribe(client, admin, receiver.url, secret=SECRET)
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    drain()
    [req] = receiver.wait_for(1)
    verify(SECRET, req.headers.get("webhook-id"), req.headers.get("webhook-timestamp"),
           req.headers.get("webhook-signature"), req.body, now=time.time())
    body = req.json()
    assert body["type"] == "incident.detected"
    assert body["data"]["incident"]["id"] == inc["id"]
    assert body["data"]["incident"]["title"] == inc["title"]
    assert "allowed_triggers" not in body["data"]["incident"]
    [n] = notifications(client, admin)
    assert n["status"] == "delivered" and n["id"] == req.headers["webhook-id"]
    assert n["attempts"][0]["outcome"] == "delivered" and n["attempts"][0]["status_code"] == 200


def test_scope_severity_and_category_filters(client: TestClient, admin: dict[str, str],
                                             duty: dict[str, str], receiver: HttpReceiver,
                                             drain: Callable[[], None]) -> None:
    subscribe(client, admin, receiver.url + "?involved")  # MOH, involved
    subscribe(client, admin, receiver.url + "?all", agency="MOJ", scope="all")
    subscribe(client, admin, receiver.url + "?high", scope="all", min_severity="high")
    subscribe(client, admin, receiver.url + "?fake", scope="all", categories=["fake_news"])
    open_incident(client, duty, affected_agencies=["MOF"])  # medium, other
    open_incident(client, duty, affected_agencies=["MOH"], severity="high",
                  category="fake_news")
    drain()
    paths = sorted(r.path.split("?")[1] for r in receiver.wait_for(5))
    time.sleep(0.1)
    assert paths == ["all", "all", "fake", "high", "involved"]
    assert len(receiver.requests) == 5


def test_escalation_adds_authority_recipients(client: TestClient, admin: dict[str, str],
                                              duty: dict[str, str], receiver: HttpReceiver,
                                              drain: Callable[[], None]) -> None:
    esc = ["incident.escalated", "incident.assessed"]
    subscribe(client, admin, receiver.url + "?mic", agency="MIC", events=esc)
    subscribe(client, admin, receiver.url + "?vpcp", agency="VPCP", events=esc)
    subscribe(client, admin, receiver.url + "?moh", agency="MOH", events=esc)
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "high"})
    drain()
    got: dict[str, list[tuple[str, int | None]]] = {
        r.path.split("?")[1]: [] for r in receiver.wait_for(3)}
    for r in receiver.requests:
        got[r.path.split("?")[1]].append((r.json()["type"], r.json()["data"].get("level")))
    # Level 1: MIC gets the escalation (not the assessment: it is not involved); VPCP nothing.
    assert sorted(got["moh"]) == [("incident.assessed", None), ("incident.escalated", 1)]
    assert got["mic"] == [("incident.escalated", 1)]
    assert "vpcp" not in got
    receiver.clear()
    fire(client, duty, inc["id"], "reassess", severity="critical", summary="Lan rộng toàn quốc")
    drain()
    receiver.wait_for(4)
    time.sleep(0.1)
    levels = sorted((r.path.split("?")[1], r.json()["type"]) for r in receiver.requests)
    assert levels == [("mic", "incident.escalated"), ("moh", "incident.assessed"),
                      ("moh", "incident.escalated"), ("vpcp", "incident.escalated")]
    assert all(r.json()["data"]["level"] == 2 for r in receiver.requests
               if r.json()["type"] == "incident.escalated")


def test_failed_transition_writes_no_outbox_rows(client: TestClient, admin: dict[str, str],
                                                 duty: dict[str, str], receiver: HttpReceiver,
                                                 drain: Callable[[], None]) -> None:
    subscribe(client, admin, receiver.url, scope="all",
              events=["incident.assessed", "response.issued", "task_force.proposed"])
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "critical"})
    # Refused by a guard after nothing changed, and by a bad agency after actions ran.
    fire(client, duty, inc["id"], "issue_response", expect=409, channel="other", statement="x",
         spokesperson="y")
    fire(client, duty, inc["id"], "propose_task_force", expect=422,
         **{**PROPOSAL, "members": ["NOPE"]})
    drain()
    receiver.wait_for(1)
    time.sleep(0.1)
    assert [r.json()["type"] for r in receiver.requests] == ["incident.assessed"]
    assert client.get(f"/api/v1/incidents/{inc['id']}", headers=duty).json()["state"] == "assessed"


def test_events_of_one_incident_arrive_in_order_despite_failures(
        client: TestClient, admin: dict[str, str], duty: dict[str, str], receiver: HttpReceiver,
        drain: Callable[[], None]) -> None:
    subscribe(client, admin, receiver.url, events=["incident.detected", "incident.assessed",
                                                   "incident.closed"])
    receiver.push_response(503)
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    fire(client, duty, inc["id"], "assess", **ASSESS)
    fire(client, duty, inc["id"], "close", resolution="dismissed", summary="Không cần xử lý")
    drain()
    assert [r.json()["type"] for r in receiver.wait_for(1)] == ["incident.detected"]
    time.sleep(0.2)
    assert len(receiver.requests) == 1  # later events wait behind the failed one
    clock.advance(timedelta(seconds=10))
    drain()
    types = [r.json()["type"] for r in receiver.wait_for(4)]
    assert types == ["incident.detected", "incident.detected", "incident.assessed",
                     "incident.closed"]
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] == ids[1]  # the retry carries the same webhook-id


@pytest.mark.parametrize(
    ("status", "headers", "expect_status", "retry_in"),
    [
        (500, {}, "pending", (4, 6)),
        (429, {"Retry-After": "120"}, "pending", (119, 121)),
        (408, {}, "pending", (4, 6)),
        (410, {}, "failed", None),
        (404, {}, "failed", None),
    ],
)
def test_receiver_answers_decide_retry(client: TestClient, admin: dict[str, str],
                                       duty: dict[str, str], receiver: HttpReceiver,
                                       drain: Callable[[], None], status: int,
                                       headers: dict[str, str], expect_status: str,
                                       retry_in: tuple[int, int] | None) -> None:
    from datetime import datetime

    subscribe(client, admin, receiver.url)
    receiver.set_response(status, headers)
    open_incident(client, duty, affected_agencies=["MOH"])
    drain()
    receiver.wait_for(1)
    [n] = notifications(client, admin)
    assert n["status"] == expect_status
    assert n["last_status_code"] == status and n["attempt_count"] == 1
    if retry_in:
        # Measured from the attempt, not from now: a slow machine spends part of the wait
        # between the attempt and this line.
        attempted = datetime.fromisoformat(n["attempts"][-1]["at"])
        wait = (datetime.fromisoformat(n["next_attempt_at"]) - attempted).total_seconds()
        assert retry_in[0] <= wait <= retry_in[1]
        receiver.set_response(200)
        clock.advance(timedelta(seconds=retry_in[1] + 1))
        drain()
        [n] = notifications(client, admin)
        assert n["status"] == "delivered" and n["attempt_count"] == 2
        assert [a["outcome"] for a in n["attempts"]] == ["retry", "delivered"]
    else:
        clock.advance(timedelta(hours=1))
        drain()
        assert len(receiver.requests) == 1  # permanent: never retried
        assert notifications(client, admin, status="failed")[0]["id"] == n["id"]


@pytest.fixture
def settings_env() -> dict[str, Any]:
    return {"webhook_timeout_seconds": 0.5}


def test_down_hanging_then_dead_then_manual_retry(client: TestClient, admin: dict[str, str],
                                                  duty: dict[str, str], receiver: HttpReceiver,
                                                  drain: Callable[[], None]) -> None:
    sub = subscribe(client, admin, receiver.url)
    receiver.hang_seconds = 3
    inc = open_incident(client, duty, affected_agencies=["MOH"])
    drain()
    [n] = notifications(client, admin, incident=inc["id"])
    assert n["status"] == "pending" and "timeout" in n["last_error"]
    receiver.hang_seconds = 0
    receiver.stop()  # now the receiver is down altogether
    for _ in range(12):  # 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then every 2 h
        clock.advance(timedelta(hours=2, minutes=1))
        drain()
    [n] = notifications(client, admin, status="dead")
    assert n["attempt_count"] >= 7 and n["status"] == "dead"
    assert all(a["outcome"] != "delivered" for a in n["attempts"])
    per_incident = client.get(f"/api/v1/incidents/{inc['id']}/notifications", headers=duty)
    assert per_incident.json()["items"][0]["status"] == "dead"
    receiver.start()  # back on the same port
    assert_problem(client.post(f"/api/v1/notifications/{inc['id']}/retry", headers=admin), 404,
                   "/problems/not-found")
    resp = client.post(f"/api/v1/notifications/{n['id']}/retry", headers=admin)
    assert resp.status_code == 202
    assert_problem(client.post(f"/api/v1/notifications/{n['id']}/retry", headers=admin), 409,
                   "/problems/conflict")
    assert notifications(client, admin, status="pending")[0]["id"] == n["id"]
    drain()
    [n] = notifications(client, admin, incident=inc["id"])
    assert n["status"] == "delivered" and n["attempts"][-1]["outcome"] == "delivered"
    assert {r.headers["webhook-id"] for r in receiver.requests} == {n["id"]}
    assert sub["has_secret"] is False


class TestEmailThroughTheOutbox:
    """An escalation goes out by email to a real SMTP server, Vietnamese with an English line."""

    @pytest.fixture
    def smtp(self) -> Iterator[Any]:
        from tests.helpers.receivers import SmtpReceiver

        with SmtpReceiver(credentials={"crisis": "s3cret-pass"}) as server:
            yield server

    @pytest.fixture
    def settings_env(self, smtp: Any) -> dict[str, Any]:
        return {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_username": "crisis",
                "smtp_password": "s3cret-pass", "smtp_from": "canhbao@crisisflow.example"}

    def test_escalation_email(self, client: TestClient, admin: dict[str, str],
                              duty: dict[str, str], smtp: Any,
                              drain: Callable[[], None]) -> None:
        resp = client.post("/api/v1/subscriptions", headers=admin, json={
            "agency": "MIC", "notifier": "email", "target": "truc-ban@mic.example.vn",
            "events": ["incident.escalated"]})
        assert resp.status_code == 201, resp.text
        assert_problem(client.post("/api/v1/subscriptions", headers=admin, json={
            "agency": "MIC", "notifier": "email", "target": "not an address",
            "events": ["incident.escalated"]}), 422, "/problems/validation")
        inc = open_incident(client, duty, title="Tin giả về học phí", affected_agencies=["MOET"])
        fire(client, duty, inc["id"], "assess", **{**ASSESS, "severity": "critical"})
        drain()
        [mail] = smtp.wait_for(1)
        message = mail.message
        assert message["To"] == "truc-ban@mic.example.vn"
        assert inc["reference"] in message["Subject"]
        assert "Leo thang" in message["Subject"]
        body = message.get_content()
        assert "Tin giả về học phí" in body and "English" in body
        [n] = notifications(client, admin)
        assert message["Message-ID"] == f"<{n['id']}@crisisflow>"
        assert n["status"] == "delivered"
        assert smtp.auth_attempts == [("crisis", True)]
