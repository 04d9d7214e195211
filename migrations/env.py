from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers every table on the metadata)
from app.core.db import make_sync_engine
from app.core.migrate import include_object_for, render_item

config = context.config
target_metadata = SQLModel.metadata

def run() -> None:
    connection = config.attributes.get("connection")
    url = config.get_main_option("sqlalchemy.url") or ""
    dialect = (connection.dialect.name if connection is not None
               else make_url(url).get_backend_name())
    opts: dict[str, Any] = {
        "target_metadata": target_metadata,
        "include_object": include_object_for(dialect),
        "render_item": render_item,
        "compare_type": True,
        "render_as_batch": True,
    }
    if connection is not None:
        context.configure(connection=connection, **opts)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, **opts)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
