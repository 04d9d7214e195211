"""Every database test runs twice: on SQLite and on PostgreSQL.

The schema is built by running the migrations once per backend and session; each test then
gets a clean copy (SQLite: a copied file; PostgreSQL: a private database cloned from a
migrated template). With CRISISFLOW_REQUIRE_POSTGRES=1 an unreachable server fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.core.clock import clock
from app.core.config import Settings
from app.core.migrate import upgrade
from tests.factories import portal

PG_URL = os.environ.get(
    "CRISISFLOW_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("CRISISFLOW_REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin_dsn() -> str:
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def _pg_url_for(dbname: str) -> str:
    base = PG_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(_pg_admin_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


class Templates:
    """Migrated template databases, built lazily once per session."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sqlite: Path | None = None
        self.pg: str | None = None
        self.pg_error: str | None = None
        self.pg_checked = False

    def sqlite_template(self) -> Path:
        if self.sqlite is None:
            path = self.tmp / "template.db"
            upgrade(f"sqlite:///{path}")
            self.sqlite = path
        return self.sqlite

    def pg_template(self) -> str:
        if not self.pg_checked:
            self.pg_checked = True
            self.pg_error = _pg_reachable()
            if self.pg_error is None:
                name = f"cf_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
                with psycopg.connect(_pg_admin_dsn(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                upgrade(_pg_url_for(name))
                self.pg = name
        if self.pg is None:
            message = f"PostgreSQL unreachable at {PG_URL}: {self.pg_error}"
            if REQUIRE_PG:
                pytest.fail(message)
            pytest.skip(message)
        return self.pg

    def drop(self) -> None:
        if self.pg:
            _drop_pg(self.pg)


def _drop_pg(name: str) -> None:
    with psycopg.connect(_pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    t = Templates(tmp_path_factory.mktemp("templates"))
    yield t
    t.drop()


def fresh_database(templates: Templates, backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        path = tmp_path / "crisisflow.db"
        shutil.copy(templates.sqlite_template(), path)
        yield f"sqlite:///{path}"
        return
    template = templates.pg_template()
    name = f"cf_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _pg_url_for(name)
    finally:
        _drop_pg(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(templates: Templates, backend: str, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(templates, backend, tmp_path)


@pytest.fixture
def settings_env() -> dict[str, Any]:
    """Extra settings for a test; override this fixture to change them."""
    return {}


@pytest.fixture
def settings(db_url: str, settings_env: dict[str, Any]) -> Settings:
    values = {"log_json": False, "access_log": False, **settings_env}
    return Settings(database_url=db_url, **values)


@pytest.fixture(autouse=True)
def _reset_clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


@pytest.fixture
def app(settings: Settings) -> Any:
    from app.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        portal(c).call(_seed, app.state.db)
        yield c


async def _seed(db: Any) -> None:
    from app.agencies.models import AgencyCreate
    from app.agencies.service import seed_records, upsert_many

    async with db.transaction() as session:
        await upsert_many(session, [AgencyCreate.model_validate(r) for r in seed_records()])


@pytest.fixture
def make_key(client: TestClient) -> Callable[..., dict[str, str]]:
    """make_key(role, agency=None, signing_secret=None) -> auth headers for a new key."""
    from app.auth.models import ApiKeyCreate
    from app.auth.service import create_key

    def make(role: str, agency: str | None = None, signing_secret: str | None = None,
             name: str | None = None) -> dict[str, str]:
        async def run() -> Any:
            async with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
                return await create_key(
                    session,
                    ApiKeyCreate(name=name or f"{role}-{uuid.uuid4().hex[:6]}", role=role,  # type: ignore[arg-type]
                                 agency=agency, signing_secret=signing_secret),
                )

        created = portal(client).call(run)
        return {"Authorization": f"Bearer {created.key}"}

    return make


def run_async(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


# One key per role, for tests that act as that role (names show up in timelines).
@pytest.fixture
def admin(make_key: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_key("admin", name="Quản trị")


@pytest.fixture
def duty(make_key: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_key("duty_officer", name="Trực ban")


@pytest.fixture
def leader(make_key: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_key("leader", name="Lãnh đạo")


@pytest.fixture
def monitor(make_key: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_key("monitor", name="Hệ thống giám sát")
