"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlmodel import SQLModel

import app.models  # noqa: F401
from app.core.config import Settings
from app.core.db import make_sync_engine
from app.core.migrate import head_revisions, include_object_for, upgrade
from tests.factories import assert_problem, free_port


def test_models_and_migrations_do_not_drift(db_url: str) -> None:
    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_object": include_object_for(conn.dialect.name)})
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


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite compares text byte by byte
def test_identifiers_compare_byte_by_byte_whatever_the_locale_on_postgresql(
        db_url: str) -> None:
    """Ids, foreign ids and alert keys take the "C" collation (migration 0013): in a database
    created under a language's locale, comparing them by its rules cost a third of alert
    ingestion. Text people read keeps the database's collation. Also beyond autogenerate's
    comparison, so checked here, both ways; the trigger that names incident.id is kept
    (`test_alerts_name_stored_incidents_on_both_databases` checks what it does)."""
    from alembic import command

    from app.core.migrate import alembic_config

    def bytewise() -> tuple[set[tuple[str, str]], list[str]]:
        engine = make_sync_engine(db_url)
        try:
            with engine.connect() as conn:
                columns = conn.exec_driver_sql(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND collation_name = 'C'").all()
                triggers = conn.exec_driver_sql(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'incident'::regclass "
                    "AND NOT tgisinternal ORDER BY tgname").scalars().all()
        finally:
            engine.dispose()
        return {(t, c) for t, c in columns}, list(triggers)

    columns, triggers = bytewise()
    assert {("alert", "id"), ("alert", "incident_id"), ("alert_key", "key"),
            ("alert_key", "kind"), ("incident", "id"), ("timeline_entry", "incident_id"),
            ("delivery", "subscription_id"), ("event", "id")} <= columns
    assert all(c == "id" or c.endswith("_id") or t == "alert_key" for t, c in columns)
    assert triggers == ["incident_alerts_kept_deleted", "incident_alerts_kept_renamed"]
    command.downgrade(alembic_config(db_url), "0012")
    assert bytewise() == (set(), triggers)
    upgrade(db_url)
    assert bytewise() == (columns, triggers)


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


def test_alerts_name_stored_incidents_on_both_databases(client: TestClient, db_url: str,
                                                        monitor: dict[str, str]) -> None:
    """SQLite keeps the foreign key; PostgreSQL checks it per statement (migration 0010): either
    way an alert naming no incident is refused, whether inserted alone, among valid rows or
    updated, and an incident that alerts name can be neither deleted nor renamed."""
    opened = client.post("/api/v1/alerts", headers=monitor,
                         json={"source": "s", "title": "Tin giả", "fingerprint": "fk-1"}
                         ).json()["results"][0]
    incident, alert = opened["incident_id"], opened["alert_id"]
    columns = ("id, incident_id, format, source, fingerprint, status, deduplicated, severity, "
               "category, title, labels, raw, received_at")

    def row(id_: str, incident_id: str) -> str:
        return (f"('{id_}', '{incident_id}', 'generic', 's', 'fk', 'firing', false, 'low', "
                f"'other', 't', '{{}}', '', '2026-11-26 00:00:00+00:00')")

    refused = [
        f"INSERT INTO alert ({columns}) VALUES {row('orphan-1', 'no-such-incident')}",
        f"INSERT INTO alert ({columns}) VALUES {row('ok-1', incident)}, "
        f"{row('orphan-2', 'no-such-incident')}, {row('ok-2', incident)}",
        f"UPDATE alert SET incident_id = 'no-such-incident' WHERE id = '{alert}'",
        f"DELETE FROM alert_key WHERE incident_id = '{incident}'; "
        f"DELETE FROM incident WHERE id = '{incident}'",
        f"UPDATE incident SET id = 'renamed' WHERE id = '{incident}'",
    ]
    engine = make_sync_engine(db_url)
    try:
        for sql in refused:
            with pytest.raises(sa.exc.IntegrityError, match=r"(?i)foreign key"), \
                    engine.begin() as conn:
                for statement in sql.split("; "):
                    conn.exec_driver_sql(statement)
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT id, incident_id FROM alert").all()
    finally:
        engine.dispose()
    assert stored == [(alert, incident)]
