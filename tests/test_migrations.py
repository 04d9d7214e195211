"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlmodel import SQLModel

import app.models  # noqa: F401
from app.core.config import Settings
from app.core.db import make_sync_engine
from app.core.migrate import head_revisions, include_object, upgrade
from tests.factories import assert_problem, free_port


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_object": include_object})
            diff = compare_metadata(ctx, SQLModel.metadata)
            assert ctx.get_current_heads() == tuple(head_revisions())
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite pages have no fillfactor
def test_incident_pages_leave_room_for_updated_rows_on_postgresql(db_url: str) -> None:
    """Storage options are beyond autogenerate's comparison: checked here, both ways."""
    from alembic import command

    from app.core.migrate import alembic_config

    def options() -> list[str] | None:
        engine = make_sync_engine(db_url)
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql(  # type: ignore[no-any-return]
                    "SELECT reloptions FROM pg_class WHERE relname = 'incident'").scalar()
        finally:
            engine.dispose()

    assert options() == ["fillfactor=70"]
    command.downgrade(alembic_config(db_url), "0007")
    assert options() is None
    upgrade(db_url)
    assert options() == ["fillfactor=70"]


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)  # already at head: nothing to do, no error
    upgrade(db_url)


def _ready(settings: Settings) -> Any:
    from app.main import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        return c.get("/readyz"), c.get("/healthz")


def test_readyz_is_503_when_the_schema_is_not_migrated(tmp_path: Path) -> None:
    resp, health = _ready(Settings(database_url=f"sqlite:///{tmp_path}/empty.db",
                                   log_json=False))
    body = assert_problem(resp, 503, "/problems/unavailable")
    assert "migration" in body["detail"]
    assert health.status_code == 200  # alive, just not ready


@pytest.mark.parametrize("backend", ["postgresql"])
def test_readyz_is_503_when_the_database_is_down(backend: str) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    resp, health = _ready(Settings(database_url=url, log_json=False))
    body = assert_problem(resp, 503, "/problems/unavailable")
    assert "unreachable" in body["detail"]
    assert health.status_code == 200


def test_concurrent_upgrades_do_not_collide(db_url: str, backend: str) -> None:
    """Replicas starting at once all migrate; the schema ends at head, no error."""
    import threading

    from app.core.db import make_sync_engine

    # Start from an empty schema so there is real work to race on.
    engine = make_sync_engine(db_url)
    with engine.begin() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    if backend == "sqlite":
        Path(db_url.removeprefix("sqlite:///")).unlink()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(db_url)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    test_models_and_migrations_do_not_drift(db_url)
