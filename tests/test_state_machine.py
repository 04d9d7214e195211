"""A Hypothesis state machine drives the workflow through the API with random triggers,
payloads, proposal decisions and roles, and checks the invariants after every step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import col

from app.incidents.models import Proposal, Response, TimelineEntry
from app.incidents.timeline import first_broken_link
from tests.factories import portal

STATES = {"detected", "assessed", "task_force_proposed", "response_issued", "closed"}
ROLES = ["duty", "duty2", "leader", "admin", "viewer"]
# Most steps are taken by the roles that may take them, so that long valid paths happen.
ACTORS = ["duty"] * 4 + ["duty2", "admin", "leader", "viewer"]
DECIDERS = ["leader"] * 3 + ["admin", "duty", "viewer"]
severities = st.sampled_from(["low", "medium", "high", "critical"])
categories = st.sampled_from(["fake_news", "negative_sentiment", "policy_misunderstanding",
                              "crisis", "other"])
text = st.text(alphabet="abc đường tin giả ", min_size=1, max_size=20).filter(str.strip)


def payloads(duplicate_target: str) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    return {
        "assess": st.fixed_dictionaries({"severity": severities, "category": categories,
                                         "summary": text}),
        "reassess": st.fixed_dictionaries({"severity": severities, "summary": text}),
        "propose_task_force": st.fixed_dictionaries({
            "lead_agency": st.sampled_from(["MOH", "MOJ"]),
            "members": st.lists(st.sampled_from(["MIC", "MPS", "MOF"]), min_size=1,
                                max_size=2, unique=True),
            "mandate": text, "rationale": text}),
        "withdraw_task_force": st.fixed_dictionaries({"reason": text}),
        "issue_response": st.fixed_dictionaries({
            "channel": st.sampled_from(["press_release", "social_media", "other"]),
            "statement": text, "spokesperson": text}),
        "close": st.sampled_from(["resolved", "dismissed", "duplicate"]).map(
            lambda r: {"resolution": r, "summary": "xong",
                       **({"duplicate_of": duplicate_target} if r == "duplicate" else {})}),
        "reopen": st.fixed_dictionaries({"reason": text}),
    }


def test_workflow_invariants_hold_under_random_use(
        client: TestClient, make_key: Callable[..., dict[str, str]]) -> None:
    keys = {"duty": make_key("duty_officer"), "duty2": make_key("duty_officer"),
            "leader": make_key("leader"), "admin": make_key("admin"),
            "viewer": make_key("viewer")}
    other = client.post("/api/v1/incidents", json={"title": "Bản gốc"},
                        headers=keys["duty"]).json()["id"]
    strategies = payloads(other)

    class Workflow(RuleBasedStateMachine):
        @initialize(title=text, affected=st.lists(st.sampled_from(["MOH", "MOJ", "MIC"]),
                                                  max_size=2, unique=True))
        def open(self, title: str, affected: list[str]) -> None:
            resp = client.post("/api/v1/incidents", headers=keys["duty"],
                               json={"title": title, "affected_agencies": affected})
            assert resp.status_code == 201, resp.text
            self.id = resp.json()["id"]
            self.writes = 0

        def _count(self, resp: Any, allowed: set[int]) -> None:
            assert resp.status_code in allowed, (resp.status_code, resp.text)
            assert resp.status_code < 500
            if resp.status_code >= 400:
                assert resp.headers["content-type"].startswith("application/problem+json")
            if resp.status_code == 200:
                self.writes += 1

        @rule(trigger=st.sampled_from(list(strategies)), role=st.sampled_from(ACTORS),
              data=st.data())
        def fire(self, trigger: str, role: str, data: st.DataObject) -> None:
            body = {"trigger": trigger, **data.draw(strategies[trigger])}
            resp = client.post(f"/api/v1/incidents/{self.id}/transitions", json=body,
                               headers=keys[role])
            self._count(resp, {200, 403, 409, 422})
            if role in ("leader", "viewer"):
                assert resp.status_code == 403

        @rule(approve=st.booleans(), role=st.sampled_from(DECIDERS))
        def decide(self, approve: bool, role: str) -> None:
            pending = client.get(f"/api/v1/proposals?status=pending&incident={self.id}",
                                 headers=keys["admin"]).json()["items"]
            if not pending:
                return
            verb = "approve" if approve else "reject"
            resp = client.post(f"/api/v1/proposals/{pending[0]['id']}/{verb}",
                               json={"comment": "ý kiến"}, headers=keys[role])
            self._count(resp, {200, 403, 409})
            if role in ("duty", "duty2", "viewer"):
                assert resp.status_code == 403

        @rule(lead=st.sampled_from([None, "MOH", "MOJ"]), role=st.sampled_from(ROLES))
        def patch(self, lead: str | None, role: str) -> None:
            before = self._get()["version"]
            resp = client.patch(f"/api/v1/incidents/{self.id}", json={"lead_agency": lead},
                                headers=keys[role])
            assert resp.status_code in {200, 403}, resp.text
            if resp.status_code == 200 and resp.json()["version"] != before:
                self.writes += 1

        def _get(self) -> dict[str, Any]:
            resp = client.get(f"/api/v1/incidents/{self.id}", headers=keys["viewer"])
            assert resp.status_code == 200
            data: dict[str, Any] = resp.json()
            return data

        @invariant()
        def holds(self) -> None:
            if not hasattr(self, "id"):
                return
            inc = self._get()
            assert inc["state"] in STATES
            assert inc["version"] == self.writes + 1
            if inc["state"] == "closed":
                assert inc["closure"] is not None
            facts = portal(client).call(_facts, client, self.id)
            if inc["state"] == "response_issued":
                assert facts["responses"], "response_issued without a response"
            # The response that moved the incident into response_issued needs an approved
            # task force at high severity. A follow-up statement (response_issued →
            # response_issued) has only the multi-agency guard in workflow.md, also after a
            # reassessment raised the severity, so it is not held to this.
            for rid, severity, proposal_status, decided, issued in facts["responses"]:
                if severity in ("high", "critical") and rid not in facts["follow_ups"]:
                    assert proposal_status == "approved" and decided <= issued
            assert facts["chain_ok"], facts["chain_error"]

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None,
        suppress_health_check=list(HealthCheck)))


async def _facts(client: TestClient, incident_id: str) -> dict[str, Any]:
    app: Any = client.app
    async with app.state.db.read() as session:
        rows = (await session.execute(
            sa.select(col(Response.id), col(Response.severity_at_issue), col(Proposal.status),
                      col(Proposal.decided_at), col(Response.issued_at))
            .outerjoin(Proposal, col(Proposal.id) == Response.approved_proposal_id)
            .where(col(Response.incident_id) == incident_id)
        )).all()
        entries = (await session.exec(
            sa.select(TimelineEntry).where(col(TimelineEntry.incident_id) == incident_id)
            .order_by(col(TimelineEntry.seq)))).scalars().all()
        broken = first_broken_link(entries)
        follow_ups = {e.data.get("response_id") for e in entries
                      if e.from_state == "response_issued" and e.data.get("response_id")}
    return {"responses": [tuple(r) for r in rows], "follow_ups": follow_ups,
            "chain_ok": broken is None, "chain_error": broken and broken[1]}
