"""Alembic, driven from code so the installed package migrates without an alembic.ini."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

import migrations
from app.core.db import make_sync_engine, sync_url

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
MIGRATION_LOCK = 0x0C41F1


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.set_main_option(
        "file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s"
    )
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    engine = make_sync_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together migrate one after the other.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


async def current_revisions(conn: AsyncConnection) -> set[str]:
    """The database's revisions; empty when it was never migrated."""
    has_table = await conn.run_sync(lambda c: sa.inspect(c).has_table("alembic_version"))
    if not has_table:
        return set()
    rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
    return {r[0] for r in rows}


# Tables that migrations create by hand (SQLite FTS) are not models: autogenerate skips them.
HAND_MADE_PREFIXES = ("incident_fts",)


# Foreign keys that PostgreSQL checks with triggers instead, once per statement rather than
# once per row (migration 0010): the models keep them, and so does SQLite.
CHECKED_BY_TRIGGERS_ON_POSTGRESQL = frozenset({"fk_alert_incident_id_incident"})


def include_object_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic's `include_object`: which schema objects autogenerate compares on `dialect`."""

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                       compare_to: Any) -> bool:
        if type_ == "table" and name and name.startswith(HAND_MADE_PREFIXES):
            return False
        if type_ == "foreign_key_constraint" and dialect == "postgresql" \
                and name in CHECKED_BY_TRIGGERS_ON_POSTGRESQL:
            return False
        return not (type_ == "index" and name and name.startswith("ix_hand_"))

    return include_object


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    import sqlalchemy as sa

    from app.core.types import UTCDateTime

    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        autogen_context.imports.add("import app.core.types")
        return "app.core.types.UTCDateTime()"
    if isinstance(obj, sa.JSON):
        autogen_context.imports.add("import app.core.types")
        return "app.core.types.JSONType"
    if isinstance(obj, sa.Enum) and not obj.native_enum:
        return f"sa.String(length={obj.length})"
    return False
