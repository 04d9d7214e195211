"""Building the process-wide objects from settings, shared by the app, the worker and the CLI."""

from __future__ import annotations

from app.core.config import Settings
from app.core.db import Database
from app.incidents.service import Env
from app.notifications.fanout import Authorities
from workflows.engine import WorkflowRegistry
from workflows.sla import parse_overrides


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


def build_env(settings: Settings, workflows: WorkflowRegistry | None = None) -> Env:
    """Load and validate the workflow definitions (a bad one stops start-up here)."""
    return Env(
        workflows=workflows or WorkflowRegistry.load(),
        overrides=parse_overrides(settings.sla_overrides),
        zone=settings.zone,
        dialect="sqlite" if settings.is_sqlite else "postgresql",
    )
