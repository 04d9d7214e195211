"""Foundation: settings, auth outcomes, problem+json, agencies, readiness."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from app.core.config import SettingsError, load_settings
from tests.factories import PROBLEM, assert_problem, portal

# -- settings ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("CRISISFLOW_DATABASE_URL", "mysql://x", "CRISISFLOW_DATABASE_URL"),
        ("CRISISFLOW_TIMEZONE", "Mars/Olympus", "CRISISFLOW_TIMEZONE"),
        ("CRISISFLOW_SLA_OVERRIDES", "assess.critical=soon", "CRISISFLOW_SLA_OVERRIDES"),
        ("CRISISFLOW_SLA_OVERRIDES", "nap.critical=1h", "unknown clock"),
        ("CRISISFLOW_INGEST_RATE_LIMIT", "-5", "CRISISFLOW_INGEST_RATE_LIMIT"),
        ("CRISISFLOW_SMTP_PORT", "seventy", "CRISISFLOW_SMTP_PORT"),
        ("CRISISFLOW_SMTP_PASSWORD", "mật-khẩu", "ASCII"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str,
                                        needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value)
    assert var in str(err.value)


def test_defaults_are_sqlite_under_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRISISFLOW_DATABASE_URL", raising=False)
    s = load_settings()
    assert s.database_url == "sqlite:///./var/crisisflow.db"
    assert s.communications_authority == "MIC"
    assert s.group_by == ["topic"]


def test_plain_postgres_url_uses_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISFLOW_DATABASE_URL", "postgresql://u@h/db")
    assert load_settings().database_url == "postgresql+psycopg://u@h/db"


# -- auth -------------------------------------------------------------------------------

def test_missing_key_is_401_with_challenge(client: TestClient) -> None:
    resp = client.get("/api/v1/agencies")
    body = assert_problem(resp, 401, "/problems/unauthenticated")
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in body["detail"]


def test_unknown_key_is_401(client: TestClient) -> None:
    resp = client.get("/api/v1/agencies", headers={"Authorization": "Bearer cf_nope"})
    assert_problem(resp, 401, "/problems/unauthenticated")
    assert resp.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    from app.auth.service import revoke_key

    headers = make_key("viewer", name="revokable")
    assert client.get("/api/v1/agencies", headers=headers).status_code == 200

    async def revoke() -> None:
        async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            from sqlmodel import select

            from app.auth.models import ApiKey

            row = (await session.exec(select(ApiKey).where(ApiKey.name == "revokable"))).one()
            await revoke_key(session, row.id)

    portal(client).call(revoke)
    client.app.state.key_cache.clear()  # type: ignore[attr-defined]
    assert_problem(client.get("/api/v1/agencies", headers=headers), 401,
                   "/problems/unauthenticated")


def test_wrong_role_is_403_and_right_role_passes(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    monitor = make_key("monitor")
    assert_problem(client.get("/api/v1/agencies", headers=monitor), 403, "/problems/forbidden")
    viewer = make_key("viewer")
    assert client.get("/api/v1/agencies", headers=viewer).status_code == 200
    body = {"code": "TEST-1", "name": "Cơ quan thử", "kind": "other"}
    assert_problem(client.post("/api/v1/agencies", json=body, headers=viewer), 403,
                   "/problems/forbidden")
    admin = make_key("admin")
    assert client.post("/api/v1/agencies", json=body, headers=admin).status_code == 201


def test_non_bearer_scheme_is_401(client: TestClient) -> None:
    resp = client.get("/api/v1/agencies", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(resp, 401, "/problems/unauthenticated")


# -- problem+json -----------------------------------------------------------------------

def test_unknown_route_is_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 404, "/problems/not-found")


def test_wrong_method_is_405_problem(client: TestClient) -> None:
    resp = client.delete("/healthz")
    assert resp.status_code == 405
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert "GET" in resp.headers.get("allow", "")


def test_validation_error_is_422_problem_with_errors(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    admin = make_key("admin")
    resp = client.post("/api/v1/agencies", json={"code": "X1", "kind": "castle"}, headers=admin)
    body = assert_problem(resp, 422, "/problems/validation")
    locs = [tuple(e["loc"]) for e in body["errors"]]
    assert ("body", "name") in locs and ("body", "kind") in locs
    assert all("msg" in e for e in body["errors"])


def test_malformed_json_is_422_not_500(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    admin = make_key("admin")
    resp = client.post("/api/v1/agencies", content=b"{not json",
                       headers={**admin, "Content-Type": "application/json"})
    assert_problem(resp, 422, "/problems/validation")


def test_unexpected_exception_is_generic_500(app, make_key, client: TestClient,  # type: ignore[no-untyped-def]
                                             caplog: pytest.LogCaptureFixture) -> None:
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.include_router(router)
    resp = client.get("/boom")
    body = assert_problem(resp, 500, "/problems/internal")
    assert "secret internal detail" not in resp.text
    assert "RuntimeError" not in body["detail"]
    assert any("secret internal detail" in (r.exc_text or str(r.exc_info)) for r in caplog.records)


def test_oversized_body_is_413(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    admin = make_key("admin")
    big = json.dumps({"code": "BIG", "name": "x" * (1024 * 1024 + 10), "kind": "other"})
    assert_problem(client.post("/api/v1/agencies", content=big,
                               headers={**admin, "Content-Type": "application/json"}),
                   413, "/problems/payload-too-large")


# -- agencies ---------------------------------------------------------------------------

def test_seed_holds_every_row_of_the_shared_data(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    import csv

    viewer = make_key("viewer")
    codes, cursor = {}, None
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/agencies", params=params, headers=viewer).json()
        codes.update({a["code"]: a for a in page["items"]})
        cursor = page["next_cursor"]
        if not cursor:
            break
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "agencies"
    for name in ("central.csv", "provinces.csv"):
        with (data / name).open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                assert codes[row["code"]]["name"] == row["name_vi"]
                assert codes[row["code"]]["name_en"] == row["name_en"]
                assert codes[row["code"]]["kind"] == row["kind"]
    for must in ("VPCP", "MIC", "MOJ", "MOHA", "MOFA", "MOF", "MPS", "MCST", "MOST", "VTV",
                 "VOV", "VNA"):
        assert must in codes
    assert sum(1 for a in codes.values() if a["kind"] == "province") == 34
    assert list(codes) == sorted(codes)


def test_agency_crud_round_trips_vietnamese(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    admin, viewer = make_key("admin"), make_key("viewer")
    body = {
        "code": "SO-TTTT-HN", "name": "Sở Văn hóa và Thể thao Hà Nội", "kind": "other",
        "parent": "P-HANOI",
        "spokesperson": {"name": "Nguyễn Văn Ánh", "title": "Phó Giám đốc",
                         "phone": "+84 24 0000 0000", "email": "phatngon@example.vn"},
    }
    resp = client.post("/api/v1/agencies", json=body, headers=admin)
    assert resp.status_code == 201
    assert resp.headers["location"] == "/api/v1/agencies/SO-TTTT-HN"
    got = client.get("/api/v1/agencies/SO-TTTT-HN", headers=viewer).json()
    assert got["name"] == "Sở Văn hóa và Thể thao Hà Nội"
    assert got["spokesperson"]["name"] == "Nguyễn Văn Ánh"
    assert_problem(client.post("/api/v1/agencies", json=body, headers=admin), 409,
                   "/problems/conflict")
    put = client.put("/api/v1/agencies/SO-TTTT-HN", headers=admin,
                     json={**body, "name": "Sở mới", "spokesperson": None})
    assert put.status_code == 200 and put.json()["name"] == "Sở mới"
    assert put.json()["spokesperson"] is None
    created = client.put("/api/v1/agencies/NEW-1", headers=admin,
                         json={"name": "Mới", "kind": "press"})
    assert created.status_code == 201
    assert_problem(client.put("/api/v1/agencies/NEW-2", headers=admin,
                              json={"code": "OTHER", "name": "x", "kind": "press"}),
                   422, "/problems/validation")
    bad_parent = client.post("/api/v1/agencies", headers=admin,
                             json={"code": "ORPHAN", "name": "x", "kind": "other",
                                   "parent": "NOPE"})
    assert "NOPE" in assert_problem(bad_parent, 422, "/problems/validation")["detail"]
    assert_problem(client.get("/api/v1/agencies/NOPE", headers=viewer), 404,
                   "/problems/not-found")


def test_agency_list_cursor_rejects_garbage(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    viewer = make_key("viewer")
    assert_problem(client.get("/api/v1/agencies?cursor=@@@", headers=viewer), 422,
                   "/problems/validation")
    assert_problem(client.get("/api/v1/agencies?limit=0", headers=viewer), 422,
                   "/problems/validation")
    assert_problem(client.get("/api/v1/agencies?limit=201", headers=viewer), 422,
                   "/problems/validation")


# -- operations -------------------------------------------------------------------------

def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").text == "ok"
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.json()["status"] == "ready"
    assert resp.json()["outbox_backlog"] == 0
    assert "crisisflow_http_requests" in client.get("/metrics").text


def test_request_id_is_echoed(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
        "x-request-id"] == "abc-123"
    assert client.get("/healthz").headers["x-request-id"]


def test_openapi_describes_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "/api/v1/agencies" in doc["paths"]
    assert client.get("/docs").status_code == 200


def test_no_route_dependency_runs_on_a_worker_thread(app) -> None:  # type: ignore[no-untyped-def]
    # FastAPI runs a plain-function dependency in its thread pool: a hand-off and a wait for
    # the GIL on every request, which a listing under load paid a sixth of its time for.
    import inspect

    from fastapi.routing import APIRoute

    def plain(dependant) -> list[str]:  # type: ignore[no-untyped-def]
        found = []
        for dep in dependant.dependencies:
            call = dep.call
            if call is not None and not (inspect.iscoroutinefunction(call)
                                         or inspect.isasyncgenfunction(call)):
                found.append(getattr(call, "__qualname__", repr(call)))
            found += plain(dep)
        return found

    def routes(items: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
        for route in items:
            # FastAPI keeps an included router's routes behind a wrapper of its own.
            included = getattr(route, "original_router", None)
            yield from routes(included.routes) if included is not None else [route]

    checked = [route for route in routes(app.router.routes) if isinstance(route, APIRoute)]
    assert len(checked) > 30
    offenders = {route.path: plain(route.dependant) for route in checked}
    assert {path: deps for path, deps in offenders.items() if deps} == {}
