"""Building the process-wide objects from settings, shared by the app, the worker and the CLI."""

from __future__ import annotations

from app.core.config import Settings
from app.core.db import Database
from app.notifications.fanout import Authorities


def open_database(settings: Settings, *, pool_size: int = 10) -> Database:
    return Database(
        settings.database_url,
        pool_size=pool_size,
        session_info={
            "authorities": Authorities(
                communications=settings.communications_authority,
                government_office=settings.government_office,
            )
        },
    )
