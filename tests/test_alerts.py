"""Alert ingestion (#4) through the REST API, as monitoring tools and duty officers see it.

Every test runs on SQLite and on PostgreSQL (the `client` fixture is parametrized by
backend). What a monitor sends is checked through what a reader gets back: the incident
(`GET /incidents/{id}`), its alerts, its timeline, and the `event` table the outbox feeds on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import col, select

from app.alerts.models import Alert
from app.core.clock import clock
from app.core.config import Settings
from app.core.signing import headers as signature_headers
from app.incidents.models import Incident
from app.notifications.models import Event
from app.worker import Worker
from tests.factories import ASSESS, assert_problem, db_call, fire, live_server, portal
from tests.helpers.receivers import HttpReceiver

API = "/api/v1"
Headers = dict[str, str]
MakeKey = Callable[..., Headers]

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
CAP_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cap"
HEADLINE_VI = "Tin giả về chính sách bảo hiểm xã hội lan truyền nhanh"
SECRET = "whsec_" + base64.b64encode(b"crisisflow-monitor-signing-key-32").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone-else-entirely-0123456789").decode()


# -- fixtures and helpers ---------------------------------------------------------------




def alert(title: str = "Tin giả về bảo hiểm xã hội", **fields: Any) -> dict[str, Any]:
    return {"source": "social-listening", "title": title, **fields}


def post(client: TestClient, headers: Headers, body: Any, path: str = "/alerts",
         expect: int | None = 202) -> httpx.Response:
    resp: httpx.Response = client.post(f"{API}{path}", json=body, headers=headers)
    if expect is not None:
        assert resp.status_code == expect, resp.text
    return resp


def results(client: TestClient, headers: Headers, body: Any) -> list[dict[str, Any]]:
    resp = post(client, headers, body)
    assert resp.headers["content-type"].startswith("application/json")
    out: list[dict[str, Any]] = resp.json()["results"]
    assert all(set(r) >= {"alert_id", "incident_id", "deduplicated", "status"} for r in out)
    return out


def one(client: TestClient, headers: Headers, body: dict[str, Any]) -> dict[str, Any]:
    [result] = results(client, headers, body)
    return result


def get_incident(client: TestClient, headers: Headers, incident_id: str) -> dict[str, Any]:
    resp = client.get(f"{API}/incidents/{incident_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def incident_alerts(client: TestClient, headers: Headers, incident_id: str) -> list[Any]:
    resp = client.get(f"{API}/incidents/{incident_id}/alerts", headers=headers,
                      params={"limit": 200})
    assert resp.status_code == 200, resp.text
    items: list[Any] = resp.json()["items"]
    return items


def timeline_kinds(client: TestClient, headers: Headers, incident_id: str) -> list[str]:
    resp = client.get(f"{API}/incidents/{incident_id}/timeline", headers=headers)
    assert resp.status_code == 200, resp.text
    return [e["kind"] for e in resp.json()["items"]]


def list_incidents(client: TestClient, headers: Headers) -> list[dict[str, Any]]:
    resp = client.get(f"{API}/incidents", headers=headers, params={"limit": 200})
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def count(client: TestClient, model: Any, *where: Any) -> int:
    async def fetch(session: Any) -> int:
        stmt = sa.select(sa.func.count()).select_from(model)
        for clause in where:
            stmt = stmt.where(clause)
        return int((await session.execute(stmt)).scalar_one())

    result: int = db_call(client, fetch)
    return result


def detected_events(client: TestClient) -> list[str | None]:
    """incident_id of every `incident.detected` event, oldest first."""
    async def fetch(session: Any) -> list[str | None]:
        stmt = select(Event).where(Event.type == "incident.detected").order_by(col(Event.seq))
        return [e.incident_id for e in (await session.exec(stmt)).all()]

    result: list[str | None] = db_call(client, fetch)
    return result


def stored(client: TestClient) -> tuple[int, int]:
    """(incidents, alerts) in the database."""
    return count(client, Incident), count(client, Alert)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def alertmanager(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (SHARED_FIXTURES / f"alertmanager-0.25-{name}.json").read_text("utf-8"))
    return data


def cap(name: str) -> bytes:
    return (CAP_FIXTURES / f"{name}.xml").read_bytes()


def post_cap(client: TestClient, headers: Headers, document: bytes,
             media: str = "application/cap+xml") -> httpx.Response:
    resp: httpx.Response = client.post(f"{API}/alerts/cap", content=document,
                                       headers={**headers, "Content-Type": media})
    return resp


# -- 1. generic alerts: responses and mapping ---------------------------------------------

def test_single_alert_opens_a_detected_incident(client: TestClient, monitor: Headers,
                                                duty: Headers) -> None:
    resp = post(client, monitor, alert(labels={"topic": "bhxh"}))
    assert resp.status_code == 202
    [result] = resp.json()["results"]
    assert result["deduplicated"] is False and result["status"] == "firing"
    assert result["alert_id"] and result["incident_id"]
    inc = get_incident(client, duty, result["incident_id"])
    assert inc["state"] == "detected"
    assert inc["alert_count"] == 1
    assert inc["first_alert_at"] == inc["last_alert_at"] is not None
    assert inc["reference"].startswith("INC-")
    [stored_alert] = incident_alerts(client, duty, inc["id"])
    assert stored_alert["id"] == result["alert_id"]
    assert stored_alert["status"] == "firing" and stored_alert["format"] == "generic"
    assert stored(client) == (1, 1)


def test_array_results_come_back_in_input_order(client: TestClient, monitor: Headers,
                                                duty: Headers) -> None:
    titles = [f"Cảnh báo số {i}" for i in range(5)]
    out = results(client, monitor, [alert(t, labels={"n": str(i)}) for i, t in enumerate(titles)])
    assert len(out) == 5
    assert len({r["incident_id"] for r in out}) == 5
    assert len({r["alert_id"] for r in out}) == 5
    for title, result in zip(titles, out, strict=True):
        assert result["deduplicated"] is False and result["status"] == "firing"
        assert get_incident(client, duty, result["incident_id"])["title"] == title


def test_mapping_onto_the_incident(client: TestClient, monitor: Headers, duty: Headers) -> None:
    body = alert(
        "Tin giả: “Bộ Y tế thu hồi toàn bộ vắc-xin”",
        description="1.200 lượt chia sẻ trong 30 phút; tỷ lệ tiêu cực 78%.",
        severity="Major", category="fake_news", url="https://monitor.example.vn/post/42",
        labels={"agency": "MOH", "agencies": "MIC, VSS ,MIC,,MOLISA", "platform": "facebook"},
        observed_at="2026-11-26T10:00:00+07:00", metrics={"shares": 1200, "negative": 0.78},
    )
    result = one(client, monitor, body)
    inc = get_incident(client, duty, result["incident_id"])
    assert inc["title"] == body["title"]  # Vietnamese round-trips byte-exact
    assert inc["description"] == body["description"]
    assert inc["severity"] == "high"
    assert inc["category"] == "fake_news"
    assert inc["lead_agency"] == "MOH"
    assert inc["affected_agencies"] == ["MIC", "VSS", "MOLISA"]
    assert inc["links"] == ["https://monitor.example.vn/post/42"]
    assert inc["version"] == 1
    [a] = incident_alerts(client, duty, inc["id"])
    assert a["labels"] == body["labels"]
    assert a["severity"] == "high" and a["category"] == "fake_news"
    assert when(a["observed_at"]) == datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    # An agency named in labels.agency is the lead, never also "affected".
    other = one(client, monitor, alert("Khác", labels={"agency": "MIC", "agencies": "MIC,MOH"}))
    assert get_incident(client, duty, other["incident_id"])["affected_agencies"] == ["MOH"]


SEVERITY_CASES = [
    ("critical", "critical"), ("PAGE", "critical"), ("Emergency", "critical"),
    ("extreme", "critical"), ("high", "high"), ("Error", "high"), ("major", "high"),
    ("SEVERE", "high"), ("medium", "medium"), ("warning", "medium"), ("Minor", "medium"),
    ("moderate", "medium"), ("low", "low"), ("info", "low"), ("none", "low"),
    ("unknown", "low"), ("catastrophic", "low"),
]


def test_severity_words_and_the_labels_fallback(client: TestClient, monitor: Headers,
                                                duty: Headers) -> None:
    batch = [alert(f"sev {i}", severity=word) for i, (word, _) in enumerate(SEVERITY_CASES)]
    expected = [want for _, want in SEVERITY_CASES]
    # labels.severity is used only when `severity` is absent (or empty).
    batch += [alert("label sev", labels={"severity": "Page"}),
              alert("both", severity="info", labels={"severity": "critical"}),
              alert("empty", severity="", labels={"severity": "warning"}),
              alert("neither", labels={"x": "y"})]
    expected += ["critical", "low", "medium", "low"]
    out = results(client, monitor, batch)
    got = [get_incident(client, duty, r["incident_id"])["severity"] for r in out]
    assert got == expected


def test_category_words_and_the_labels_fallback(client: TestClient, monitor: Headers,
                                                duty: Headers) -> None:
    cases = [
        (alert("a", category="fake_news"), "fake_news"),
        (alert("b", category="Negative_Sentiment"), "negative_sentiment"),
        (alert("c", category="policy_misunderstanding"), "policy_misunderstanding"),
        (alert("d", labels={"category": "crisis"}), "crisis"),
        (alert("e", category="rumour"), "other"),
        (alert("f", labels={"category": "gossip"}), "other"),
        (alert("g"), "other"),
        (alert("h", category="crisis", labels={"category": "fake_news"}), "crisis"),
    ]
    out = results(client, monitor, [body for body, _ in cases])
    got = [get_incident(client, duty, r["incident_id"])["category"] for r in out]
    assert got == [want for _, want in cases]


def test_unknown_agency_codes_are_kept_in_labels_and_ignored_for_routing(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    labels = {"agency": "BO-KHONG-CO", "agencies": "MOH,XYZ, MIC", "topic": "vac-xin"}
    result = one(client, monitor, alert(labels=labels))  # accepted, not a 422
    inc = get_incident(client, duty, result["incident_id"])
    assert inc["lead_agency"] is None
    assert inc["affected_agencies"] == ["MOH", "MIC"]
    [a] = incident_alerts(client, duty, inc["id"])
    assert a["labels"] == labels
    # Routing ignores them: the incident is found under the known agencies only.
    moh_list = client.get(f"{API}/incidents", headers=duty, params={"agency": "MOH"}).json()
    assert [i["id"] for i in moh_list["items"]] == [inc["id"]]


def test_unknown_agency_is_invisible_to_scoped_viewers(client: TestClient, monitor: Headers,
                                                       make_key: MakeKey) -> None:
    result = one(client, monitor, alert(labels={"agency": "XYZ", "agencies": "MOH"}))
    moh_viewer = make_key("viewer", agency="MOH")
    mic_viewer = make_key("viewer", agency="MIC")
    assert get_incident(client, moh_viewer, result["incident_id"])["affected_agencies"] == ["MOH"]
    assert_problem(client.get(f"{API}/incidents/{result['incident_id']}", headers=mic_viewer),
                   404, "/problems/not-found")


# -- 1. deduplication and grouping --------------------------------------------------------

def test_same_fingerprint_deduplicates_onto_the_open_incident(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    body = alert(labels={"topic": "bhxh", "platform": "facebook"}, severity="medium")
    first = one(client, monitor, body)
    before = get_incident(client, duty, first["incident_id"])
    clock.advance(timedelta(minutes=3))
    # Same source and labels, different title: the computed fingerprint is the same.
    second = one(client, monitor, {**body, "title": "Tin giả (cập nhật)"})
    assert second["incident_id"] == first["incident_id"]
    assert second["deduplicated"] is True and second["status"] == "firing"
    assert second["alert_id"] != first["alert_id"]
    after = get_incident(client, duty, first["incident_id"])
    assert after["alert_count"] == 2
    assert when(after["last_alert_at"]) - when(before["last_alert_at"]) >= timedelta(minutes=3)
    assert after["first_alert_at"] == before["first_alert_at"]
    assert after["version"] == before["version"]
    assert after["title"] == before["title"]
    flags = sorted(a["deduplicated"] for a in incident_alerts(client, duty, after["id"]))
    assert flags == [False, True]
    assert stored(client) == (1, 2)


def test_explicit_fingerprint_wins_over_labels(client: TestClient, monitor: Headers) -> None:
    a = one(client, monitor, alert(fingerprint="fp-1", labels={"x": "1"}))
    b = one(client, monitor, alert(fingerprint="fp-1", labels={"x": "2"}))
    c = one(client, monitor, alert(fingerprint="fp-2", labels={"x": "1"}))
    assert b["incident_id"] == a["incident_id"] and b["deduplicated"] is True
    assert c["incident_id"] != a["incident_id"] and c["deduplicated"] is False


AWKWARD_KEYS = ['say "hi"', "back\\slash", "{braced}", "a,b", " spaced ", "NULL", "", "ừ ✓"]


def test_any_characters_in_fingerprints_and_grouping_labels_deduplicate(
        client: TestClient, monitor: Headers) -> None:
    """Keys are looked up as one list per group (an array on PostgreSQL): quotes,
    backslashes, braces, commas and the word NULL are plain characters of a key."""
    def batch(title: str) -> list[dict[str, Any]]:
        return [alert(title, fingerprint=f"fp-{key}-{title}" if title == "b" else f"fp-{key}",
                      labels={"topic": key or "-"}) for key in AWKWARD_KEYS]

    first = client.post(f"{API}/alerts", json=batch("a"), headers=monitor).json()["results"]
    again = client.post(f"{API}/alerts", json=batch("a"), headers=monitor).json()["results"]
    grouped = client.post(f"{API}/alerts", json=batch("b"), headers=monitor).json()["results"]
    assert len({r["incident_id"] for r in first}) == len(AWKWARD_KEYS)
    assert [r["incident_id"] for r in again] == [r["incident_id"] for r in first]
    assert all(r["deduplicated"] for r in again)
    assert [r["incident_id"] for r in grouped] == [r["incident_id"] for r in first]
    assert not any(r["deduplicated"] for r in grouped)


def test_label_order_does_not_change_the_fingerprint(client: TestClient,
                                                     monitor: Headers) -> None:
    a = one(client, monitor, alert(labels={"a": "1", "b": "2", "c": "3"}))
    raw = b'{"source":"social-listening","title":"x","labels":{"c":"3","a":"1","b":"2"}}'
    resp = client.post(f"{API}/alerts", content=raw,
                       headers={**monitor, "Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    [b] = resp.json()["results"]
    assert b["incident_id"] == a["incident_id"] and b["deduplicated"] is True


def test_same_topic_groups_onto_one_incident(client: TestClient, monitor: Headers,
                                             duty: Headers) -> None:
    a = one(client, monitor, alert("Facebook", labels={"topic": "bhxh", "platform": "facebook"}))
    b = one(client, monitor, alert("TikTok", labels={"topic": "bhxh", "platform": "tiktok"}))
    assert b["incident_id"] == a["incident_id"]
    assert b["deduplicated"] is False and b["alert_id"] != a["alert_id"]
    c = one(client, monitor, alert("Khác", labels={"topic": "xang-dau", "platform": "tiktok"}))
    assert c["incident_id"] != a["incident_id"]
    inc = get_incident(client, duty, a["incident_id"])
    assert inc["alert_count"] == 2 and inc["title"] == "Facebook"
    assert stored(client) == (2, 3)


def test_alerts_without_the_topic_label_are_not_grouped(client: TestClient,
                                                        monitor: Headers) -> None:
    a = one(client, monitor, alert(labels={"platform": "facebook"}))
    b = one(client, monitor, alert(labels={"platform": "tiktok"}))
    c = one(client, monitor, alert(labels={"platform": "zalo", "topic": ""}))  # empty = missing
    assert len({a["incident_id"], b["incident_id"], c["incident_id"]}) == 3
    assert not any(r["deduplicated"] for r in (a, b, c))
    assert stored(client) == (3, 3)


@pytest.mark.parametrize("settings_env", [{"alert_group_by": "topic, platform"}])
def test_group_by_setting_changes_the_grouping_labels(client: TestClient,
                                                      monitor: Headers) -> None:
    fb = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "facebook", "n": "1"}))
    fb2 = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "facebook", "n": "2"}))
    tt = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "tiktok", "n": "3"}))
    no_platform = one(client, monitor, alert(labels={"topic": "bhxh", "n": "4"}))
    no_platform2 = one(client, monitor, alert(labels={"topic": "bhxh", "n": "5"}))
    assert fb2["incident_id"] == fb["incident_id"] and fb2["deduplicated"] is False
    assert tt["incident_id"] != fb["incident_id"]
    # Missing one of the grouping labels: not grouped at all, not even with each other.
    assert len({no_platform["incident_id"], no_platform2["incident_id"], fb["incident_id"],
                tt["incident_id"]}) == 4
    assert stored(client) == (4, 5)


def test_dedup_and_grouping_apply_within_one_batch(client: TestClient, monitor: Headers,
                                                   duty: Headers) -> None:
    a = alert("A", labels={"topic": "bhxh", "platform": "facebook"})
    b = alert("B", labels={"topic": "bhxh", "platform": "tiktok"})
    c = alert("C", labels={"platform": "zalo"})
    out = results(client, monitor, [a, a, b, c, b, c])
    first = out[0]["incident_id"]
    assert [r["incident_id"] == first for r in out] == [True, True, True, False, True, False]
    assert [r["deduplicated"] for r in out] == [False, True, False, False, True, True]
    assert out[5]["incident_id"] == out[3]["incident_id"]
    assert len({r["alert_id"] for r in out}) == 6
    assert get_incident(client, duty, first)["alert_count"] == 4
    assert get_incident(client, duty, out[3]["incident_id"])["alert_count"] == 2
    assert stored(client) == (2, 6)
    assert len(detected_events(client)) == 2


def test_a_closed_incident_is_never_reused(client: TestClient, monitor: Headers,
                                           duty: Headers) -> None:
    body = alert(labels={"topic": "bhxh", "platform": "facebook"})
    first = one(client, monitor, body)
    fire(client, duty, first["incident_id"], "close", resolution="dismissed",
         summary="Đã kiểm chứng, không phải tin giả")
    again = one(client, monitor, body)
    assert again["incident_id"] != first["incident_id"]
    assert again["deduplicated"] is False
    # Grouping does not lead to the closed incident either.
    grouped = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "tiktok"}))
    assert grouped["incident_id"] == again["incident_id"]
    old = get_incident(client, duty, first["incident_id"])
    assert old["state"] == "closed" and old["alert_count"] == 1
    new = get_incident(client, duty, again["incident_id"])
    assert new["state"] == "detected" and new["alert_count"] == 2
    # And the next repeat now follows the new incident.
    third = one(client, monitor, body)
    assert third["incident_id"] == again["incident_id"] and third["deduplicated"] is True


def test_resolved_alert_marks_the_alert_and_never_closes(client: TestClient, monitor: Headers,
                                                         duty: Headers) -> None:
    body = alert(labels={"topic": "bhxh", "platform": "facebook"})
    first = one(client, monitor, body)
    one(client, monitor, body)  # a repeat: two firing alerts of this fingerprint
    other = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "tiktok"}))
    resolved = one(client, monitor, {**body, "status": "resolved"})
    assert resolved["status"] == "resolved"
    assert resolved["incident_id"] == first["incident_id"]
    inc = get_incident(client, duty, first["incident_id"])
    assert inc["state"] == "detected"
    alerts = incident_alerts(client, duty, inc["id"])
    by_status = {a["id"]: a["status"] for a in alerts}
    assert by_status[first["alert_id"]] == "resolved"
    assert by_status[other["alert_id"]] == "firing"  # another fingerprint stays firing
    for a in alerts:
        assert (a["resolved_at"] is not None) == (a["status"] == "resolved")
    assert [a["fingerprint"] for a in alerts if a["status"] == "resolved"] == \
        [alerts[-1]["fingerprint"]] * 2
    assert timeline_kinds(client, duty, inc["id"]).count("alert_resolved") == 1
    assert len(detected_events(client)) == 1


def test_resolved_alert_for_nothing_open_opens_nothing(client: TestClient, monitor: Headers,
                                                       duty: Headers) -> None:
    result = one(client, monitor, alert(labels={"never": "fired"}, status="resolved"))
    assert result["status"] == "resolved" and result["incident_id"] is None
    assert count(client, Incident) == 0
    assert list_incidents(client, duty) == []
    assert detected_events(client) == []


def test_firing_after_resolved_deduplicates_again(client: TestClient, monitor: Headers,
                                                  duty: Headers) -> None:
    body = alert(labels={"k": "v"})
    first = one(client, monitor, body)
    one(client, monitor, {**body, "status": "resolved"})
    again = one(client, monitor, body)
    assert again["incident_id"] == first["incident_id"] and again["deduplicated"] is True
    statuses = sorted(a["status"] for a in incident_alerts(client, duty, first["incident_id"]))
    assert statuses == ["firing", "resolved"]


def test_higher_severity_raises_a_detected_incident(client: TestClient, monitor: Headers,
                                                    duty: Headers) -> None:
    body = alert(labels={"topic": "bhxh"}, severity="low")
    first = one(client, monitor, body)
    before = get_incident(client, duty, first["incident_id"])
    assert before["severity"] == "low"
    # A lower or equal severity changes nothing.
    one(client, monitor, {**body, "severity": "info"})
    assert get_incident(client, duty, first["incident_id"])["severity"] == "low"
    raised = one(client, monitor, {**body, "severity": "critical"})
    assert raised["deduplicated"] is True
    after = get_incident(client, duty, first["incident_id"])
    assert after["severity"] == "critical"
    # The assessment deadline follows the new severity (critical is due sooner).
    assert when(after["deadline_at"]) < when(before["deadline_at"])
    assert after["version"] == before["version"]
    assert after["state"] == "detected"
    kinds = timeline_kinds(client, duty, after["id"])
    assert kinds.count("severity_raised") == 1
    entry = client.get(f"{API}/incidents/{after['id']}/timeline", headers=duty).json()["items"]
    [raised_entry] = [e for e in entry if e["kind"] == "severity_raised"]
    assert raised_entry["data"]["from"] == "low" and raised_entry["data"]["to"] == "critical"
    # Never lowered again by a later, milder alert.
    one(client, monitor, {**body, "severity": "medium"})
    assert get_incident(client, duty, after["id"])["severity"] == "critical"


def test_incidents_opened_by_alerts_and_by_officers_share_one_gapless_sequence(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    """The year's first incidents come from alerts (no counter yet), then officers and alert
    groups take turns; a group that opens nothing takes no number."""
    def opened(topics: list[str]) -> list[str]:
        results = post(client, monitor, [alert(labels={"topic": t}) for t in topics]).json()
        return [get_incident(client, duty, r["incident_id"])["reference"]
                for r in results["results"]]

    def by_officer() -> str:
        created = client.post(f"{API}/incidents", headers=duty, json={"title": "Sự cố"})
        assert created.status_code == 201, created.text
        return str(created.json()["reference"])

    first = opened(["a", "b"])
    year = first[0].split("-")[1]
    refs = [*first, by_officer(), *opened(["c", "a", "d"]), *opened(["c"]), by_officer()]
    assert refs == [f"INC-{year}-{n:06d}" for n in (1, 2, 3, 4, 1, 5, 4, 6)]


def test_a_raise_follows_the_fingerprint_not_the_group_it_also_names(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    a = one(client, monitor, alert(fingerprint="fp-a", labels={"topic": "x"}, severity="low"))
    b = one(client, monitor, alert(fingerprint="fp-b", labels={"topic": "y"}, severity="low"))
    before = get_incident(client, duty, b["incident_id"])
    raised = one(client, monitor, alert(fingerprint="fp-a", labels={"topic": "y"},
                                        severity="critical"))
    assert raised["incident_id"] == a["incident_id"]
    assert get_incident(client, duty, a["incident_id"])["severity"] == "critical"
    after = get_incident(client, duty, b["incident_id"])
    assert (after["severity"], after["deadline_at"], after["alert_count"]) == (
        "low", before["deadline_at"], 1)
    assert "severity_raised" not in timeline_kinds(client, duty, b["incident_id"])


def test_raises_and_resolutions_within_one_batch_keep_alert_order(
        client: TestClient, monitor: Headers, duty: Headers, db_url: str) -> None:
    """One array touches a stored incident (raise, resolve, raise) and opens another that a
    later alert of the same array raises: each timeline follows the order of the alerts,
    the clocks follow the final severity, and every hash chain still verifies."""
    from app.core.db import make_sync_engine
    from app.incidents.models import TimelineEntry
    from app.incidents.timeline import first_broken_link

    stored = one(client, monitor, alert(labels={"topic": "bhxh"}, fingerprint="a-1",
                                        severity="low"))
    before = get_incident(client, duty, stored["incident_id"])
    out = results(client, monitor, [
        alert(labels={"topic": "bhxh"}, fingerprint="a-1", severity="high"),
        alert(labels={"topic": "bhxh"}, fingerprint="a-1", status="resolved"),
        alert(labels={"topic": "bhxh"}, fingerprint="a-2", severity="critical"),
        alert(labels={"topic": "xang-dau"}, fingerprint="b-1", severity="low"),
        alert(labels={"topic": "xang-dau"}, fingerprint="b-2", severity="critical"),
    ])
    a = get_incident(client, duty, stored["incident_id"])
    assert a["severity"] == "critical" and a["alert_count"] == 3
    assert when(a["deadline_at"]) < when(before["deadline_at"])
    assert timeline_kinds(client, duty, a["id"]) == [
        "created", "severity_raised", "alert_resolved", "severity_raised"]
    b = get_incident(client, duty, out[3]["incident_id"])
    assert out[4]["incident_id"] == b["id"] and b["id"] != a["id"]
    assert b["severity"] == "critical" and b["alert_count"] == 2
    assert timeline_kinds(client, duty, b["id"]) == ["created", "severity_raised"]
    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            for incident_id in (a["id"], b["id"]):
                rows = conn.execute(sa.select(TimelineEntry).where(
                    TimelineEntry.incident_id == incident_id).order_by(col(TimelineEntry.seq)))
                entries = [TimelineEntry.model_validate(r._mapping) for r in rows]
                assert first_broken_link(entries) is None
    finally:
        engine.dispose()


def test_one_array_resolving_several_alerts_of_a_stored_incident_resolves_each_once(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    """Resolutions of one array share one read of the incident's firing alerts: each still
    takes exactly the alerts it names, in the array's order, stored or from the array."""
    topic = {"topic": "bhxh"}
    a1 = one(client, monitor, alert(labels=topic, fingerprint="a-1"))
    a1_again = one(client, monitor, alert(labels=topic, fingerprint="a-1"))
    a2 = one(client, monitor, alert(labels=topic, fingerprint="a-2"))
    a3 = one(client, monitor, alert(labels=topic, fingerprint="a-3"))
    incident_id = a1["incident_id"]
    assert {a1_again["incident_id"], a2["incident_id"], a3["incident_id"]} == {incident_id}
    out = results(client, monitor, [
        alert(labels=topic, fingerprint="a-1", status="resolved"),
        alert(labels=topic, fingerprint="a-2", status="resolved"),
        alert(labels=topic, fingerprint="a-2"),  # fires again within the array
        alert(labels=topic, fingerprint="a-2", status="resolved"),
        alert(labels=topic, fingerprint="a-1", status="resolved"),  # nothing left firing
    ])
    assert [r["status"] for r in out] == ["resolved", "resolved", "firing", "resolved",
                                          "resolved"]
    assert {r["incident_id"] for r in out} == {incident_id}
    assert out[0]["alert_id"] in {a1["alert_id"], a1_again["alert_id"]}
    assert out[1]["alert_id"] == a2["alert_id"]
    assert out[3]["alert_id"] == out[2]["alert_id"]  # the one that fired again
    stored = {a["id"]: a for a in incident_alerts(client, duty, incident_id)}
    for resolved in (a1, a1_again, a2, out[2]):
        assert stored[resolved["alert_id"]]["status"] == "resolved"
        assert stored[resolved["alert_id"]]["resolved_at"] is not None
    assert stored[a3["alert_id"]]["status"] == "firing"
    # The last resolution found nothing firing: it is kept, resolved, for audit.
    assert stored[out[4]["alert_id"]]["status"] == "resolved"
    assert len(stored) == 4 + 2
    resp = client.get(f"{API}/incidents/{incident_id}/timeline", headers=duty)
    resolved_counts = [e["data"]["alerts"] for e in resp.json()["items"]
                       if e["kind"] == "alert_resolved"]
    assert resolved_counts == [2, 1, 1, 0]


def test_higher_severity_leaves_an_assessed_incident_alone(client: TestClient,
                                                           monitor: Headers,
                                                           duty: Headers) -> None:
    body = alert(labels={"topic": "bhxh"}, severity="low")
    first = one(client, monitor, body)
    assessed = fire(client, duty, first["incident_id"], "assess", **ASSESS).json()
    assert assessed["state"] == "assessed" and assessed["severity"] == "medium"
    again = one(client, monitor, {**body, "severity": "critical"})
    assert again["incident_id"] == first["incident_id"] and again["deduplicated"] is True
    after = get_incident(client, duty, first["incident_id"])
    assert after["severity"] == "medium"
    assert after["version"] == assessed["version"]
    assert after["alert_count"] == 2
    assert "severity_raised" not in timeline_kinds(client, duty, after["id"])


def test_incident_detected_is_emitted_only_when_an_alert_opens_an_incident(
        client: TestClient, monitor: Headers) -> None:
    a = one(client, monitor, alert(labels={"topic": "bhxh", "platform": "facebook"}))
    assert detected_events(client) == [a["incident_id"]]
    one(client, monitor, alert(labels={"topic": "bhxh", "platform": "facebook"}))  # dedup
    one(client, monitor, alert(labels={"topic": "bhxh", "platform": "tiktok"}))  # grouped
    one(client, monitor, alert(labels={"topic": "bhxh", "platform": "facebook"},
                               status="resolved"))
    assert detected_events(client) == [a["incident_id"]]
    b = one(client, monitor, alert(labels={"platform": "zalo"}))
    assert detected_events(client) == [a["incident_id"], b["incident_id"]]


def test_incident_detected_reaches_a_subscribed_webhook_once(
        client: TestClient, app: Any, monitor: Headers, admin: Headers) -> None:
    worker = Worker(app.state.db, app.state.settings, registry=app.state.notifiers, name="test")
    with HttpReceiver() as rx:
        resp = client.post(f"{API}/subscriptions", headers=admin, json={
            "agency": "MOH", "notifier": "webhook", "target": rx.url,
            "events": ["incident.detected"]})
        assert resp.status_code == 201, resp.text
        body = alert("Tin giả về vắc-xin", labels={"agency": "MOH", "topic": "vac-xin"})
        first = one(client, monitor, body)
        portal(client).call(worker.drain)
        [req] = rx.wait_for(1)
        event = req.json()
        assert event["type"] == "incident.detected"
        assert event["data"]["incident"]["id"] == first["incident_id"]
        assert event["data"]["incident"]["title"] == "Tin giả về vắc-xin"
        # Repeats and grouped alerts notify nobody again.
        one(client, monitor, body)
        one(client, monitor, alert(labels={"agency": "MOH", "topic": "vac-xin", "p": "x"}))
        portal(client).call(worker.drain)
        time.sleep(0.3)
        assert len(rx.requests) == 1


# -- 2. validation, limits and roles ------------------------------------------------------

def test_one_invalid_alert_rejects_the_whole_batch(client: TestClient, monitor: Headers,
                                                   duty: Headers) -> None:
    existing = one(client, monitor, alert(labels={"topic": "bhxh"}))
    batch = [alert(labels={"topic": "bhxh"}), alert("mới", labels={"n": "1"}),
             {"source": "social-listening"}, alert("cuối", labels={"n": "2"})]
    problem = assert_problem(post(client, monitor, batch, expect=422), 422,
                             "/problems/validation")
    assert problem["errors"][0]["loc"] == [2, "title"]
    assert "2" in problem["detail"] and "title" in problem["detail"]
    assert stored(client) == (1, 1)
    assert get_incident(client, duty, existing["incident_id"])["alert_count"] == 1


@pytest.mark.parametrize(("bad", "field"), [
    ({"title": "x"}, "source"),
    ({"source": "s", "title": "   "}, "title"),
    ({"source": "s", "title": "x", "status": "pending"}, "status"),
    ({"source": "s", "title": "x", "url": "javascript:alert(1)"}, "url"),
    ({"source": "s", "title": "x", "observed_at": "yesterday"}, "observed_at"),
    ({"source": "s", "title": "x", "labels": {"topic": 5}}, "labels"),
    ({"source": "s", "title": "x", "metrics": {"shares": "12"}}, "metrics"),
])
def test_invalid_fields_name_index_and_field(client: TestClient, monitor: Headers,
                                             bad: dict[str, Any], field: str) -> None:
    problem = assert_problem(post(client, monitor, [alert(), bad], expect=422), 422,
                             "/problems/validation")
    assert problem["errors"][0]["loc"][:2] == [1, field]
    single = assert_problem(post(client, monitor, bad, expect=422), 422, "/problems/validation")
    assert field in single["errors"][0]["loc"]
    assert stored(client) == (0, 0)


def test_batch_size_limits(client: TestClient, monitor: Headers) -> None:
    too_many = [alert(labels={"n": str(i)}) for i in range(1001)]
    problem = assert_problem(post(client, monitor, too_many, expect=422), 422,
                             "/problems/validation")
    assert "1000" in problem["detail"]
    assert_problem(post(client, monitor, [], expect=422), 422, "/problems/validation")
    assert_problem(post(client, monitor, "an alert", expect=422), 422, "/problems/validation")
    assert stored(client) == (0, 0)


def test_body_over_one_mebibyte_is_413(client: TestClient, monitor: Headers) -> None:
    big = [alert(description="x" * 15000, labels={"n": str(i)}) for i in range(80)]
    raw = orjson.dumps(big)
    assert len(raw) > 1024 * 1024
    resp = client.post(f"{API}/alerts", content=raw,
                       headers={**monitor, "Content-Type": "application/json"})
    assert_problem(resp, 413, "/problems/payload-too-large")
    assert stored(client) == (0, 0)


def test_wrong_media_type_is_415(client: TestClient, monitor: Headers) -> None:
    raw = orjson.dumps(alert())
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        resp = client.post(f"{API}/alerts", content=raw, headers={**monitor, "Content-Type": media})
        assert_problem(resp, 415, "/problems/unsupported-media-type")
    resp = client.post(f"{API}/alerts", content=raw, headers=monitor)  # no Content-Type
    assert_problem(resp, 415, "/problems/unsupported-media-type")
    ok = client.post(f"{API}/alerts", content=raw,
                     headers={**monitor, "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 202, ok.text
    assert stored(client) == (1, 1)


@pytest.mark.parametrize("raw", [b'{"source": "s", "title": ', b"", b"\xff\xfe{}", b"[1,]"])
def test_malformed_json_is_422(client: TestClient, monitor: Headers, raw: bytes) -> None:
    resp = client.post(f"{API}/alerts", content=raw,
                       headers={**monitor, "Content-Type": "application/json"})
    assert_problem(resp, 422, "/problems/validation")


@pytest.mark.parametrize("role", ["viewer", "duty_officer", "leader"])
def test_other_roles_may_not_ingest(client: TestClient, make_key: MakeKey, role: str) -> None:
    headers = make_key(role)
    for path, body in (("/alerts", alert()), ("/alerts/alertmanager", alertmanager("firing"))):
        assert_problem(post(client, headers, body, path, expect=403), 403, "/problems/forbidden")
    assert_problem(post_cap(client, headers, cap("valid-vi")), 403, "/problems/forbidden")
    assert stored(client) == (0, 0)


def test_admin_may_ingest_and_anonymous_may_not(client: TestClient, admin: Headers) -> None:
    assert one(client, admin, alert())["status"] == "firing"
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic eDp5"}):
        resp = post(client, headers, alert(), expect=401)
        assert_problem(resp, 401, "/problems/unauthenticated")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert stored(client) == (1, 1)


def test_monitor_keys_do_nothing_but_ingest(client: TestClient, monitor: Headers) -> None:
    result = one(client, monitor, alert())
    for path in ("/incidents", f"/incidents/{result['incident_id']}",
                 f"/incidents/{result['incident_id']}/alerts"):
        assert_problem(client.get(f"{API}{path}", headers=monitor), 403, "/problems/forbidden")
    resp = client.post(f"{API}/incidents", json={"title": "x"}, headers=monitor)
    assert_problem(resp, 403, "/problems/forbidden")


# -- bad input is never a 500 ------------------------------------------------------------

def test_long_grouping_labels_are_stored_and_still_group(client: TestClient, monitor: Headers,
                                                         duty: Headers) -> None:
    long_topic = "chu-de-" + "rất-dài-" * 60  # the group key is far over 200 characters
    a = one(client, monitor, alert("A", labels={"topic": long_topic, "n": "1"}))
    b = one(client, monitor, alert("B", labels={"topic": long_topic, "n": "2"}))
    c = one(client, monitor, alert("C", labels={"topic": long_topic + "khác", "n": "3"}))
    assert b["incident_id"] == a["incident_id"] and b["deduplicated"] is False
    assert c["incident_id"] != a["incident_id"]
    [stored_alert] = [x for x in incident_alerts(client, duty, a["incident_id"])
                      if x["id"] == a["alert_id"]]
    assert stored_alert["labels"]["topic"] == long_topic
    payload = alertmanager("firing")
    payload["alerts"][0]["labels"]["topic"] = long_topic
    [am] = post(client, monitor, payload, "/alerts/alertmanager").json()["results"]
    assert am["incident_id"] == a["incident_id"]


@pytest.mark.parametrize(("body", "loc"), [
    ([alert(), alert("tin\u0000giả")], [1, "title"]),
    (alert(labels={"topic": "bh\u0000xh"}), ["labels", "topic"]),
    (alert(labels={"to\u0000pic": "bhxh"}), ["labels", "topic"]),
    (alert(description="\u0000"), ["description"]),
    (alert(source="s\u0000"), ["source"]),
])
def test_nul_characters_are_422(client: TestClient, monitor: Headers, body: Any,
                                loc: list[Any]) -> None:
    problem = assert_problem(post(client, monitor, body, expect=422), 422,
                             "/problems/validation")
    assert problem["errors"][0]["loc"] == loc
    payload = alertmanager("firing")
    payload["alerts"][0]["labels"]["topic"] = "bh\u0000xh"
    problem = assert_problem(post(client, monitor, payload, "/alerts/alertmanager", expect=422),
                             422, "/problems/validation")
    assert problem["errors"][0]["loc"] == ["alerts", 0, "labels", "topic"]
    assert stored(client) == (0, 0)


BAD_LINKS = ["http://monitor.example.vn:99999/x", "http://[::1/x", "http://a%zz.vn/",
             "https://xn--/", "http://10.0.0.999/"]


@pytest.mark.parametrize("url", BAD_LINKS)
def test_links_an_incident_cannot_hold(client: TestClient, monitor: Headers, duty: Headers,
                                       url: str) -> None:
    problem = assert_problem(post(client, monitor, alert(url=url), expect=422), 422,
                             "/problems/validation")
    assert problem["errors"][0]["loc"] == ["url"]
    # Alertmanager and CAP links are kept out of the incident (the raw payload keeps them).
    payload = alertmanager("firing")
    payload["alerts"][0]["generatorURL"] = url
    [am] = post(client, monitor, payload, "/alerts/alertmanager").json()["results"]
    assert get_incident(client, duty, am["incident_id"])["links"] == []
    doc = cap("valid-vi").replace(b"https://canhbao.example.gov.vn/tin/123", url.encode())
    doc = doc.replace(b"<value>chinh-sach-bao-hiem</value>", b"<value>khac</value>")
    resp = post_cap(client, monitor, doc)
    assert resp.status_code == 202, resp.text
    [c] = resp.json()["results"]
    assert c["incident_id"] != am["incident_id"]
    assert get_incident(client, duty, c["incident_id"])["links"] == []


def test_long_alertmanager_receiver_names(client: TestClient, monitor: Headers,
                                          duty: Headers) -> None:
    payload = {**alertmanager("firing"), "receiver": "nhom-truc-" * 40}
    [result] = post(client, monitor, payload, "/alerts/alertmanager").json()["results"]
    [a] = incident_alerts(client, duty, result["incident_id"])
    assert a["source"].startswith("alertmanager/nhom-truc-") and len(a["source"]) <= 200


def test_idempotency_key_replays_an_ingest(client: TestClient, monitor: Headers) -> None:
    headers = {**monitor, "Idempotency-Key": "canh-bao-42"}
    body = [alert(labels={"n": "1"}), alert(labels={"n": "2"})]
    first = client.post(f"{API}/alerts", json=body, headers=headers)
    again = client.post(f"{API}/alerts", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert stored(client) == (2, 2)
    other = client.post(f"{API}/alerts", json=body[:1], headers=headers)
    assert_problem(other, 422, "/problems/idempotency-mismatch")
    assert stored(client) == (2, 2)


def test_openapi_describes_the_alert_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    media = {
        f"{API}/alerts": {"application/json"},
        f"{API}/alerts/alertmanager": {"application/json"},
        f"{API}/alerts/cap": {"application/cap+xml", "application/xml"},
    }
    for path, wanted in media.items():
        post_op = paths[path]["post"]
        assert wanted <= set(post_op["requestBody"]["content"]), path
        assert "202" in post_op["responses"], path
    assert "get" in paths[f"{API}/incidents/{{incident_id}}/alerts"]


# -- 3. Alertmanager ----------------------------------------------------------------------

def test_alertmanager_firing_refired_and_resolved(client: TestClient, monitor: Headers,
                                                  duty: Headers) -> None:
    firing = alertmanager("firing")
    [first] = post(client, monitor, firing, "/alerts/alertmanager").json()["results"]
    assert first["deduplicated"] is False and first["status"] == "firing"
    inc = get_incident(client, duty, first["incident_id"])
    assert inc["title"] == HEADLINE_VI
    assert inc["description"] == "1.200 lượt chia sẻ trong 30 phút; tỷ lệ tiêu cực 78%"
    assert inc["severity"] == "critical"
    assert inc["category"] == "other"
    assert inc["lead_agency"] == "MIC"
    assert inc["links"] == ["http://monitor.example/graph?id=42"]
    [a] = incident_alerts(client, duty, inc["id"])
    assert a["fingerprint"] == "c851b1e549b18ec1" and a["format"] == "alertmanager"
    assert a["labels"]["alertname"] == "TinGiaLanTruyen"

    [again] = post(client, monitor, firing, "/alerts/alertmanager").json()["results"]
    assert again["incident_id"] == inc["id"] and again["deduplicated"] is True
    assert get_incident(client, duty, inc["id"])["alert_count"] == 2

    [resolved] = post(client, monitor, alertmanager("resolved"),
                      "/alerts/alertmanager").json()["results"]
    assert resolved["status"] == "resolved" and resolved["incident_id"] == inc["id"]
    after = get_incident(client, duty, inc["id"])
    assert after["state"] == "detected" and after["alert_count"] == 2
    assert {a["status"] for a in incident_alerts(client, duty, inc["id"])} == {"resolved"}
    assert "alert_resolved" in timeline_kinds(client, duty, inc["id"])
    assert stored(client) == (1, 2)


def test_alertmanager_falls_back_to_alertname_and_groups_by_topic(
        client: TestClient, monitor: Headers, duty: Headers) -> None:
    payload = alertmanager("firing")
    base = payload["alerts"][0]
    second = {**base, "fingerprint": "0123456789abcdef", "annotations": {},
              "labels": {**base["labels"], "platform": "tiktok", "severity": "warning"}}
    unrelated = {**second, "fingerprint": "fedcba9876543210",
                 "labels": {"alertname": "GiaXangTang", "severity": "warning"}}
    payload["alerts"] = [base, second, unrelated]
    out = post(client, monitor, payload, "/alerts/alertmanager").json()["results"]
    assert out[1]["incident_id"] == out[0]["incident_id"] and out[1]["deduplicated"] is False
    assert out[2]["incident_id"] != out[0]["incident_id"]
    inc = get_incident(client, duty, out[2]["incident_id"])
    assert inc["title"] == "GiaXangTang" and inc["severity"] == "medium"
    assert inc["lead_agency"] is None


def test_alertmanager_rejects_other_versions_and_media(client: TestClient,
                                                       monitor: Headers) -> None:
    payload = {**alertmanager("firing"), "version": "3"}
    problem = assert_problem(post(client, monitor, payload, "/alerts/alertmanager", expect=422),
                             422, "/problems/validation")
    assert problem["errors"][0]["loc"] == ["version"]
    broken = alertmanager("firing")
    del broken["alerts"][0]["fingerprint"]
    problem = assert_problem(post(client, monitor, broken, "/alerts/alertmanager", expect=422),
                             422, "/problems/validation")
    assert problem["errors"][0]["loc"] == ["alerts", 0, "fingerprint"]
    resp = client.post(f"{API}/alerts/alertmanager", content=orjson.dumps(alertmanager("firing")),
                       headers={**monitor, "Content-Type": "text/plain"})
    assert_problem(resp, 415, "/problems/unsupported-media-type")
    assert stored(client) == (0, 0)


# -- 4. CAP 1.2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("media", ["application/cap+xml", "application/xml",
                                   "application/cap+xml; charset=utf-8"])
def test_cap_alert_opens_an_incident(client: TestClient, monitor: Headers, duty: Headers,
                                     media: str) -> None:
    resp = post_cap(client, monitor, cap("valid-vi"), media)
    assert resp.status_code == 202, resp.text
    [result] = resp.json()["results"]
    assert result["status"] == "firing" and result["deduplicated"] is False
    inc = get_incident(client, duty, result["incident_id"])
    assert inc["title"] == HEADLINE_VI
    assert inc["description"].startswith("1.200 lượt chia sẻ trong 30 phút")
    assert inc["severity"] == "high"  # Severe
    assert inc["category"] == "fake_news"
    assert inc["lead_agency"] == "MIC"
    assert inc["affected_agencies"] == ["MOLISA", "VSS", "MOH"]
    assert inc["links"] == ["https://canhbao.example.gov.vn/tin/123"]
    [a] = incident_alerts(client, duty, inc["id"])
    assert a["fingerprint"] == "VN-MIC-2026-000123" and a["format"] == "cap"
    assert a["labels"]["topic"] == "chinh-sach-bao-hiem"


def test_cap_update_and_cancel_follow_references(client: TestClient, monitor: Headers,
                                                 duty: Headers) -> None:
    [first] = post_cap(client, monitor, cap("valid-vi")).json()["results"]
    resp = post_cap(client, monitor, cap("update"), "application/xml")
    assert resp.status_code == 202, resp.text
    [update] = resp.json()["results"]
    assert update["incident_id"] == first["incident_id"]
    assert update["status"] == "firing"
    inc = get_incident(client, duty, first["incident_id"])
    assert inc["alert_count"] == 2
    assert inc["severity"] == "critical"  # Extreme, while still detected
    assert inc["title"] == HEADLINE_VI

    resp = post_cap(client, monitor, cap("cancel"))
    assert resp.status_code == 202, resp.text
    [cancel] = resp.json()["results"]
    assert cancel["status"] == "resolved" and cancel["incident_id"] == first["incident_id"]
    inc = get_incident(client, duty, first["incident_id"])
    assert inc["state"] == "detected"
    alerts = {a["fingerprint"]: a for a in incident_alerts(client, duty, inc["id"])}
    assert alerts["VN-MIC-2026-000123"]["status"] == "resolved"
    assert alerts["VN-MIC-2026-000123"]["resolved_at"] is not None
    assert "alert_resolved" in timeline_kinds(client, duty, inc["id"])
    assert count(client, Incident) == 1
    assert detected_events(client) == [first["incident_id"]]


@pytest.mark.parametrize(("name", "secrets"), [
    ("billion-laughs", ["SECRET-LOL-PAYLOAD", "lol", "attacker@example.com", "<!ENTITY"]),
    ("external-entity", ["xxe", "/etc/passwd", "file://", "<!ENTITY", "DOCTYPE"]),
])
def test_cap_with_a_dtd_is_400_and_echoes_nothing(client: TestClient, monitor: Headers,
                                                  name: str, secrets: list[str]) -> None:
    resp = post_cap(client, monitor, cap(name))
    assert_problem(resp, 400, "/problems/validation")
    for secret in secrets:
        assert secret.lower() not in resp.text.lower()
    assert stored(client) == (0, 0)


def test_cap_missing_elements_and_bad_enumerations_are_422(client: TestClient,
                                                           monitor: Headers) -> None:
    problem = assert_problem(post_cap(client, monitor, cap("missing-identifier-urgency")), 422,
                             "/problems/validation")
    locs = [e["loc"] for e in problem["errors"]]
    assert ["alert", "identifier"] in locs
    assert ["alert", "info", 0, "urgency"] in locs
    text = " ".join(e["msg"] for e in problem["errors"]) + problem["detail"]
    assert "identifier" in text and "urgency" in text

    problem = assert_problem(post_cap(client, monitor, cap("bad-enumeration")), 422,
                             "/problems/validation")
    locs = [e["loc"] for e in problem["errors"]]
    assert ["alert", "status"] in locs and ["alert", "info", 0, "urgency"] in locs
    assert stored(client) == (0, 0)


def test_cap_wrong_media_type_is_415(client: TestClient, monitor: Headers) -> None:
    for media in ("application/json", "text/plain"):
        assert_problem(post_cap(client, monitor, cap("valid-vi"), media), 415,
                       "/problems/unsupported-media-type")
    assert stored(client) == (0, 0)


@pytest.mark.parametrize("status", ["Test", "Exercise"])
def test_cap_test_and_exercise_messages_open_nothing(client: TestClient, monitor: Headers,
                                                     duty: Headers, status: str) -> None:
    doc = cap("valid-vi").replace(b"<status>Actual</status>", f"<status>{status}</status>".encode())
    resp = post_cap(client, monitor, doc)
    assert resp.status_code == 202, resp.text
    [result] = resp.json()["results"]
    assert result["status"] == "ignored" and result["incident_id"] is None
    assert count(client, Incident) == 0
    assert list_incidents(client, duty) == []
    assert detected_events(client) == []


# -- 5. signed webhooks -------------------------------------------------------------------

def signed(secret: str, body: bytes, webhook_id: str = "msg_1",
           at: float | None = None) -> Headers:
    ts = int(time.time() if at is None else at)
    return {"Content-Type": "application/json", **signature_headers(secret, webhook_id, ts, body)}


@pytest.fixture
def signed_monitor(make_key: MakeKey) -> Headers:
    return make_key("monitor", signing_secret=SECRET, name="Giám sát có ký")


def post_raw(client: TestClient, auth: Headers, body: bytes, headers: Headers,
             path: str = "/alerts") -> httpx.Response:
    resp: httpx.Response = client.post(f"{API}{path}", content=body, headers={**auth, **headers})
    return resp


def test_valid_signature_is_accepted(client: TestClient, signed_monitor: Headers) -> None:
    body = orjson.dumps(alert())
    resp = post_raw(client, signed_monitor, body, signed(SECRET, body))
    assert resp.status_code == 202, resp.text
    assert stored(client) == (1, 1)


@pytest.mark.parametrize("case", ["wrong-secret", "missing-all", "missing-signature",
                                  "stale", "future", "body-changed", "bad-timestamp"])
def test_bad_signatures_are_401(client: TestClient, signed_monitor: Headers, case: str) -> None:
    body = orjson.dumps(alert())
    now = time.time()
    headers = {
        "wrong-secret": signed(OTHER_SECRET, body),
        "missing-all": {"Content-Type": "application/json"},
        "missing-signature": {k: v for k, v in signed(SECRET, body).items()
                              if k != "webhook-signature"},
        "stale": signed(SECRET, body, at=now - 360),
        "future": signed(SECRET, body, at=now + 360),
        "body-changed": signed(SECRET, orjson.dumps(alert("khác"))),
        "bad-timestamp": {**signed(SECRET, body), "webhook-timestamp": "yesterday"},
    }[case]
    resp = post_raw(client, signed_monitor, body, headers)
    assert_problem(resp, 401, "/problems/unauthenticated")
    assert stored(client) == (0, 0)


def test_timestamp_within_five_minutes_is_accepted(client: TestClient,
                                                   signed_monitor: Headers) -> None:
    body = orjson.dumps(alert())
    for i, skew in enumerate((-240, 240)):
        resp = post_raw(client, signed_monitor, body,
                        signed(SECRET, body, webhook_id=f"msg_{i}", at=time.time() + skew))
        assert resp.status_code == 202, resp.text


def test_replayed_webhook_id_returns_the_first_result(client: TestClient, duty: Headers,
                                                      signed_monitor: Headers) -> None:
    body = orjson.dumps([alert(labels={"topic": "bhxh"}), alert("B", labels={"x": "1"})])
    first = post_raw(client, signed_monitor, body, signed(SECRET, body, "msg_replay"))
    assert first.status_code == 202, first.text
    time.sleep(1.1)  # a fresh signature with a later timestamp, as a retrying sender makes
    again = post_raw(client, signed_monitor, body, signed(SECRET, body, "msg_replay"))
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert stored(client) == (2, 2)
    incident_id = first.json()["results"][0]["incident_id"]
    assert get_incident(client, duty, incident_id)["alert_count"] == 1
    # A new webhook-id with the same body is a new delivery.
    third = post_raw(client, signed_monitor, body, signed(SECRET, body, "msg_next"))
    assert third.status_code == 202
    assert all(r["deduplicated"] for r in third.json()["results"])
    assert stored(client) == (2, 4)


def test_long_webhook_ids_are_replayed_too(client: TestClient,
                                          signed_monitor: Headers) -> None:
    body = orjson.dumps(alert())
    webhook_id = "msg_" + "0123456789" * 30
    first = post_raw(client, signed_monitor, body, signed(SECRET, body, webhook_id))
    assert first.status_code == 202, first.text
    again = post_raw(client, signed_monitor, body, signed(SECRET, body, webhook_id))
    assert again.status_code == 200 and again.json() == first.json()
    other = post_raw(client, signed_monitor, body, signed(SECRET, body, webhook_id[:-1]))
    assert other.status_code == 202
    assert count(client, Alert) == 2


def test_signed_keys_sign_every_route(client: TestClient, signed_monitor: Headers) -> None:
    am = orjson.dumps(alertmanager("firing"))
    assert_problem(post_raw(client, signed_monitor, am, {"Content-Type": "application/json"},
                            "/alerts/alertmanager"), 401, "/problems/unauthenticated")
    resp = post_raw(client, signed_monitor, am, signed(SECRET, am, "am-1"),
                    "/alerts/alertmanager")
    assert resp.status_code == 202, resp.text
    doc = cap("valid-vi")
    assert_problem(post_raw(client, signed_monitor, doc,
                            {"Content-Type": "application/cap+xml"}, "/alerts/cap"),
                   401, "/problems/unauthenticated")
    resp = post_raw(client, signed_monitor, doc,
                    {**signed(SECRET, doc, "cap-1"), "Content-Type": "application/cap+xml"},
                    "/alerts/cap")
    assert resp.status_code == 202, resp.text


def test_unsigned_monitor_keys_need_no_signature(client: TestClient, monitor: Headers,
                                                 signed_monitor: Headers) -> None:
    body = orjson.dumps(alert())
    resp = post_raw(client, monitor, body, {"Content-Type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert_problem(post_raw(client, signed_monitor, body, {"Content-Type": "application/json"}),
                   401, "/problems/unauthenticated")
    assert count(client, Alert) == 1


# -- rate limit (api.md, Conventions) ----------------------------------------------------

@pytest.mark.parametrize("settings_env", [{"ingest_rate_limit": 1, "ingest_burst": 5}])
def test_ingest_is_rate_limited_per_key(client: TestClient, monitor: Headers,
                                        make_key: MakeKey) -> None:
    ok = post(client, monitor, [alert(labels={"n": str(i)}) for i in range(5)])
    assert ok.status_code == 202
    resp = post(client, monitor, alert(labels={"n": "over"}), expect=None)
    assert_problem(resp, 429, "/problems/rate-limited")
    assert int(resp.headers["retry-after"]) >= 1
    assert count(client, Alert) == 5
    # The bucket is per key: another monitor is not slowed down.
    assert post(client, make_key("monitor"), alert(labels={"n": "x"})).status_code == 202


# -- 6. a storm ---------------------------------------------------------------------------

STORM_ALERTS, STORM_FINGERPRINTS, STORM_TOPICS, STORM_BATCH = 10_000, 100, 10, 1000


@pytest.mark.parametrize("settings_env", [{"ingest_rate_limit": 0}])
def test_storm_of_ten_thousand_alerts(client: TestClient, monitor: Headers,
                                      duty: Headers) -> None:
    def storm_alert(i: int) -> dict[str, Any]:
        f = i % STORM_FINGERPRINTS
        return alert(f"Bão cảnh báo {f}", severity="warning",
                     labels={"topic": f"chu-de-{f % STORM_TOPICS}", "series": f"s{f}"})

    started = time.perf_counter()
    dedup = 0
    for start in range(0, STORM_ALERTS, STORM_BATCH):
        out = results(client, monitor, [storm_alert(i) for i in range(start, start + STORM_BATCH)])
        assert len(out) == STORM_BATCH
        dedup += sum(r["deduplicated"] for r in out)
    elapsed = time.perf_counter() - started
    print(f"\n{STORM_ALERTS} alerts ingested in {elapsed:.2f} s "
          f"({STORM_ALERTS / elapsed:.0f} alerts/s)")

    assert dedup == STORM_ALERTS - STORM_FINGERPRINTS
    incidents = list_incidents(client, duty)
    assert len(incidents) == STORM_TOPICS
    assert sum(i["alert_count"] for i in incidents) == STORM_ALERTS
    assert {i["alert_count"] for i in incidents} == {STORM_ALERTS // STORM_TOPICS}
    assert all(i["state"] == "detected" and i["version"] == 1 for i in incidents)
    assert stored(client) == (STORM_TOPICS, STORM_ALERTS)
    assert count(client, Alert, col(Alert.deduplicated).is_(False)) == STORM_FINGERPRINTS
    assert len(detected_events(client)) == STORM_TOPICS
    assert elapsed < 20, f"the storm took {elapsed:.1f} s"


# -- 7. concurrency -----------------------------------------------------------------------

def _race(base_urls: list[str], auth: Headers, body: dict[str, Any],
          senders: int) -> list[httpx.Response]:
    barrier = threading.Barrier(senders)
    responses: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * senders

    def send(n: int) -> None:
        with httpx.Client(base_url=base_urls[n % len(base_urls)], timeout=30) as http:
            barrier.wait()
            try:
                responses[n] = http.post(f"{API}/alerts", json=body, headers=auth)
            except BaseException as exc:  # reported below
                responses[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    failed = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not failed, failed
    return [r for r in responses if isinstance(r, httpx.Response)]


def _check_race(client: TestClient, duty: Headers, responses: list[httpx.Response]) -> None:
    assert [r.status_code for r in responses] == [202] * len(responses), \
        [r.text for r in responses if r.status_code != 202][:3]
    out = [r.json()["results"][0] for r in responses]
    assert len({r["incident_id"] for r in out}) == 1
    assert sorted(r["deduplicated"] for r in out) == [False] + [True] * (len(out) - 1)
    assert stored(client) == (1, len(out))
    [inc] = list_incidents(client, duty)
    assert inc["alert_count"] == len(out)
    assert len(detected_events(client)) == 1


def test_concurrent_posts_of_one_new_fingerprint_open_one_incident(
        client: TestClient, settings: Settings, monitor: Headers, duty: Headers) -> None:
    from app.main import create_app

    body = alert("Đua nhau", labels={"race": "1", "topic": "dua-nhau"})
    with live_server(create_app(settings)) as base:
        responses = _race([base], monitor, body, 20)
    _check_race(client, duty, responses)


def test_concurrent_posts_to_two_api_processes_open_one_incident(
        client: TestClient, settings: Settings, monitor: Headers, duty: Headers) -> None:
    """Two apps (two writers, two connection pools) on one database, as two API processes."""
    from app.main import create_app

    body = alert("Hai tiến trình", labels={"race": "2"})
    with live_server(create_app(settings)) as one_url, \
            live_server(create_app(settings)) as other_url:
        responses = _race([one_url, other_url], monitor, body, 20)
    _check_race(client, duty, responses)


@contextlib.asynccontextmanager
async def _running_writers(settings: Settings, count: int = 1, **kw: Any
                           ) -> AsyncIterator[list[Any]]:
    """`count` running ingest writers on one database (as the ingest processes of that many
    `serve` instances), stopped and the database closed afterwards."""
    from app.alerts.writer import IngestWriter
    from app.bootstrap import build_env, open_database

    db = open_database(settings)
    writers = [IngestWriter(db, build_env(settings), settings.group_by,
                            settings.raw_alert_max_bytes, **kw) for _ in range(count)]
    for writer in writers:
        writer.start()
    try:
        yield writers
    finally:
        for writer in writers:
            await writer.stop()
        await db.dispose()


def test_a_failing_request_in_a_group_fails_alone(settings: Settings) -> None:
    """Requests committed together: when one of them cannot be stored (here a second copy of
    a signed webhook racing the first), the others are still stored and answered, and the
    loser is told to replay the winner's result. The others are arrays large enough to go
    in by COPY on PostgreSQL, together at first and then each in its own savepoint."""
    import asyncio

    from app.alerts.parsers import parse_generic
    from app.alerts.writer import DuplicateWebhook
    from app.core.bulk import COPY_MIN_ROWS

    def many(name: str) -> list[Any]:
        return parse_generic([alert(fingerprint=f"{name}-{i:03d}")
                              for i in range(COPY_MIN_ROWS)])

    async def scenario() -> list[Any]:
        async with _running_writers(settings) as (writer,):
            submit = [
                writer.submit(many("ok-1"), "m", "k1"),
                writer.submit(parse_generic(alert(fingerprint="hook")), "m", "k1", "msg-1"),
                writer.submit(parse_generic(alert(fingerprint="hook")), "m", "k1", "msg-1"),
                writer.submit(many("ok-2"), "m", "k1"),
            ]
            return await asyncio.gather(*submit, return_exceptions=True)

    first, hook, again, last = asyncio.run(scenario())
    assert isinstance(again, DuplicateWebhook)
    for outcome in (first, hook, last):
        results, replayed = outcome
        assert replayed is False and results[0].status == "firing"
    from app.core.db import make_sync_engine

    engine = make_sync_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            fingerprints = sorted(conn.execute(sa.select(col(Alert.fingerprint))).scalars())
    finally:
        engine.dispose()
    assert fingerprints == ["hook", *(f"ok-{n}-{i:03d}" for n in (1, 2)
                                      for i in range(COPY_MIN_ROWS))]


def _through_two_writers(settings: Settings, steps: list[tuple[int, list[Any]]]) -> list[Any]:
    """Submit each step's alerts through writer 0 or 1 (the ingest processes of two `serve`
    instances on one database), in order; each step's first result."""
    import asyncio

    async def scenario() -> list[Any]:
        async with _running_writers(settings, 2) as writers:
            return [(await writers[i].submit(alerts, "m", "k1"))[0][0] for i, alerts in steps]

    return asyncio.run(scenario())


def test_a_key_another_writer_made_meanwhile_is_not_written_over(settings: Settings) -> None:
    """Two writers (the ingest processes of two `serve` instances) on one database. On
    PostgreSQL a writer decides a group from what it remembers of the alert keys, in one
    round trip, taking a fingerprint it never saw to lead nowhere when its topic leads to an
    incident; the other writer has meanwhile stored that fingerprint, so the group must be
    decided again from what is stored: deduplicated, with the incident's count right."""
    from app.alerts.parsers import parse_generic

    def one_alert(fingerprint: str) -> list[Any]:
        return parse_generic(alert(fingerprint=fingerprint, labels={"topic": "bhxh"}))

    first, again, other, late = _through_two_writers(settings, [
        (0, one_alert("fp-1")),  # opens the incident
        (0, one_alert("fp-1")),  # from memory
        (1, one_alert("fp-2")),  # a new fingerprint
        (0, one_alert("fp-2")),  # never seen by writer 0
    ])
    assert {again.incident_id, other.incident_id, late.incident_id} == {first.incident_id}
    assert [r.deduplicated for r in (first, again, other, late)] == [False, True, False, True]
    from app.core.db import make_sync_engine

    engine = make_sync_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            count = conn.execute(sa.select(col(Incident.alert_count)).where(
                col(Incident.id) == first.incident_id)).scalar_one()
    finally:
        engine.dispose()
    assert count == 4


def test_a_raise_remembered_at_an_old_severity_is_decided_on_what_is_stored(
        settings: Settings) -> None:
    """On PostgreSQL a writer reads and locks the incidents a group raises together with its
    check of what it remembers. Here the other writer has meanwhile raised the incident
    above the group's severity: the group must be decided again from what is stored, so it
    raises nothing, and the timeline holds the other writer's raise only."""
    from app.alerts.parsers import parse_generic
    from app.incidents.models import TimelineEntry

    def one_alert(fingerprint: str, severity: str) -> list[Any]:
        return parse_generic(alert(fingerprint=fingerprint, labels={"topic": "bhxh"},
                                   severity=severity))

    first, other, late = _through_two_writers(settings, [
        (0, one_alert("fp-1", "low")),  # writer 0 remembers it low
        (1, one_alert("fp-2", "critical")),
        (0, one_alert("fp-1", "high")),
    ])
    assert {other.incident_id, late.incident_id} == {first.incident_id}
    assert late.deduplicated is True and late.status == "firing"
    from app.core.db import make_sync_engine

    engine = make_sync_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            severity, count = conn.execute(sa.select(col(Incident.severity),
                                                     col(Incident.alert_count)).where(
                col(Incident.id) == first.incident_id)).one()
            raises = conn.execute(sa.select(col(TimelineEntry.data)).where(
                col(TimelineEntry.incident_id) == first.incident_id,
                col(TimelineEntry.kind) == "severity_raised")).scalars().all()
    finally:
        engine.dispose()
    assert (str(getattr(severity, "value", severity)), count) == ("critical", 3)
    assert [(r["from"], r["to"]) for r in raises] == [("low", "critical")]


@pytest.mark.parametrize("beside", ["own connection", "other process"])
def test_an_incident_closed_between_two_groups_takes_no_more_alerts(
        settings: Settings, beside: str) -> None:
    """The writer remembers what alert keys led to. On SQLite it trusts that memory as long
    as nothing but itself has written the database; here, between two of its groups, the
    incident is closed by another transaction on the very connection the writer had from the
    pool (its own changes are counted apart from others'), or by another process. The next
    repeat must open a new incident, not join the closed one."""
    import asyncio

    from app.alerts.parsers import parse_generic
    from app.core.db import make_sync_engine
    from app.incidents.models import State

    body = alert(fingerprint="fp-closed", labels={"topic": "bhxh"})

    def close(incident_id: str | None) -> Any:
        return sa.update(Incident).where(col(Incident.id) == incident_id).values(
            state=State.closed)

    async def scenario() -> list[Any]:
        async with _running_writers(settings) as (writer,):
            first = (await writer.submit(parse_generic(body), "m", "k1"))[0][0]
            again = (await writer.submit(parse_generic(body), "m", "k1"))[0][0]
            if beside == "own connection":
                async with writer.db.transaction() as session:
                    await session.execute(close(first.incident_id))
            else:
                engine = make_sync_engine(settings.database_url)
                try:
                    with engine.begin() as conn:
                        conn.execute(close(first.incident_id))
                finally:
                    engine.dispose()
            late = (await writer.submit(parse_generic(body), "m", "k1"))[0][0]
            return [first, again, late]

    first, again, late = asyncio.run(scenario())
    assert again.incident_id == first.incident_id and again.deduplicated is True
    assert late.incident_id not in (None, first.incident_id)
    assert late.deduplicated is False


def test_requests_a_turn_of_the_loop_apart_share_one_transaction(settings: Settings) -> None:
    """The writer waits one turn of the event loop before taking its group: requests whose
    bytes arrived together reach the queue a turn apart (each awaits its body first), and a
    group of one pays a whole transaction; a third of a storm's groups were of one."""
    import asyncio

    from app.alerts.parsers import parse_generic

    groups: list[int] = []

    async def scenario() -> None:
        async with _running_writers(
                settings, on_group=lambda group: groups.append(len(group))) as (writer,):

            async def a_turn_later(n: int) -> Any:
                await asyncio.sleep(0)
                return await writer.submit(parse_generic(alert(fingerprint=f"later-{n}")),
                                           "m", "k")

            first = asyncio.create_task(
                writer.submit(parse_generic(alert(fingerprint="first")), "m", "k"))
            later = [asyncio.create_task(a_turn_later(n)) for n in range(5)]
            for outcome in await asyncio.gather(first, *later):
                assert outcome[0][0].status == "firing"

    asyncio.run(scenario())
    assert groups == [6]


def test_a_groups_answers_go_out_before_the_next_group_is_taken(settings: Settings) -> None:
    """A connection sends what an answer wrote at the end of that turn of the loop (Cork);
    the next group runs without a pause up to its first round trip (on SQLite all of it),
    so the writer lets that turn pass before taking it: a request queued while a group was
    being written must not hold that group's answers back. The first group is large enough
    that its COMMIT leaves the loop's thread on SQLite too, so the second request is queued
    while it is written."""
    import asyncio

    from app.alerts.parsers import parse_generic
    from app.core.sqlite_driver import INLINE_COMMIT_ROWS

    events: list[tuple[str, str]] = []

    async def scenario() -> None:
        taken = asyncio.Event()

        def on_group(group: list[Any]) -> None:
            events.append(("taken", group[0].actor))
            taken.set()

        loop = asyncio.get_running_loop()
        async with _running_writers(settings, on_group=on_group) as (writer,):

            async def client(name: str, count: int) -> None:
                alerts = parse_generic([alert(fingerprint=f"{name}-{i}", labels={"topic": name})
                                        for i in range(count)])
                await writer.submit(alerts, name, "k")
                loop.call_soon(events.append, ("sent", name))  # as Cork sends, a turn later

            first = asyncio.create_task(client("first", INLINE_COMMIT_ROWS + 10))
            await taken.wait()  # the first group is being written
            assert events == [("taken", "first")]
            second = asyncio.create_task(client("second", 1))
            await asyncio.gather(first, second)

    asyncio.run(scenario())
    assert events == [("taken", "first"), ("sent", "first"), ("taken", "second"),
                      ("sent", "second")]


# -- the ingestion routes outside FastAPI's routing (app.alerts.fastpath) --------------------

def test_ingestion_keeps_every_layer_around_it(client: TestClient,
                                                make_key: Callable[..., dict[str, str]],
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The ingestion routes skip FastAPI's routing, not what wraps every request: the
    request id is echoed, the route is labelled in the metrics, an unexpected failure is the
    generic problem (logged, its detail never shown), a wrong role is 403, and other methods
    on the path are still FastAPI's 405."""
    monitor, viewer = make_key("monitor"), make_key("viewer")
    resp = client.post("/api/v1/alerts", json={"source": "s", "title": "t", "fingerprint": "f"},
                       headers={**monitor, "X-Request-ID": "req-42"})
    assert resp.status_code == 202 and resp.headers["x-request-id"] == "req-42"
    assert 'route="/api/v1/alerts",status="202"' in client.get("/metrics").text

    forbidden = client.post("/api/v1/alerts/cap", content=b"<alert/>",
                            headers={**viewer, "Content-Type": "application/cap+xml"})
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("application/problem+json")

    not_allowed = client.get("/api/v1/alerts/alertmanager", headers=monitor)
    assert not_allowed.status_code == 405
    assert not_allowed.headers["content-type"].startswith("application/problem+json")

    writer = client.app.state.ingest  # type: ignore[attr-defined]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    real, writer.submit = writer.submit, broken
    try:
        failed = client.post("/api/v1/alerts", headers=monitor,
                             json={"source": "s", "title": "t", "fingerprint": "g"})
    finally:
        writer.submit = real
    assert failed.status_code == 500
    assert failed.json()["type"] == "/problems/internal"
    assert "secret internal detail" not in failed.text and failed.headers["x-request-id"]
    assert any("secret internal detail" in (r.exc_text or str(r.exc_info))
               for r in caplog.records)
