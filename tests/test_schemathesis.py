"""Schemathesis against the served OpenAPI of a live app, with an admin key: every operation,
a bounded number of examples. No 5xx, responses conform to the documented schemas, and every
error is problem+json."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from tests.conftest import BACKENDS, Templates, fresh_database
from tests.factories import live_server

schema = schemathesis.openapi.from_dict(create_app(Settings(log_json=False)).openapi())


@schemathesis.check
def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        media = response.headers.get("content-type", [""])
        media = media[0] if isinstance(media, list) else media
        assert media.startswith("application/problem+json"), (
            f"{response.status_code} answered with {media!r}")
        body = response.json()
        for field in ("type", "title", "status", "detail"):
            assert field in body, f"problem without {field}"
    return None


@pytest.fixture(scope="module", params=BACKENDS)
def target(request: pytest.FixtureRequest, templates: Templates,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    databases = fresh_database(templates, str(request.param), tmp)
    url = next(databases)
    settings_ = Settings(database_url=url, log_json=False, access_log=False,
                         ingest_rate_limit=0)
    app = create_app(settings_)
    with live_server(app) as base:
        portal_headers = _seed(app, base)
        yield {"base": base, "headers": portal_headers}
    next(databases, None)


def _seed(app: Any, base: str) -> dict[str, str]:
    import asyncio

    from app.agencies.models import AgencyCreate
    from app.agencies.service import seed_records, upsert_many
    from app.auth.models import ApiKeyCreate, Role
    from app.auth.service import create_key

    async def run() -> str:
        from app.bootstrap import open_database

        db = open_database(app.state.settings, pool_size=1)
        try:
            async with db.transaction() as session:
                await upsert_many(session, [AgencyCreate.model_validate(r)
                                            for r in seed_records()])
                created = await create_key(session, ApiKeyCreate(name="fuzz", role=Role.admin))
            return created.key
        finally:
            await db.dispose()

    key = asyncio.run(run())
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers) as http:
        for i in range(3):
            resp = http.post("/api/v1/incidents", json={
                "title": f"Tin giả số {i}", "affected_agencies": ["MOH"]})
            assert resp.status_code == 201
    return headers


@schema.include(path_regex="^/(?!api/v1/events/stream|metrics|docs).*").parametrize()
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_conforms(case: Any, target: dict[str, Any]) -> None:
    case.headers = {**(case.headers or {}), **target["headers"],
                    "Idempotency-Key": uuid.uuid4().hex}
    case.call_and_validate(
        base_url=target["base"],
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance, errors_are_problem_json],
    )


