"""Every table model, imported in one place for Alembic and the schema tests."""

from app.agencies.models import Agency
from app.alerts.models import Alert, AlertKey, WebhookReceipt
from app.auth.models import ApiKey
from app.deadlines.models import Deadline
from app.idempotency.models import IdempotencyRecord
from app.incidents.models import (
    Incident,
    IncidentAgency,
    Proposal,
    ReferenceCounter,
    Response,
    TimelineEntry,
)
from app.notifications.models import Delivery, DeliveryAttempt, Event, Subscription

__all__ = [  # noqa: RUF022
    "Agency",
    "Alert",
    "AlertKey",
    "ApiKey",
    "Deadline",
    "Delivery",
    "DeliveryAttempt",
    "Event",
    "IdempotencyRecord",
    "Incident",
    "IncidentAgency",
    "Proposal",
    "ReferenceCounter",
    "Subscription",
    "Response",
    "TimelineEntry",
    "WebhookReceipt",
]
