"""Every table model, imported in one place for Alembic and the schema tests."""

from app.agencies.models import Agency
from app.auth.models import ApiKey
from app.deadlines.models import Deadline
from app.incidents.models import (
    Incident,
    IncidentAgency,
    Proposal,
    ReferenceCounter,
    Response,
    TimelineEntry,
)
from app.idempotency.models import IdempotencyRecord
from app.notifications.models import Event

__all__ = [
    "Agency",
    "ApiKey",
    "Deadline",
    "Event",
    "IdempotencyRecord",
    "Incident",
    "IncidentAgency",
    "Proposal",
    "ReferenceCounter",
    "Response",
    "TimelineEntry",
]
