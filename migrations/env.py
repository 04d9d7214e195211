from __future__ import annotations

from typing import Any

from alembic import context
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers every table on the metadata)
from app.core.db import make_sync_engine

config = context.config
target_metadata = SQLModel.metadata

# Tables that migrations create by hand (SQLite FTS) are not models: autogenerate skips them.
HAND_MADE_PREFIXES = ("incident_fts",)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    if type_ == "table" and name and name.startswith(HAND_MADE_PREFIXES):
        return False
    return not (type_ == "index" and name and name.startswith("ix_hand_"))


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


def run() -> None:
    connection = config.attributes.get("connection")
    opts: dict[str, Any] = {
        "target_metadata": target_metadata,
        "include_object": include_object,
        "render_item": render_item,
        "compare_type": True,
        "render_as_batch": True,
    }
    if connection is not None:
        context.configure(connection=connection, **opts)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_sync_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, **opts)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
