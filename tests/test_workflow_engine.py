"""Workflow definitions: the loader's refusals (with file:line), `crisisflow workflows
check`, the /workflows API, and a second definition loaded beside the default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.auth.models import Role
from app.auth.service import Principal
from app.cli import cli
from app.core.errors import GuardFailed, ValidationProblem
from app.incidents import service
from app.incidents.models import IncidentCreate
from tests.factories import ASSESS, RESPONSE, assert_problem, fire, open_incident, portal
from workflows.engine import (
    DEFAULT_WORKFLOW,
    DEFINITIONS_DIR,
    DefinitionError,
    WorkflowRegistry,
    load_file,
)

API = "/api/v1"
DEFAULT_FILE = DEFINITIONS_DIR / "communication-incident.yaml"

MINI = """\
name: rapid-rebuttal
version: 1
description: Obvious fake news, rebutted at once.
initial: detected
final: [closed]
states:
  detected: {description: Seen}
  response_issued: {}
  closed: {}
payloads:
  issue_response:
    channel: {type: choice, required: true, values: [social_media, press_release]}
    statement: {type: text, required: true}
    spokesperson: {type: text, required: true}
  close:
    resolution: {type: choice, required: true, values: [resolved, dismissed]}
    summary: {type: text, required: true}
transitions:
  - trigger: issue_response
    source: [detected, response_issued]
    dest: response_issued
    guards: [multi_agency_has_lead]
    actions: [record_response]
    emits: [response.issued]
  - trigger: close
    source: [detected, response_issued]
    dest: closed
    actions: [record_closure]
    emits: [incident.closed]
  - trigger: reopen
    source: closed
    dest: detected
deadlines:
  first_response:
    starts_in: detected
    met_by: [issue_response, close]
    durations: {critical: 1h, high: 2h, medium: 4h, low: none}
"""


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The line number of the `nth` line containing `needle`."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) >= nth, f"{needle!r} not in the definition {nth} times"
    return found[nth - 1]


# -- the loader -------------------------------------------------------------------------

def test_the_shipped_definition_loads() -> None:
    registry = WorkflowRegistry.load()
    assert registry.names() == [DEFAULT_WORKFLOW]
    wf = registry.latest()
    assert (wf.name, wf.version, wf.initial, wf.final) == (DEFAULT_WORKFLOW, 1, "detected",
                                                          ("closed",))
    assert list(wf.states) == ["detected", "assessed", "task_force_proposed", "response_issued",
                               "closed"]
    assert wf.deadline_seconds("assess", "critical", {}) == 3600
    assert wf.deadline_seconds("first_response", "low", {}) is None
    assert wf.deadline_seconds("assess", "critical", {("assess", "critical"): 60}) == 60
    assert load_file(DEFAULT_FILE).source == str(DEFAULT_FILE)


# (what to change in MINI, the text to find the offending line by, what the message says)
BROKEN: list[tuple[str, Callable[[str], str], str, str]] = [
    ("unknown destination state",
     lambda t: t.replace("    dest: response_issued", "    dest: responded"),
     "dest: responded", "unknown state 'responded'"),
    ("unknown source state",
     lambda t: t.replace("source: [detected, response_issued]\n    dest: closed",
                         "source: [detected, answered]\n    dest: closed"),
     "source: [detected, answered]", "unknown state 'answered'"),
    ("unknown guard",
     lambda t: t.replace("guards: [multi_agency_has_lead]", "guards: [is_friday]"),
     "guards: [is_friday]", "unknown guard 'is_friday'"),
    ("unknown action",
     lambda t: t.replace("actions: [record_closure]", "actions: [shred_files]"),
     "actions: [shred_files]", "unknown action 'shred_files'"),
    ("unreachable state",
     lambda t: t.replace("  closed: {}\n", "  closed: {}\n  assessed: {}\n").replace(
         "transitions:\n", "transitions:\n  - {trigger: skip, source: assessed, dest: closed}\n"),
     "  assessed: {}", "state 'assessed' is unreachable"),
    ("dead-end state",
     lambda t: t.replace("  closed: {}\n", "  closed: {}\n  assessed: {}\n").replace(
         "transitions:\n", "transitions:\n  - {trigger: park, source: detected, dest: assessed}\n"),
     "  assessed: {}", "state 'assessed' is a dead end"),
    ("state the incident table cannot store",
     lambda t: t.replace("  closed: {}\n", "  closed: {}\n  limbo: {}\n").replace(
         "transitions:\n", "transitions:\n  - {trigger: park, source: detected, dest: limbo}\n"
                           "  - {trigger: leave, source: limbo, dest: closed}\n"),
     "  limbo: {}", "state 'limbo' cannot be stored"),
    ("bad duration",
     lambda t: t.replace("high: 2h", "high: soon"),
     "high: soon", "'soon' is not a duration"),
    ("unknown severity in durations",
     lambda t: t.replace("{critical: 1h,", "{critical: 1h, extreme: 5m,"),
     "extreme: 5m", "unknown severity 'extreme'"),
    ("deadline met_by an unknown trigger",
     lambda t: t.replace("met_by: [issue_response, close]", "met_by: [issue_response, done]"),
     "met_by: [issue_response, done]", "met_by names unknown trigger 'done'"),
    ("deadline starting in an unknown state",
     lambda t: t.replace("starts_in: detected", "starts_in: seen"),
     "starts_in: seen", "starts_in must name a state"),
    ("initial state that is not a state",
     lambda t: t.replace("initial: detected", "initial: new"),
     "initial: new", "initial state 'new' is not a state"),
    ("unknown payload type",
     lambda t: t.replace("statement: {type: text, required: true}",
                         "statement: {type: essay, required: true}"),
     "statement: {type: essay", "unknown payload type 'essay'"),
    ("payload for a trigger no transition has",
     lambda t: t.replace("payloads:\n", "payloads:\n  escalate:\n    level: {type: int}\n"),
     "  escalate:", "payload for unknown trigger 'escalate'"),
    ("a state that is not a mapping",
     lambda t: t.replace("  response_issued: {}", "  response_issued: yes"),
     "  response_issued: yes", "state 'response_issued' must be a mapping"),
    ("duplicate key",
     lambda t: t.replace("payloads:\n", "payloads:\n  close:\n    summary: {type: text}\n"),
     "  close:#2", "duplicate key 'close'"),
    ("invalid YAML",
     lambda t: t.replace("initial: detected", "initial: detected: again"),
     "initial: detected: again", "not valid YAML"),
    ("bad version",
     lambda t: t.replace("version: 1", "version: one"),
     "version: one", "version must be an integer"),
    ("missing transitions",
     lambda t: t.replace("transitions:", "moves:"),
     "name: rapid-rebuttal", "missing 'transitions'"),
]


@pytest.mark.parametrize(("case", "change", "needle", "message"), BROKEN,
                         ids=[b[0] for b in BROKEN])
def test_loader_refuses_bad_definitions_naming_file_and_line(
        tmp_path: Path, case: str, change: Callable[[str], str], needle: str,
        message: str) -> None:
    import app.incidents.actions  # noqa: F401  (registers actions and storable states)

    text = change(MINI)
    assert text != MINI, case
    path = write(tmp_path, text)
    with pytest.raises(DefinitionError) as refused:
        load_file(path)
    needle, _, nth = needle.partition("#")
    line = line_of(text, needle, int(nth or 1))
    assert str(refused.value).startswith(f"{path}:{line}: "), (str(refused.value), line)
    assert message in str(refused.value)
    # the registry refuses it the same way (start-up fails, not the first request)
    with pytest.raises(DefinitionError, match=f"{path}:{line}: "):
        WorkflowRegistry.load([path])


def test_mini_definition_is_valid_and_the_same_version_twice_is_refused(tmp_path: Path) -> None:
    wf = load_file(write(tmp_path, MINI))
    assert (wf.name, wf.version, list(wf.states)) == (
        "rapid-rebuttal", 1, ["detected", "response_issued", "closed"])
    with pytest.raises(DefinitionError, match="rapid-rebuttal v1 is defined twice"):
        WorkflowRegistry.load([write(tmp_path, MINI, "a.yaml"), write(tmp_path, MINI, "b.yaml")])


# -- crisisflow workflows check ---------------------------------------------------------

def test_workflows_check_prints_states_and_transitions(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["workflows", "check"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{DEFAULT_WORKFLOW} v1" in out and str(DEFAULT_FILE) in out
    assert ("states: detected (initial), assessed, task_force_proposed, response_issued, "
            "closed (final)") in out
    for line in ("assess: detected -> assessed",
                 "reassess: assessed, task_force_proposed, response_issued -> (same state)",
                 "propose_task_force: assessed -> task_force_proposed",
                 "withdraw_task_force: task_force_proposed -> assessed",
                 "approve_task_force: task_force_proposed -> (same state)",
                 "reject_task_force: task_force_proposed -> assessed",
                 "issue_response: assessed -> response_issued  [guards: "
                 "below_task_force_threshold, multi_agency_has_lead]",
                 "issue_response: task_force_proposed -> response_issued  [guards: "
                 "task_force_approved, multi_agency_has_lead]",
                 "issue_response: response_issued -> (same state)",
                 "close: response_issued -> closed",
                 "close: detected, assessed, task_force_proposed -> closed  [guards: "
                 "dismissal_only]",
                 "reopen: closed -> assessed"):
        assert line in out, line
    assert "1 definition(s) valid" in result.stderr

    mini = write(tmp_path, MINI, "mini.yaml")
    both = runner.invoke(cli, ["workflows", "check", str(DEFINITIONS_DIR), str(mini)])
    assert both.exit_code == 0, both.output
    assert "rapid-rebuttal v1" in both.stdout and f"{DEFAULT_WORKFLOW} v1" in both.stdout
    assert "2 definition(s) valid" in both.stderr


def test_workflows_check_fails_with_file_and_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_text = MINI.replace("guards: [multi_agency_has_lead]", "guards: [is_friday]")
    bad = write(tmp_path, bad_text, "bad.yaml")
    result = runner.invoke(cli, ["workflows", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:{line_of(bad_text, 'is_friday')}: " in result.stderr
    assert "unknown guard 'is_friday'" in result.stderr
    assert "Traceback" not in result.output

    # a directory holding one good and one bad file fails as a whole
    write(tmp_path, MINI, "good.yaml")
    result = runner.invoke(cli, ["workflows", "check", str(tmp_path)])
    assert result.exit_code == 1 and "bad.yaml" in result.stderr

    for args in ([str(tmp_path / "missing.yaml")], [str(tmp_path / "empty")]):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = runner.invoke(cli, ["workflows", "check", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: ")


# -- the /workflows API -----------------------------------------------------------------

# Every edge of workflow.md's lifecycle: (source, destination, trigger).
LIFECYCLE = [
    ("detected", "assessed", "assess"),
    ("assessed", "task_force_proposed", "propose_task_force"),
    ("assessed", "response_issued", "issue_response"),
    ("task_force_proposed", "response_issued", "issue_response"),
    ("task_force_proposed", "assessed", "reject_task_force"),
    ("task_force_proposed", "task_force_proposed", "approve_task_force"),
    ("task_force_proposed", "assessed", "withdraw_task_force"),
    ("assessed", "assessed", "reassess"),
    ("task_force_proposed", "task_force_proposed", "reassess"),
    ("response_issued", "response_issued", "reassess"),
    ("response_issued", "response_issued", "issue_response"),
    ("response_issued", "closed", "close"),
    ("detected", "closed", "close"),
    ("assessed", "closed", "close"),
    ("task_force_proposed", "closed", "close"),
    ("closed", "assessed", "reopen"),
]


def test_workflows_api(client: TestClient, make_key: Any) -> None:
    viewer = make_key("viewer")
    listed = client.get(f"{API}/workflows", headers=viewer)
    assert listed.status_code == 200
    assert [w["name"] for w in listed.json()["items"]] == [DEFAULT_WORKFLOW]
    assert listed.json()["next_cursor"] is None

    wf = client.get(f"{API}/workflows/{DEFAULT_WORKFLOW}", headers=viewer).json()
    assert (wf["name"], wf["version"], wf["initial"], wf["final"]) == (
        DEFAULT_WORKFLOW, 1, "detected", ["closed"])
    assert [s["name"] for s in wf["states"]] == ["detected", "assessed", "task_force_proposed",
                                                 "response_issued", "closed"]
    edges = {(src, t["dest"] if t["dest"] != "=" else src, t["trigger"])
             for t in wf["transitions"] for src in t["sources"]}
    assert edges == set(LIFECYCLE)
    internal = {t["trigger"] for t in wf["transitions"] if t["internal"]}
    assert internal == {"approve_task_force", "reject_task_force"}
    assert set(wf["guards"]) == {"below_task_force_threshold", "task_force_approved",
                                 "multi_agency_has_lead", "dismissal_only", "proposal_pending"}
    assert "Decree 244/2026" in wf["guards"]["multi_agency_has_lead"]
    assert wf["deadlines"]["assess"]["durations"] == {
        "low": 86400, "medium": 28800, "high": 7200, "critical": 3600}
    assert wf["deadlines"]["first_response"]["durations"]["low"] is None
    assert wf["deadlines"]["proposal_decision"]["starts_in"] == "task_force_proposed"
    assert "summary" in wf["payloads"]["assess"]["required"]

    diagram = client.get(f"{API}/workflows/{DEFAULT_WORKFLOW}/diagram", headers=viewer)
    assert diagram.status_code == 200
    assert diagram.headers["content-type"].startswith("text/plain")
    text = diagram.text
    assert text.startswith("stateDiagram-v2\n")
    assert "[*] --> detected" in text and "closed --> [*]" in text
    lines = [line.strip() for line in text.splitlines()]
    for src, dest, trigger in LIFECYCLE:
        assert any(line.startswith(f"{src} --> {dest}: {trigger}") for line in lines), (
            src, dest, trigger)

    for path in ("/workflows/nope", "/workflows/nope/diagram"):
        assert_problem(client.get(API + path, headers=viewer), 404, "/problems/not-found")


# -- a second definition beside the default ---------------------------------------------

def test_second_definition_is_served_beside_the_default(
        client: TestClient, make_key: Any, tmp_path: Path, settings: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.main import create_app

    registry = WorkflowRegistry.load([DEFINITIONS_DIR, write(tmp_path, MINI)])
    monkeypatch.setattr(WorkflowRegistry, "load", classmethod(lambda cls, paths=None: registry))
    with TestClient(create_app(settings), raise_server_exceptions=False) as second:
        viewer = make_key("viewer")
        listed = second.get(f"{API}/workflows", headers=viewer).json()["items"]
        assert [(w["name"], w["version"]) for w in listed] == [(DEFAULT_WORKFLOW, 1),
                                                               ("rapid-rebuttal", 1)]
        mini = second.get(f"{API}/workflows/rapid-rebuttal/diagram", headers=viewer).text
        assert "detected --> response_issued: issue_response [multi_agency_has_lead]" in mini
        # incidents opened over the API still start in the default workflow
        duty = make_key("duty_officer")
        inc = open_incident(second, duty)
        assert (inc["workflow"], inc["workflow_version"]) == (DEFAULT_WORKFLOW, 1)
        fire(second, duty, inc["id"], "assess", **ASSESS)


V2 = (DEFAULT_FILE.read_text("utf-8").replace("version: 1", "version: 2", 1)
      .replace("task_force_threshold: high", "task_force_threshold: critical"))


def test_each_incident_keeps_the_workflow_and_version_it_started_with(
        client: TestClient, make_key: Any, tmp_path: Path) -> None:
    db = client.app.state.db  # type: ignore[attr-defined]
    base = client.app.state.env  # type: ignore[attr-defined]
    before_upgrade = base  # only communication-incident v1
    after_upgrade = replace(base, workflows=WorkflowRegistry.load(
        [DEFINITIONS_DIR, write(tmp_path, V2, "ci-v2.yaml"), write(tmp_path, MINI, "mini.yaml")]))
    assert after_upgrade.workflows.latest().version == 2
    duty = Principal(key_id="k-test", name="tester", role=Role.duty_officer, agency=None,
                     signing_secret=None)

    async def open_three() -> tuple[str, str, str]:
        async with db.transaction() as session:
            old = await service.create(session, before_upgrade, IncidentCreate(title="Cũ"), "t")
        async with db.transaction() as session:
            new = await service.create(session, after_upgrade, IncidentCreate(title="Mới"), "t")
            mini = await service.create(session, after_upgrade,
                                        IncidentCreate(title="Bác bỏ nhanh"), "t",
                                        workflow="rapid-rebuttal")
        return old.id, new.id, mini.id

    old_id, new_id, mini_id = portal(client).call(open_three)

    async def fire_as(incident_id: str, trigger: str, body: dict[str, Any]) -> Any:
        async with db.transaction() as session:
            inc, _ = await service.fire(session, after_upgrade, incident_id, trigger, body, duty)
            return (inc.workflow, inc.workflow_version, inc.state.value)

    def run(incident_id: str, trigger: str, body: dict[str, Any]) -> Any:
        return portal(client).call(fire_as, incident_id, trigger, body)

    high = {**ASSESS, "severity": "high"}
    assert run(old_id, "assess", high) == (DEFAULT_WORKFLOW, 1, "assessed")
    assert run(new_id, "assess", high) == (DEFAULT_WORKFLOW, 2, "assessed")
    # v1 (threshold high) still needs a task force for `high`; v2 (threshold critical) not
    with pytest.raises(GuardFailed) as refused:
        run(old_id, "issue_response", RESPONSE)
    assert refused.value.extra["rule"] == "below_task_force_threshold"
    assert run(new_id, "issue_response", RESPONSE) == (DEFAULT_WORKFLOW, 2, "response_issued")

    # the second definition: its own transitions and payloads, the same storage
    assert run(mini_id, "issue_response", {**RESPONSE, "channel": "social_media"}) == (
        "rapid-rebuttal", 1, "response_issued")
    with pytest.raises(ValidationProblem, match="unknown trigger 'assess'"):
        run(mini_id, "assess", ASSESS)
    with pytest.raises(ValidationProblem):  # press_conference is not a channel of this one
        run(mini_id, "issue_response", {**RESPONSE, "channel": "press_conference"})
    assert run(mini_id, "close", {"resolution": "resolved", "summary": "Xong"}) == (
        "rapid-rebuttal", 1, "closed")

    # The app under test loaded communication-incident v1 only: every incident stays
    # readable with the workflow it recorded; one whose workflow is not loaded at all can
    # be read (nothing to fire) but not driven.
    officer = make_key("duty_officer")
    shown = [client.get(f"{API}/incidents/{i}", headers=officer) for i in (old_id, new_id,
                                                                          mini_id)]
    assert [r.status_code for r in shown] == [200, 200, 200]
    assert [(s.json()["workflow"], s.json()["workflow_version"], s.json()["state"])
            for s in shown] == [(DEFAULT_WORKFLOW, 1, "assessed"),
                                (DEFAULT_WORKFLOW, 2, "response_issued"),
                                ("rapid-rebuttal", 1, "closed")]
    assert shown[2].json()["allowed_triggers"] == []
    body = assert_problem(fire(client, officer, mini_id, "reopen", None, reason="x"), 409,
                          "/problems/conflict")
    assert "rapid-rebuttal v1" in body["detail"]
