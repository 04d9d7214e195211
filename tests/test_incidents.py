"""The incident workflow through the REST API, as duty officers and leadership see it.

Every test here runs on SQLite and on PostgreSQL (the `client` fixture is parametrized by
backend). Helpers check the contract on every step: state, version, `ETag`, timeline.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import col, select

from app.core.clock import clock
from app.incidents.models import Category, Incident, Severity, State
from app.incidents.search import search_text
from app.notifications.models import Event
from tests.factories import (
    ASSESS,
    PROPOSAL,
    RESPONSE,
    assert_problem,
    db_call,
    fire,
    open_incident,
    portal,
)

API = "/api/v1"
Headers = dict[str, str]
MakeKey = Callable[..., Headers]


# -- fixtures and helpers ---------------------------------------------------------------




def get_incident(client: TestClient, headers: Headers, incident_id: str) -> dict[str, Any]:
    resp = client.get(f"{API}/incidents/{incident_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert resp.headers["etag"] == f'"{body["version"]}"'
    return body


def timeline(client: TestClient, headers: Headers, incident_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"{API}/incidents/{incident_id}/timeline", headers=headers)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def step(client: TestClient, headers: Headers, before: dict[str, Any], trigger: str,
         to: str, **payload: Any) -> dict[str, Any]:
    """Fire `trigger` and check what every successful transition must show."""
    resp = fire(client, headers, before["id"], trigger, **payload)
    return check_moved(client, headers, before, resp.json(), resp.headers["etag"], trigger, to)


def check_moved(client: TestClient, headers: Headers, before: dict[str, Any],
                after: dict[str, Any], etag: str, trigger: str, to: str) -> dict[str, Any]:
    assert after["state"] == to
    assert after["version"] == before["version"] + 1
    assert etag == f'"{after["version"]}"'
    last = timeline(client, headers, before["id"])[-1]
    assert (last["kind"], last["from_state"], last["to_state"]) == ("transition",
                                                                    before["state"], to)
    assert last["data"]["trigger"] == trigger
    assert get_incident(client, headers, before["id"]) == after
    return after


def decide(client: TestClient, headers: Headers, proposal_id: str, verb: str,
           expect: int = 200, **body: Any) -> dict[str, Any]:
    resp = client.post(f"{API}/proposals/{proposal_id}/{verb}", json=body or None,
                       headers=headers)
    assert resp.status_code == expect, resp.text
    data: dict[str, Any] = resp.json()
    return data


def latest_proposal(client: TestClient, headers: Headers, incident_id: str) -> dict[str, Any]:
    resp = client.get(f"{API}/proposals", params={"incident": incident_id}, headers=headers)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    assert items, "the incident has no proposal"
    return items[0]


def assessed(client: TestClient, headers: Headers, severity: str = "medium",
             **fields: Any) -> dict[str, Any]:
    inc = open_incident(client, headers, **fields)
    data: dict[str, Any] = fire(client, headers, inc["id"], "assess",
                                **{**ASSESS, "severity": severity}).json()
    return data


def proposed(client: TestClient, headers: Headers, severity: str = "high",
             **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    inc = assessed(client, headers, severity, **fields)
    inc = fire(client, headers, inc["id"], "propose_task_force", **PROPOSAL).json()
    return inc, latest_proposal(client, headers, inc["id"])


def events(client: TestClient, incident_id: str, type_: str | None = None) -> list[Event]:
    """The `event` rows of an incident, oldest first (detached copies)."""
    async def fetch(session: Any) -> list[Event]:
        stmt = select(Event).where(Event.incident_id == incident_id).order_by(col(Event.seq))
        if type_:
            stmt = stmt.where(Event.type == type_)
        return [Event.model_validate(e.model_dump()) for e in (await session.exec(stmt)).all()]

    result: list[Event] = db_call(client, fetch)
    return result


def list_ids(client: TestClient, headers: Headers, **params: Any) -> list[str]:
    resp = client.get(f"{API}/incidents", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    return [i["id"] for i in resp.json()["items"]]


# -- 1. every transition of the default workflow ----------------------------------------

def test_full_lifecycle_walks_every_task_force_transition(
        client: TestClient, duty: Headers, leader: Headers) -> None:
    resp = client.post(f"{API}/incidents", json={"title": "Tin giả về học phí"}, headers=duty)
    assert resp.status_code == 201, resp.text
    inc = resp.json()
    assert resp.headers["location"] == f"{API}/incidents/{inc['id']}"
    assert resp.headers["etag"] == '"1"'
    assert (inc["state"], inc["version"], inc["severity"], inc["category"]) == (
        "detected", 1, "medium", "other")
    assert inc["allowed_triggers"] == ["assess", "close"]
    assert inc["escalation_level"] == 0 and inc["overdue"] is False
    assert inc["deadline_at"] is not None
    first = timeline(client, duty, inc["id"])
    assert [(e["kind"], e["from_state"], e["to_state"]) for e in first] == [
        ("created", None, "detected")]

    inc = step(client, duty, inc, "assess", "assessed", **{**ASSESS, "severity": "high"})
    # high needs a task force: issue_response is left out of what may be fired now.
    assert inc["allowed_triggers"] == ["reassess", "propose_task_force", "close"]
    inc = step(client, duty, inc, "reassess", "assessed", severity="high", summary="Lan rộng")
    inc = step(client, duty, inc, "propose_task_force", "task_force_proposed", **PROPOSAL)
    assert inc["allowed_triggers"] == ["reassess", "withdraw_task_force", "close"]
    first_proposal = latest_proposal(client, duty, inc["id"])
    inc = step(client, duty, inc, "withdraw_task_force", "assessed", reason="Không cần nữa")
    assert decide(client, leader, first_proposal["id"], "approve", 409)
    assert client.get(f"{API}/proposals/{first_proposal['id']}",
                      headers=duty).json()["status"] == "withdrawn"

    # rejected by leadership: back to assessed
    inc = step(client, duty, inc, "propose_task_force", "task_force_proposed", **PROPOSAL)
    rejected = decide(client, leader, latest_proposal(client, duty, inc["id"])["id"], "reject",
                      comment="Chưa đủ căn cứ")
    assert rejected["status"] == "rejected"
    inc = check_moved(client, duty, inc, get_incident(client, duty, inc["id"]),
                      f'"{inc["version"] + 1}"', "reject_task_force", "assessed")

    # approved: the state stays task_force_proposed, the version moves on
    inc = step(client, duty, inc, "propose_task_force", "task_force_proposed", **PROPOSAL)
    approved = decide(client, leader, latest_proposal(client, duty, inc["id"])["id"], "approve")
    assert approved["status"] == "approved"
    inc = check_moved(client, duty, inc, get_incident(client, duty, inc["id"]),
                      f'"{inc["version"] + 1}"', "approve_task_force", "task_force_proposed")
    # an approved task force cannot be "withdrawn": the guard says so before anyone tries
    assert inc["allowed_triggers"] == ["reassess", "issue_response", "close"]
    resp = fire(client, duty, inc["id"], "withdraw_task_force", None, reason="x")
    check_refusal(resp, "/problems/guard-failed", "task_force_proposed",
                  ["reassess", "issue_response", "close"], "proposal_pending")

    inc = step(client, duty, inc, "reassess", "task_force_proposed", severity="critical",
               summary="Nghiêm trọng")
    inc = step(client, duty, inc, "issue_response", "response_issued", **RESPONSE)
    assert inc["first_response_at"] is not None
    inc = step(client, duty, inc, "reassess", "response_issued", severity="critical",
               summary="Vẫn nghiêm trọng")
    inc = step(client, duty, inc, "issue_response", "response_issued",
               **{**RESPONSE, "channel": "press_conference", "statement": "Cập nhật lần 2"})
    assert inc["allowed_triggers"] == ["reassess", "issue_response", "close"]
    inc = step(client, duty, inc, "close", "closed", resolution="resolved", summary="Đã xử lý",
               lessons_learned="Phản hồi sớm hơn")
    assert inc["closure"]["resolution"] == "resolved"
    assert inc["allowed_triggers"] == ["reopen"]
    inc = step(client, duty, inc, "reopen", "assessed", reason="Tin giả quay lại")
    assert inc["closure"] is None
    assert inc["version"] == 15

    entries = timeline(client, duty, inc["id"])
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["data"]["trigger"] for e in entries if e["kind"] == "transition"] == [
        "assess", "reassess", "propose_task_force", "withdraw_task_force",
        "propose_task_force", "reject_task_force", "propose_task_force", "approve_task_force",
        "reassess", "issue_response", "reassess", "issue_response", "close", "reopen"]


def test_issue_response_straight_from_assessed_below_threshold(
        client: TestClient, duty: Headers) -> None:
    for severity in ("low", "medium"):
        inc = assessed(client, duty, severity, lead_agency="MOH", affected_agencies=["MIC"])
        assert "issue_response" in inc["allowed_triggers"]
        inc = step(client, duty, inc, "issue_response", "response_issued", **RESPONSE)
        inc = step(client, duty, inc, "close", "closed", resolution="resolved", summary="Xong")


def test_close_before_a_response_dismissed_or_duplicate(client: TestClient, duty: Headers,
                                                        leader: Headers) -> None:
    original = open_incident(client, duty, title="Bản gốc")
    for path, resolution in (([], "dismissed"), (["assess"], "duplicate"),
                             (["assess", "propose"], "dismissed"),
                             (["assess", "propose"], "duplicate")):
        inc = open_incident(client, duty)
        if "assess" in path:
            inc = fire(client, duty, inc["id"], "assess",
                       **{**ASSESS, "severity": "high"}).json()
        if "propose" in path:
            inc = fire(client, duty, inc["id"], "propose_task_force", **PROPOSAL).json()
        extra = {"duplicate_of": original["id"]} if resolution == "duplicate" else {}
        inc = step(client, duty, inc, "close", "closed", resolution=resolution,
                   summary="Không phải sự cố", **extra)
        assert inc["closure"]["resolution"] == resolution
        assert inc["closure"]["duplicate_of"] == extra.get("duplicate_of")
        assert inc["deadline_at"] is None  # closing meets every open clock
        if "propose" in path:  # closing withdraws the pending proposal
            withdrawn = latest_proposal(client, duty, inc["id"])
            assert withdrawn["status"] == "withdrawn" and withdrawn["decided_at"] is not None
            decide(client, leader, withdrawn["id"], "approve", 409)
    assert client.get(f"{API}/proposals", params={"status": "pending"},
                      headers=leader).json()["items"] == []


def test_allowed_triggers_depend_on_the_role(client: TestClient, make_key: MakeKey,
                                             duty: Headers) -> None:
    inc = assessed(client, duty, "low")
    as_role = {role: get_incident(client, make_key(role), inc["id"])["allowed_triggers"]
               for role in ("admin", "leader", "viewer")}
    assert as_role["admin"] == ["reassess", "propose_task_force", "issue_response", "close"]
    # approve/reject are decided through the proposals API, never listed here
    assert as_role["leader"] == []
    assert as_role["viewer"] == []


# -- 2. refusals: guards, invalid transitions, bad payloads -----------------------------

def check_refusal(resp: Any, type_: str, state: str, allowed: list[str],
                  rule: str | None = None) -> dict[str, Any]:
    body = assert_problem(resp, 409, type_)
    assert body["current_state"] == state
    assert body["allowed_triggers"] == allowed
    if rule is not None:
        assert body["rule"] == rule
        assert rule in body["detail"]
    return body


def test_guard_below_task_force_threshold(client: TestClient, duty: Headers) -> None:
    for severity in ("high", "critical"):
        inc = assessed(client, duty, severity)
        resp = fire(client, duty, inc["id"], "issue_response", None, **RESPONSE)
        check_refusal(resp, "/problems/guard-failed", "assessed",
                      ["reassess", "propose_task_force", "close"], "below_task_force_threshold")
        assert get_incident(client, duty, inc["id"])["version"] == inc["version"]
    # lowering the severity lifts the guard
    inc = fire(client, duty, inc["id"], "reassess", severity="medium", summary="Hạ mức").json()
    assert "issue_response" in inc["allowed_triggers"]
    fire(client, duty, inc["id"], "issue_response", **RESPONSE)


def test_guard_task_force_approved(client: TestClient, duty: Headers, leader: Headers) -> None:
    inc, proposal = proposed(client, duty)
    resp = fire(client, duty, inc["id"], "issue_response", None, **RESPONSE)
    check_refusal(resp, "/problems/guard-failed", "task_force_proposed",
                  ["reassess", "withdraw_task_force", "close"], "task_force_approved")
    decide(client, leader, proposal["id"], "approve")
    fire(client, duty, inc["id"], "issue_response", **RESPONSE)


def test_guard_multi_agency_has_lead(client: TestClient, duty: Headers) -> None:
    inc = assessed(client, duty, "medium", affected_agencies=["MOH", "MIC"])
    assert inc["lead_agency"] is None
    assert "issue_response" not in inc["allowed_triggers"]  # stored data already fails
    resp = fire(client, duty, inc["id"], "issue_response", None, **RESPONSE)
    check_refusal(resp, "/problems/guard-failed", "assessed",
                  ["reassess", "propose_task_force", "close"], "multi_agency_has_lead")
    # one agency alone needs no lead
    single = assessed(client, duty, "medium", affected_agencies=["MOH"])
    fire(client, duty, single["id"], "issue_response", **RESPONSE)
    # a follow-up statement is refused too once the lead is removed
    client.patch(f"{API}/incidents/{inc['id']}", json={"lead_agency": "MOH"}, headers=duty)
    fire(client, duty, inc["id"], "issue_response", **RESPONSE)
    patched = client.patch(f"{API}/incidents/{inc['id']}", json={"lead_agency": None},
                           headers=duty)
    assert patched.status_code == 200 and patched.json()["lead_agency"] is None
    resp = fire(client, duty, inc["id"], "issue_response", None, **RESPONSE)
    check_refusal(resp, "/problems/guard-failed", "response_issued", ["reassess", "close"],
                  "multi_agency_has_lead")


def test_guard_dismissal_only(client: TestClient, duty: Headers) -> None:
    inc = open_incident(client, duty)
    assert "close" in inc["allowed_triggers"]  # a payload guard is judged on firing
    resp = fire(client, duty, inc["id"], "close", None, resolution="resolved", summary="x")
    check_refusal(resp, "/problems/guard-failed", "detected", ["assess", "close"],
                  "dismissal_only")
    inc = assessed(client, duty, "high")
    resp = fire(client, duty, inc["id"], "close", None, resolution="resolved", summary="x")
    check_refusal(resp, "/problems/guard-failed", "assessed",
                  ["reassess", "propose_task_force", "close"], "dismissal_only")


def test_invalid_transitions_from_detected(client: TestClient, duty: Headers) -> None:
    inc = open_incident(client, duty)
    for trigger, payload in (("reopen", {"reason": "x"}), ("propose_task_force", PROPOSAL),
                             ("withdraw_task_force", {"reason": "x"}),
                             ("reassess", {"severity": "low", "summary": "x"}),
                             ("issue_response", RESPONSE)):
        resp = fire(client, duty, inc["id"], trigger, None, **payload)
        body = check_refusal(resp, "/problems/invalid-transition", "detected",
                             ["assess", "close"])
        assert trigger in body["detail"] and "detected" in body["detail"]
    assert get_incident(client, duty, inc["id"])["version"] == 1
    assert len(timeline(client, duty, inc["id"])) == 1

    inc = open_incident(client, duty)
    fire(client, duty, inc["id"], "close", resolution="dismissed", summary="x")
    resp = fire(client, duty, inc["id"], "assess", None, **ASSESS)
    check_refusal(resp, "/problems/invalid-transition", "closed", ["reopen"])
    inc = assessed(client, duty)
    resp = fire(client, duty, inc["id"], "assess", None, **ASSESS)
    check_refusal(resp, "/problems/invalid-transition", "assessed",
                  ["reassess", "propose_task_force", "issue_response", "close"])


BAD_PAYLOADS = [
        ({"trigger": "fly"}, "body"),
        ({"trigger": "approve_task_force"}, "body"),
        ({"trigger": "reject_task_force", "comment": "x"}, "body"),
        ({}, "body"),
        ({"trigger": "assess", "severity": "medium", "category": "fake_news"}, "summary"),
        ({**ASSESS, "trigger": "assess", "severity": "extreme"}, "severity"),
        ({**ASSESS, "trigger": "assess", "category": "rumour"}, "category"),
        ({**ASSESS, "trigger": "assess", "reach": -1}, "reach"),
        ({**ASSESS, "trigger": "assess", "colour": "red"}, "colour"),
        ({**ASSESS, "trigger": "assess", "summary": "   "}, "summary"),
        ({**ASSESS, "trigger": "assess", "lead_agency": "bad code!"}, "lead_agency"),
        ({**PROPOSAL, "trigger": "propose_task_force", "members": []}, "members"),
        ({**RESPONSE, "trigger": "issue_response", "channel": "tv"}, "channel"),
        ({**RESPONSE, "trigger": "issue_response", "url": "ftp://x"}, "url"),
        ({**RESPONSE, "trigger": "issue_response", "language": "fr"}, "language"),
        ({"trigger": "close", "resolution": "duplicate", "summary": "x"}, "body"),
        ({"trigger": "close", "resolution": "fixed", "summary": "x"}, "resolution"),
]


def test_bad_transition_payloads_are_422(client: TestClient, duty: Headers) -> None:
    inc = open_incident(client, duty)
    for payload, loc_part in BAD_PAYLOADS:
        resp = client.post(f"{API}/incidents/{inc['id']}/transitions", json=payload,
                           headers=duty)
        body = assert_problem(resp, 422, "/problems/validation")
        assert body["errors"], body
        locs = [e["loc"] for e in body["errors"]]
        assert all(isinstance(loc, list) and loc and loc[0] == "body" for loc in locs), locs
        assert any(loc_part in map(str, loc) for loc in locs), (payload, locs)
    for raw in (b"[]", b"not json", b'{"trigger": "assess"'):
        resp = client.post(f"{API}/incidents/{inc['id']}/transitions", content=raw,
                           headers={**duty, "Content-Type": "application/json"})
        assert_problem(resp, 422, "/problems/validation")
    assert get_incident(client, duty, inc["id"])["version"] == 1

    # payloads that parse but name things that do not exist
    resp = fire(client, duty, inc["id"], "assess", None, **ASSESS, lead_agency="NOPE")
    body = assert_problem(resp, 422, "/problems/validation")
    assert "NOPE" in body["detail"]
    resp = fire(client, duty, inc["id"], "close", None, resolution="duplicate", summary="x",
                duplicate_of="no-such-incident")
    body = assert_problem(resp, 422, "/problems/validation")
    assert body["errors"][0]["loc"] == ["body", "duplicate_of"]
    resp = fire(client, duty, inc["id"], "close", None, resolution="duplicate", summary="x",
                duplicate_of=inc["id"])
    assert_problem(resp, 422, "/problems/validation")
    inc2 = assessed(client, duty)
    resp = fire(client, duty, inc2["id"], "propose_task_force", None,
                **{**PROPOSAL, "members": ["MIC", "XYZ"]})
    body = assert_problem(resp, 422, "/problems/validation")
    assert "XYZ" in body["detail"]
    # a failed action leaves nothing behind: no proposal, same version, same state
    assert client.get(f"{API}/proposals", params={"incident": inc2["id"]},
                      headers=duty).json()["items"] == []
    after = get_incident(client, duty, inc2["id"])
    assert (after["state"], after["version"]) == ("assessed", inc2["version"])
    assert get_incident(client, duty, inc["id"])["version"] == 1


def test_a_nul_character_postgresql_cannot_hold_is_a_422_not_a_500(
        client: TestClient, duty: Headers, backend: str) -> None:
    """The new incident's rows go in as one JSON document on PostgreSQL, which refuses
    `\u0000` in text: the client hears a validation problem and nothing is stored. SQLite
    holds the character, so there the incident is simply created."""
    resp = client.post(f"{API}/incidents", json={"title": "Tin giả\u0000về học phí"},
                       headers=duty)
    if backend == "postgresql":
        assert_problem(resp, 422, "/problems/validation")
        assert client.get(f"{API}/incidents", headers=duty).json()["items"] == []
    else:
        assert resp.status_code == 201, resp.text
        assert resp.json()["title"] == "Tin giả\u0000về học phí"


# -- 3. task-force proposals ------------------------------------------------------------

def test_proposal_sets_lead_agency_only_when_unset(client: TestClient, duty: Headers) -> None:
    inc, proposal = proposed(client, duty)
    assert inc["lead_agency"] == "MOH"
    assert proposal["lead_agency"] == "MOH" and proposal["members"] == ["MIC", "MPS"]
    assert proposal["status"] == "pending"
    assert (proposal["decided_by"], proposal["decided_at"], proposal["decision_comment"]) == (
        None, None, None)
    assert proposal["incident_reference"] == inc["reference"]
    assert proposal["proposed_by"].endswith("Trực ban")
    # only MOH filters it in: the lead was recorded for the agency filter too
    assert inc["id"] in list_ids(client, duty, agency="MOH")

    inc2, _ = proposed(client, duty, lead_agency="MOF")
    assert inc2["lead_agency"] == "MOF"


def test_leadership_inbox_and_decisions(client: TestClient, duty: Headers, leader: Headers,
                                        admin: Headers) -> None:
    a, pa = proposed(client, duty)
    _, pb = proposed(client, duty)
    c, pc = proposed(client, duty)
    inbox = client.get(f"{API}/proposals", params={"status": "pending"}, headers=leader)
    assert inbox.status_code == 200
    assert [p["id"] for p in inbox.json()["items"]] == [pc["id"], pb["id"], pa["id"]]
    one = client.get(f"{API}/proposals/{pa['id']}", headers=leader).json()
    assert one["incident_reference"] == a["reference"] and one["incident_id"] == a["id"]

    approved = decide(client, leader, pa["id"], "approve", comment="Đồng ý")
    assert approved["status"] == "approved"
    assert approved["decided_by"].endswith("Lãnh đạo")
    assert approved["decided_at"] is not None and approved["decision_comment"] == "Đồng ý"
    by_admin = decide(client, admin, pb["id"], "approve")  # no body at all
    assert by_admin["status"] == "approved" and by_admin["decision_comment"] is None
    rejected = decide(client, admin, pc["id"], "reject", comment="Không cần")
    assert rejected["status"] == "rejected"
    assert get_incident(client, duty, c["id"])["state"] == "assessed"
    assert get_incident(client, duty, a["id"])["state"] == "task_force_proposed"

    inbox = client.get(f"{API}/proposals", params={"status": "pending"}, headers=leader)
    assert inbox.json()["items"] == []
    done = client.get(f"{API}/proposals", params={"status": "approved"}, headers=duty)
    assert {p["id"] for p in done.json()["items"]} == {pa["id"], pb["id"]}


def test_decision_refusals(client: TestClient, duty: Headers, leader: Headers,
                           admin: Headers) -> None:
    inc, p = proposed(client, duty)
    # a rejection needs a comment
    for body in (None, {}, {"comment": ""}):
        resp = client.post(f"{API}/proposals/{p['id']}/reject", json=body, headers=leader)
        problem = assert_problem(resp, 422, "/problems/validation")
        assert problem["errors"][0]["loc"][0] == "body"
    assert client.get(f"{API}/proposals/{p['id']}", headers=leader).json()["status"] == "pending"
    assert get_incident(client, duty, inc["id"])["version"] == inc["version"]

    # deciding twice, or after a withdrawal: 409
    decide(client, leader, p["id"], "approve")
    for verb, who in (("approve", leader), ("reject", admin)):
        resp = client.post(f"{API}/proposals/{p['id']}/{verb}", json={"comment": "x"},
                           headers=who)
        body = assert_problem(resp, 409, "/problems/conflict")
        assert "approved" in body["detail"]

    inc, p2 = proposed(client, duty)
    fire(client, duty, inc["id"], "withdraw_task_force", reason="Tự xử lý được")
    withdrawn = client.get(f"{API}/proposals/{p2['id']}", headers=leader).json()
    assert withdrawn["status"] == "withdrawn"
    assert withdrawn["decision_comment"] == "Tự xử lý được"
    resp = client.post(f"{API}/proposals/{p2['id']}/approve", headers=leader)
    assert_problem(resp, 409, "/problems/conflict")
    assert get_incident(client, duty, inc["id"])["state"] == "assessed"


def test_proposer_key_cannot_decide(client: TestClient, admin: Headers,
                                    make_key: MakeKey) -> None:
    inc, p = proposed(client, admin)
    for verb in ("approve", "reject"):
        resp = client.post(f"{API}/proposals/{p['id']}/{verb}", json={"comment": "Tự duyệt"},
                           headers=admin)
        body = assert_problem(resp, 403, "/problems/forbidden")
        assert "proposed" in body["detail"]
    # another admin key of the same person-name is another key: allowed
    other = make_key("admin", name="Quản trị")
    assert decide(client, other, p["id"], "approve")["status"] == "approved"
    assert get_incident(client, admin, inc["id"])["version"] == inc["version"] + 1


def test_unknown_ids_are_404(client: TestClient, leader: Headers, duty: Headers) -> None:
    for resp in (fire(client, duty, "00000000-0000-0000-0000-000000000000", "assess", None,
                      **ASSESS),
                 client.patch(f"{API}/incidents/nope", json={"title": "x"}, headers=duty),
                 client.get(f"{API}/incidents/nope/timeline", headers=leader),
                 client.get(f"{API}/proposals/nope", headers=leader),
                 client.post(f"{API}/proposals/nope/approve", headers=leader),
                 client.post(f"{API}/proposals/nope/reject", json={"comment": "x"},
                             headers=leader)):
        assert_problem(resp, 404, "/problems/not-found")


# -- 4. escalation on assessment --------------------------------------------------------

def test_escalation_levels_follow_severity_and_never_go_down(client: TestClient,
                                                             duty: Headers) -> None:
    inc = assessed(client, duty, "medium")
    assert inc["escalation_level"] == 0
    assert events(client, inc["id"], "incident.escalated") == []

    inc = fire(client, duty, inc["id"], "reassess", severity="high", summary="Lan rộng").json()
    assert inc["escalation_level"] == 1
    inc = fire(client, duty, inc["id"], "reassess", severity="critical", summary="Quốc gia").json()
    assert inc["escalation_level"] == 2
    inc = fire(client, duty, inc["id"], "reassess", severity="low", summary="Hạ nhiệt").json()
    assert (inc["severity"], inc["escalation_level"]) == ("low", 2)
    inc = fire(client, duty, inc["id"], "reassess", severity="high", summary="Lại tăng").json()
    assert inc["escalation_level"] == 2

    escalated = events(client, inc["id"], "incident.escalated")
    assert [(e.data["reason"], e.data["level"]) for e in escalated] == [
        ("severity", 1), ("severity", 2)]
    assert [e.data["incident"]["escalation_level"] for e in escalated] == [1, 2]
    assert escalated[1].data["incident"]["severity"] == "critical"
    # escalation rides on the transition: one version step per transition, no more
    assert inc["version"] == 6

    # straight to high or critical on the first assessment: escalated at once
    for severity, level in (("high", 1), ("critical", 2)):
        inc = assessed(client, duty, severity, lead_agency="MOH")
        assert inc["escalation_level"] == level
        types = [e.type for e in events(client, inc["id"])]
        assert types == ["incident.detected", "incident.assessed", "incident.escalated"]
        (esc,) = events(client, inc["id"], "incident.escalated")
        assert esc.data["reason"] == "severity" and esc.data["level"] == level
        assert esc.data["incident"]["escalation_level"] == level
        assert esc.agencies == ["MOH"] and esc.severity == severity


# -- 5. ETag and If-Match ---------------------------------------------------------------

def test_if_match_on_patch_and_transitions(client: TestClient, duty: Headers) -> None:
    inc = open_incident(client, duty, title="Tin giả về xăng dầu")
    url = f"{API}/incidents/{inc['id']}"
    resp = client.patch(url, json={"title": "Tin giả về giá xăng"},
                        headers={**duty, "If-Match": '"1"'})
    assert resp.status_code == 200, resp.text
    assert resp.headers["etag"] == '"2"' and resp.json()["version"] == 2

    stale = client.patch(url, json={"title": "Cũ"}, headers={**duty, "If-Match": '"1"'})
    body = assert_problem(stale, 412, "/problems/precondition-failed")
    assert body["current_version"] == 2
    stale = client.post(f"{url}/transitions", json={"trigger": "assess", **ASSESS},
                        headers={**duty, "If-Match": '"1"'})
    assert_problem(stale, 412, "/problems/precondition-failed")
    after = get_incident(client, duty, inc["id"])
    assert (after["state"], after["version"], after["title"]) == (
        "detected", 2, "Tin giả về giá xăng")

    for form in ('"{v}"', 'W/"{v}"', '"99", "{v}"', "*"):
        tag = form.format(v=get_incident(client, duty, inc["id"])["version"])
        ok = client.patch(url, json={"description": f"tag {tag}"},
                          headers={**duty, "If-Match": tag})
        assert ok.status_code == 200, (tag, ok.text)
    version = get_incident(client, duty, inc["id"])["version"]
    assert version == 6
    ok = client.post(f"{url}/transitions", json={"trigger": "assess", **ASSESS},
                     headers={**duty, "If-Match": f'"{version}"'})
    assert ok.status_code == 200 and ok.headers["etag"] == f'"{version + 1}"'


def test_patch_never_changes_state_and_refreshes_search(client: TestClient,
                                                        duty: Headers) -> None:
    inc = open_incident(client, duty, title="Tin đồn về thuế")
    url = f"{API}/incidents/{inc['id']}"
    # `state` (and `version`) are not editable: silently ignored, never applied
    resp = client.patch(url, json={"state": "closed", "version": 99}, headers=duty)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["state"], resp.json()["version"]) == ("detected", 1)
    resp = client.patch(url, json={"state": "closed", "title": "Tin đồn về học phí",
                                   "tags": ["giáo dục", "giáo dục", " "],
                                   "affected_agencies": ["MOET"]}, headers=duty)
    body = resp.json()
    assert (body["state"], body["version"], body["title"]) == ("detected", 2,
                                                             "Tin đồn về học phí")
    assert body["tags"] == ["giáo dục"] and body["affected_agencies"] == ["MOET"]
    assert timeline(client, duty, inc["id"])[-1]["kind"] == "updated"
    assert list_ids(client, duty, q="hoc phi") == [inc["id"]]
    assert list_ids(client, duty, q="thue") == []
    assert list_ids(client, duty, agency="MOET") == [inc["id"]]
    # the same values again: no change, no new version
    again = client.patch(url, json={"title": "Tin đồn về học phí"}, headers=duty)
    assert again.json()["version"] == 2
    bad = client.patch(url, json={"lead_agency": "NOPE"}, headers=duty)
    assert "NOPE" in assert_problem(bad, 422, "/problems/validation")["detail"]
    bad = client.patch(url, json={"title": None}, headers=duty)
    assert_problem(bad, 422, "/problems/validation")
    bad = client.patch(url, json={"links": ["not a url"]}, headers=duty)
    assert_problem(bad, 422, "/problems/validation")
    assert get_incident(client, duty, inc["id"])["version"] == 2


# -- 6. Idempotency-Key -----------------------------------------------------------------

def count_incidents(client: TestClient, headers: Headers) -> int:
    return len(list_ids(client, headers, limit=200))


def test_idempotency_keys(client: TestClient, duty: Headers, make_key: MakeKey) -> None:
    body = {"title": "Tin giả về vắc-xin", "severity": "high"}
    h = {**duty, "Idempotency-Key": "create-1"}
    first = client.post(f"{API}/incidents", json=body, headers=h)
    second = client.post(f"{API}/incidents", json=body, headers=h)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["location"] == first.headers["location"]
    assert count_incidents(client, duty) == 1

    other = client.post(f"{API}/incidents", json={**body, "severity": "low"}, headers=h)
    assert_problem(other, 422, "/problems/idempotency-mismatch")
    assert count_incidents(client, duty) == 1

    third = client.post(f"{API}/incidents", json=body, headers={**duty, "Idempotency-Key": "2"})
    assert third.status_code == 201 and third.json()["id"] != first.json()["id"]
    assert third.json()["reference"] != first.json()["reference"]
    assert count_incidents(client, duty) == 2

    # a 422 is an answer about the request itself: replayed, not re-run
    h = {**duty, "Idempotency-Key": "bad-1"}
    bad = client.post(f"{API}/incidents", json={"title": ""}, headers=h)
    assert bad.status_code == 422
    assert client.post(f"{API}/incidents", json={"title": ""}, headers=h).content == bad.content

    inc = open_incident(client, duty)
    h = {**duty, "Idempotency-Key": "assess-1"}
    url = f"{API}/incidents/{inc['id']}/transitions"
    first = client.post(url, json={"trigger": "assess", **ASSESS}, headers=h)
    second = client.post(url, json={"trigger": "assess", **ASSESS}, headers=h)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"] == '"2"'
    transitions = [e for e in timeline(client, duty, inc["id"]) if e["kind"] == "transition"]
    assert len(transitions) == 1
    assert get_incident(client, duty, inc["id"])["version"] == 2
    mismatch = client.post(url, json={"trigger": "assess", **ASSESS, "summary": "khác"},
                           headers=h)
    assert_problem(mismatch, 422, "/problems/idempotency-mismatch")
    # keys are per caller: another caller's request with the same key runs for real
    other = client.post(url, json={"trigger": "assess", **ASSESS},
                        headers={**make_key("duty_officer"), "Idempotency-Key": "assess-1"})
    check_refusal(other, "/problems/invalid-transition", "assessed",
                  ["reassess", "propose_task_force", "issue_response", "close"])


# -- 7. agency-scoped viewers -----------------------------------------------------------

def test_agency_scoped_viewer_sees_only_its_incidents(client: TestClient, duty: Headers,
                                                      make_key: MakeKey) -> None:
    lead = open_incident(client, duty, title="Bộ Y tế chủ trì", lead_agency="MOH")
    affected = open_incident(client, duty, title="Bộ Y tế liên quan", lead_agency="MOF",
                             affected_agencies=["MOH", "MIC"])
    other = open_incident(client, duty, title="Không liên quan", lead_agency="MOF")
    nobody = open_incident(client, duty, title="Chưa giao")
    viewer = make_key("viewer", agency="MOH")

    seen = list_ids(client, viewer)
    assert seen == [affected["id"], lead["id"]]
    assert list_ids(client, viewer, agency="MOF") == [affected["id"]]
    assert list_ids(client, viewer, q="khong lien quan") == []
    for inc in (lead, affected):
        assert get_incident(client, viewer, inc["id"])["allowed_triggers"] == []
        assert client.get(f"{API}/incidents/{inc['id']}/timeline", headers=viewer).status_code \
            == 200
    for inc in (other, nobody):
        for path in ("", "/timeline"):
            resp = client.get(f"{API}/incidents/{inc['id']}{path}", headers=viewer)
            assert_problem(resp, 404, "/problems/not-found")
    # a transition that makes MOH affected brings the incident into view at once
    fire(client, duty, other["id"], "assess", **ASSESS, affected_agencies=["MOH"])
    assert get_incident(client, viewer, other["id"])["affected_agencies"] == ["MOH"]
    assert other["id"] in list_ids(client, viewer)

    everyone = make_key("viewer")
    assert len(list_ids(client, everyone)) == 4
    assert get_incident(client, everyone, nobody["id"])["id"] == nobody["id"]

    # the incident's alerts and notifications: the same 404 as for an unknown incident
    for path in ("alerts", "notifications"):
        resp = client.get(f"{API}/incidents/{lead['id']}/{path}", headers=viewer)
        assert resp.status_code == 200 and resp.json()["items"] == [], resp.text
        resp = client.get(f"{API}/incidents/{nobody['id']}/{path}", headers=viewer)
        assert_problem(resp, 404, "/problems/not-found")
        assert client.get(f"{API}/incidents/{nobody['id']}/{path}",
                          headers=everyone).status_code == 200


# -- 8. search --------------------------------------------------------------------------

def test_search_ignores_diacritics_case_and_d_stroke(client: TestClient, duty: Headers) -> None:
    fake = open_incident(client, duty, title="Tin giả về Bảo hiểm xã hội")
    hotline = open_incident(client, duty, title="Đường dây nóng quá tải",
                            description="Người dân không gọi được")
    other = open_incident(client, duty, title="Phản ánh về giá điện",
                          description="Tin giả mạo hóa đơn")
    cases = {
        "tin gia": {fake["id"], other["id"]},
        "TIN GIẢ": {fake["id"], other["id"]},
        "tin giả về": {fake["id"]},
        "bao hiem": {fake["id"]},
        "BẢO HIỂM XÃ HỘI": {fake["id"]},
        "duong day": {hotline["id"]},
        "đường dây": {hotline["id"]},
        "ĐƯỜNG": {hotline["id"]},
        "nguoi dan": {hotline["id"]},  # description too
        "hoa don": {other["id"]},
        "gia dien": {other["id"]},
        "xa hoi ": {fake["id"]},
        "gi": {fake["id"], other["id"]},  # short queries: plain substring
        "đ": {hotline["id"], other["id"]},
        "Đ": {hotline["id"], other["id"]},
        "zz": set(),
        "khong co gi": set(),
        "%": set(),
        "_": set(),
        '"': set(),
        "tin* OR gia": set(),
    }
    for q, expected in cases.items():
        assert set(list_ids(client, duty, q=q)) == expected, q
    # combined with filters
    fire(client, duty, other["id"], "assess", **{**ASSESS, "severity": "high"})
    assert list_ids(client, duty, q="tin gia", state="assessed") == [other["id"]]
    assert list_ids(client, duty, q="tin gia", severity="medium") == [fake["id"]]
    assert list_ids(client, duty, q="tin gia", category="fake_news") == [other["id"]]
    assert list_ids(client, duty, q="tin gia", limit=1) == [other["id"]]
    resp = client.get(f"{API}/incidents", params={"q": "x" * 201}, headers=duty)
    assert_problem(resp, 422, "/problems/validation")


def _capture_queries(engine: Any, needle: str) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        if needle in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", before)
    return seen


def _bulk_incidents(client: TestClient, n: int) -> None:
    """Insert `n` filler incidents straight into the table (no timeline: this is about the
    query plan, not the workflow)."""
    now = datetime.now(UTC)
    words = ["giá xăng", "học phí", "bảo hiểm", "thời tiết", "giao thông", "y tế", "điện"]
    rows = [{
        "id": f"bulk-{i:06d}", "reference": f"INC-1999-{i:06d}", "workflow":
        "communication-incident", "workflow_version": 1, "state": State.detected,
        "severity": Severity.medium, "category": Category.other,
        "title": f"Phản ánh {words[i % 7]} số {i}",
        "search_text": search_text(f"Phản ánh {words[i % 7]} số {i}", None),
        "affected_agencies": [],
        "channels": [], "links": [], "tags": [], "escalation_level": 0, "overdue": False,
        "version": 1, "alert_count": 0, "created_by": "bulk", "created_at": now -
        timedelta(seconds=i), "updated_at": now, "state_changed_at": now, "timeline_seq": 0,
        "timeline_head": "0" * 64,
    } for i in range(n)]
    db = client.app.state.db  # type: ignore[attr-defined]

    async def insert() -> None:
        async with db.transaction() as session:
            await session.execute(sa.insert(Incident.__table__), rows)  # type: ignore[attr-defined]
        if not db.is_sqlite:  # fresh statistics, and the GIN pending list flushed
            async with db.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM ANALYZE incident")

    portal(client).call(insert)


def test_search_query_plan_uses_the_index(client: TestClient, duty: Headers,
                                          backend: str) -> None:
    _bulk_incidents(client, 2000)
    target = open_incident(client, duty, title="Tin giả về Đường dây nóng 1022")
    db = client.app.state.db  # type: ignore[attr-defined]
    seen = _capture_queries(db.read_engine, "search_text" if backend == "postgresql"
                            else "incident_fts")
    assert list_ids(client, duty, q="đường dây nóng") == [target["id"]]
    assert seen, "the list query was not captured"
    statement, params = seen[-1]

    async def explain() -> list[str]:
        async with db.read_engine.connect() as conn:
            if backend == "sqlite":
                rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
                return [" | ".join(str(c) for c in r) for r in rows]
            plan = ["-- as planned"]
            plan += [r[0] for r in await conn.exec_driver_sql(f"EXPLAIN {statement}", params)]
            # 2,000 rows is a small table: the planner may still prefer a sequential scan.
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan += ["-- with SET enable_seqscan = off"]
            plan += [r[0] for r in await conn.exec_driver_sql(f"EXPLAIN {statement}", params)]
            return plan

    plan = portal(client).call(explain)
    print(f"\n[{backend}] list query with q='đường dây nóng' over 2001 incidents:\n{statement}")
    print(f"[{backend}] parameters: {params}")
    print(f"[{backend}] plan:\n" + "\n".join(plan))
    text = "\n".join(plan)
    if backend == "sqlite":
        assert "VIRTUAL TABLE INDEX" in text and "incident_fts" in text, text
    else:
        forced = text.split("-- with SET enable_seqscan = off")[1]
        assert "Bitmap Index Scan on ix_hand_incident_search_trgm" in forced, text


def test_search_pages_are_the_same_however_common_the_word(client: TestClient,
                                                          duty: Headers) -> None:
    """A common word is answered from the newest rows, a less common one from a wider
    window, a rare one from the index: every way gives the same pages."""
    _bulk_incidents(client, 2000)  # bulk-i is i seconds old; words cycle every 7 rows

    def walk(q: str, limit: int = 50) -> list[str]:
        seen, cursor = [], None
        while True:
            params = {"q": q, "limit": limit, **({"cursor": cursor} if cursor else {})}
            resp = client.get(f"{API}/incidents", params=params, headers=duty)
            assert resp.status_code == 200, resp.text
            seen += [i["id"] for i in resp.json()["items"]]
            cursor = resp.json()["next_cursor"]
            if cursor is None:
                return seen

    every = [f"bulk-{i:06d}" for i in range(2000)]
    assert list_ids(client, duty, q="phan anh", limit=50) == every[:50]  # every row
    # one row in seven: 36 among the newest 250, a full page among the newest 2,000
    sevenths = [f"bulk-{i:06d}" for i in range(0, 2000, 7)]
    assert list_ids(client, duty, q="gia xang", limit=50) == sevenths[:50]
    assert walk("gia xang") == sevenths
    assert list_ids(client, duty, q="gia xang", limit=50, sort="created_at") == \
        sevenths[::-1][:50]
    # eleven rows in 2,000 (123 and 1230-1239): from the index
    rare = [f"bulk-{i:06d}" for i in range(2000) if str(i).startswith("123")]
    assert len(rare) == 11
    assert walk("so 123", limit=3) == rare
    assert walk("y te so 123", limit=3) == [i for i in rare if int(i[5:]) % 7 == 5] != []


def test_a_listed_incident_reads_as_it_does_alone(client: TestClient, duty: Headers) -> None:
    """The list reads rows without the ORM; every field must come out as GET /{id} gives it."""
    plain = open_incident(client, duty, title="Chỉ có tiêu đề")
    full = open_incident(client, duty, title="Tin giả về \"học phí\" — 100%",
                         description="Dòng 1\nDòng 2 😀", lead_agency="MOH",
                         affected_agencies=["MOF", "MOET"], channels=["facebook", "zalo"],
                         links=["https://example.vn/p/1?a=1&b=2"], tags=["học phí", "😀"])
    fire(client, duty, full["id"], "assess", **{**ASSESS, "severity": "high"})
    on_the_second = open_incident(client, duty, title="Đúng giây")
    db = client.app.state.db  # type: ignore[attr-defined]

    async def whole_second() -> None:  # a time with no microseconds, as SQL may store it
        at = datetime(2020, 5, 1, 1, 2, 3, tzinfo=UTC)
        async with db.transaction() as session:
            await session.execute(sa.update(Incident).where(
                col(Incident.id) == on_the_second["id"]).values(created_at=at, updated_at=at))

    portal(client).call(whole_second)
    listed = client.get(f"{API}/incidents", headers=duty).json()["items"]
    assert [i["id"] for i in listed] == [full["id"], plain["id"], on_the_second["id"]]
    for item in listed:
        alone = get_incident(client, duty, item["id"])
        alone.pop("allowed_triggers")
        assert item == alone
    assert listed[2]["created_at"] == "2020-05-01T01:02:03Z"
    assert listed[0]["assessment"]["summary"] == ASSESS["summary"]
    assert listed[0]["severity"] == "high" and listed[0]["overdue"] is False


# -- 9. list filters and pagination -----------------------------------------------------

def test_list_filters(client: TestClient, duty: Headers) -> None:
    a = open_incident(client, duty, title="A", severity="low", category="crisis",
                      lead_agency="MOH")
    b = open_incident(client, duty, title="B", severity="high", affected_agencies=["MOH"])
    c = open_incident(client, duty, title="C", severity="critical", category="crisis")
    d = open_incident(client, duty, title="D")
    fire(client, duty, b["id"], "assess", **{**ASSESS, "severity": "high"})
    fire(client, duty, c["id"], "close", resolution="dismissed", summary="x")

    assert list_ids(client, duty) == [d["id"], c["id"], b["id"], a["id"]]
    assert list_ids(client, duty, state="detected") == [d["id"], a["id"]]
    assert list_ids(client, duty, state=["assessed", "closed"]) == [c["id"], b["id"]]
    assert list_ids(client, duty, severity=["high", "critical"]) == [c["id"], b["id"]]
    assert list_ids(client, duty, severity="medium") == [d["id"]]
    assert list_ids(client, duty, category="crisis") == [c["id"], a["id"]]
    assert list_ids(client, duty, category="fake_news") == [b["id"]]  # set by assess
    assert list_ids(client, duty, agency="MOH") == [b["id"], a["id"]]
    assert list_ids(client, duty, agency="MOF") == []
    assert list_ids(client, duty, state="detected", agency="MOH", severity="low") == [a["id"]]
    assert list_ids(client, duty, overdue="true") == []
    assert len(list_ids(client, duty, overdue="false")) == 4

    b_at = datetime.fromisoformat(get_incident(client, duty, b["id"])["created_at"])
    assert list_ids(client, duty, created_after=b_at.isoformat()) == [d["id"], c["id"], b["id"]]
    assert list_ids(client, duty, created_before=b_at.isoformat()) == [a["id"]]
    local = b_at.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).isoformat()
    assert list_ids(client, duty, created_after=local, created_before=local) == []
    assert list_ids(client, duty, created_after=local) == [d["id"], c["id"], b["id"]]

    for params in ({"state": "open"}, {"severity": "urgent"}, {"category": "rumour"},
                   {"overdue": "maybe"}, {"created_after": "yesterday"},
                   {"created_before": "2026-01-01T00:00:00"}, {"sort": "title"}):
        resp = client.get(f"{API}/incidents", params=params, headers=duty)
        body = assert_problem(resp, 422, "/problems/validation")
        assert body["errors"][0]["loc"][0] == "query", body


def test_pagination_is_stable_without_duplicates_or_gaps(client: TestClient,
                                                         duty: Headers) -> None:
    made = [open_incident(client, duty, title=f"Sự cố {i}")["id"] for i in range(7)]
    newest_first = made[::-1]

    def walk(**params: Any) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            query = {**params, "limit": 3, **({"cursor": cursor} if cursor else {})}
            resp = client.get(f"{API}/incidents", params=query, headers=duty)
            assert resp.status_code == 200, resp.text
            pages.append([i["id"] for i in resp.json()["items"]])
            cursor = resp.json()["next_cursor"]
            if len(pages) == 1:  # a newer incident arriving mid-walk must not shift pages
                open_incident(client, duty, title="Mới đến")
            if cursor is None:
                return pages

    pages = walk()
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == newest_first
    pages = walk(sort="created_at")
    seen = [i for page in pages for i in page]
    assert seen[:7] == made  # oldest first; the late arrivals come at the end
    assert len(seen) == len(set(seen)) == 9

    resp = client.get(f"{API}/incidents", params={"limit": 200}, headers=duty)
    assert resp.status_code == 200 and resp.json()["next_cursor"] is None
    exact = client.get(f"{API}/incidents", params={"limit": 9}, headers=duty).json()
    assert len(exact["items"]) == 9 and exact["next_cursor"] is None
    for limit in (0, 201, -1, "ten"):
        resp = client.get(f"{API}/incidents", params={"limit": limit}, headers=duty)
        assert assert_problem(resp, 422, "/problems/validation")["errors"][0]["loc"] == [
            "query", "limit"]
    bad_cursors = ["garbage", "!!!", *(
        base64.urlsafe_b64encode(orjson.dumps(v)).decode()
        for v in (["x"], ["not a date", "x"], [1, 2], {"a": 1}, ["2026-01-01T00:00:00", "x"])
    )]
    for cursor in bad_cursors:
        for path in ("/incidents", "/proposals"):
            resp = client.get(f"{API}{path}", params={"cursor": cursor}, headers=duty)
            body = assert_problem(resp, 422, "/problems/validation")
            assert body["errors"][0]["loc"] == ["query", "cursor"], (path, cursor)


# -- 10. references ---------------------------------------------------------------------

def test_references_are_sequential_per_local_year(client: TestClient, duty: Headers) -> None:
    zone = ZoneInfo("Asia/Ho_Chi_Minh")
    year = datetime.now(zone).year
    refs = [open_incident(client, duty)["reference"] for _ in range(3)]
    assert refs == [f"INC-{year}-{n:06d}" for n in (1, 2, 3)]

    # 23:30 on 31 December, local time: still this year's sequence
    eve = datetime(year, 12, 31, 23, 30, tzinfo=zone)
    clock.advance(eve - datetime.now(UTC))
    assert open_incident(client, duty)["reference"] == f"INC-{year}-000004"
    # 00:30 on 1 January local is 17:30 UTC on 31 December: the new year, a new sequence
    new_year = datetime(year + 1, 1, 1, 0, 30, tzinfo=zone)
    assert new_year.astimezone(UTC).year == year
    clock.advance(new_year - clock.now())
    first = open_incident(client, duty)
    assert first["reference"] == f"INC-{year + 1}-000001"
    assert first["created_at"].startswith(f"{year}-12-31T17:30")
    assert open_incident(client, duty)["reference"] == f"INC-{year + 1}-000002"


@pytest.mark.parametrize("settings_env", [{"timezone": "UTC"}])
def test_reference_year_follows_the_configured_zone(client: TestClient, duty: Headers) -> None:
    year = datetime.now(UTC).year
    clock.advance(datetime(year, 12, 31, 17, 30, tzinfo=UTC) - datetime.now(UTC))
    assert open_incident(client, duty)["reference"] == f"INC-{year}-000001"


# -- 11. comments -----------------------------------------------------------------------

def test_comments_by_role_in_timeline_without_new_version(
        client: TestClient, duty: Headers, leader: Headers, admin: Headers,
        make_key: MakeKey) -> None:
    inc = assessed(client, duty)
    url = f"{API}/incidents/{inc['id']}/comments"
    for who, text in ((duty, "Đã liên hệ Bộ Y tế"), (leader, "Theo dõi sát"),
                      (admin, "Ghi nhận")):
        resp = client.post(url, json={"body": text}, headers=who)
        assert resp.status_code == 201, resp.text
        assert resp.json()["kind"] == "comment" and resp.json()["data"]["body"] == text
    for role in ("viewer", "monitor"):
        assert_problem(client.post(url, json={"body": "x"}, headers=make_key(role)), 403,
                       "/problems/forbidden")
    assert_problem(client.post(url, json={"body": ""}, headers=duty), 422,
                   "/problems/validation")
    assert_problem(client.post(f"{API}/incidents/nope/comments", json={"body": "x"},
                               headers=duty), 404, "/problems/not-found")
    after = get_incident(client, duty, inc["id"])
    assert after["version"] == inc["version"]
    assert after["updated_at"] == inc["updated_at"]
    comments = [e for e in timeline(client, duty, inc["id"]) if e["kind"] == "comment"]
    assert [c["data"]["body"] for c in comments] == ["Đã liên hệ Bộ Y tế", "Theo dõi sát",
                                                     "Ghi nhận"]
    assert comments[1]["actor"].endswith("Lãnh đạo")


# -- 12. the hash-chained timeline ------------------------------------------------------

def test_timeline_is_a_hash_chain_a_client_can_verify(client: TestClient, duty: Headers,
                                                      leader: Headers) -> None:
    inc, p = proposed(client, duty)
    decide(client, leader, p["id"], "approve", comment="Đồng ý")
    client.post(f"{API}/incidents/{inc['id']}/comments", json={"body": "Tiếng Việt có dấu"},
                headers=leader)
    entries = timeline(client, duty, inc["id"])
    assert [e["kind"] for e in entries] == ["created", "transition", "transition",
                                            "transition", "comment"]
    prev = "0" * 64
    for e in entries:
        content = {"id": e["id"], "incident_id": inc["id"], "seq": e["seq"],
                   "at": datetime.fromisoformat(e["at"]).isoformat(), "actor": e["actor"],
                   "kind": e["kind"], "from_state": e["from_state"], "to_state": e["to_state"],
                   "data": e["data"]}
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        assert e["hash"] == hashlib.sha256(prev.encode() + canonical).hexdigest(), e["seq"]
        prev = e["hash"]


def test_unvalidated_table_objects_match_validated_ones() -> None:
    """New incidents of a storm are built without validation; they must carry exactly what
    the validated constructor gives, defaults included, and refuse a missing field."""
    from datetime import UTC, datetime

    from app.core.types import row_of, unvalidated
    from app.incidents.models import Category, Incident, Severity, State

    now = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    values = {"id": "i-1", "reference": "INC-2026-000001", "workflow": "communication-incident",
              "workflow_version": 1, "state": State.detected, "severity": Severity.high,
              "category": Category.fake_news, "title": "Tin giả", "created_by": "t",
              "created_at": now, "updated_at": now, "state_changed_at": now}
    fast = unvalidated(Incident, values)
    assert row_of(fast) == row_of(Incident.model_validate(values))
    fast.alert_count += 1
    assert fast.alert_count == 1
    assert unvalidated(Incident, values).affected_agencies is not fast.affected_agencies
    with pytest.raises(TypeError, match="created_by"):
        unvalidated(Incident, {k: v for k, v in values.items() if k != "created_by"})
