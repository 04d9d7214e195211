"""Events (the outbox's source and the live feed) and their deliveries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.types import dt_column, enum_type, json_column

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Event(SQLModel, table=True):
    """One emitted event. `seq` orders the live feed (`Last-Event-ID`)."""

    __tablename__ = "event"

    seq: int | None = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True,
                                                              autoincrement=True))
    id: str = Field(max_length=36, unique=True)
    incident_id: str | None = Field(default=None, max_length=36, index=True)
    type: str = Field(max_length=60)
    at: datetime = Field(sa_column=dt_column(nullable=False))
    agencies: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    severity: str | None = Field(default=None, max_length=16)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    # Events that must happen once per cause (a deadline firing) carry a unique key, so a
    # second worker or a restart cannot emit them twice.
    dedup_key: str | None = Field(default=None, max_length=100, unique=True)


class EventPublic(SQLModel):
    type: str
    id: str
    timestamp: datetime
    data: dict[str, Any]


EVENT_TYPES = (
    "incident.detected",
    "incident.assessed",
    "incident.escalated",
    "incident.overdue",
    "task_force.proposed",
    "task_force.approved",
    "task_force.rejected",
    "response.issued",
    "incident.closed",
    "incident.reopened",
)


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    dead = "dead"


# -- subscriptions ----------------------------------------------------------------------

class SubscriptionBase(SQLModel):
    agency: str = Field(max_length=32)
    notifier: str = Field(max_length=100)
    target: str = Field(max_length=2000)
    events: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    min_severity: str | None = Field(default=None, max_length=16)
    categories: list[str] | None = Field(default=None, sa_column=json_column(nullable=True))
    scope: str = Field(default="involved", max_length=16)


class Subscription(SubscriptionBase, table=True):
    __tablename__ = "subscription"

    id: str = Field(primary_key=True, max_length=36)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    secret: str | None = Field(default=None, max_length=500)
    active: bool = True
    created_at: datetime = Field(sa_column=dt_column(nullable=False))
    deleted_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))


Severity = Literal["low", "medium", "high", "critical"]
Category = Literal["fake_news", "negative_sentiment", "policy_misunderstanding", "crisis", "other"]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class SubscriptionCreate(SQLModel):
    agency: str = Field(max_length=32, schema_extra={"examples": ["MIC"]})
    notifier: str = Field(max_length=100, schema_extra={"examples": ["webhook"]})
    target: str = Field(min_length=1, max_length=2000,
                        schema_extra={"examples": ["https://mic.example.vn/hooks/crisis"]})
    events: list[EventType] = Field(min_length=1)  # type: ignore[valid-type]
    min_severity: Severity | None = None
    categories: list[Category] | None = None
    scope: Literal["involved", "all"] = "involved"
    config: dict[str, Any] = Field(default_factory=dict)
    secret: str | None = Field(default=None, min_length=16, max_length=500,
                               description="Standard Webhooks secret (whsec_…); write-only")


class SubscriptionPublic(SubscriptionBase):
    id: str
    config: dict[str, Any]
    has_secret: bool
    active: bool
    created_at: datetime


# -- deliveries -------------------------------------------------------------------------

class Delivery(SQLModel, table=True):
    """One event for one subscription: the unit the worker claims, sends and retries."""

    __tablename__ = "delivery"
    __table_args__ = (
        sa.Index("ix_delivery_due", "status", "next_attempt_at"),
        # A delivery waits while an earlier one of the same subscription and incident is
        # pending, so each receiver sees an incident's events in order.
        sa.Index("ix_delivery_order", "subscription_id", "incident_id", "event_seq"),
    )

    id: str = Field(primary_key=True, max_length=36)
    event_seq: int = Field(sa_column=sa.Column(BigInt, sa.ForeignKey("event.seq"), nullable=False,
                                               index=True))
    subscription_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("subscription.id"), nullable=False)
    )
    incident_id: str | None = Field(default=None, max_length=36, index=True)
    status: DeliveryStatus = Field(sa_type=enum_type(DeliveryStatus))
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=dt_column(nullable=False))
    claimed_until: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=500)
    last_status_code: int | None = None
    created_at: datetime = Field(sa_column=dt_column(nullable=False))
    # Retries stop once the window (24 h by default) from here has passed; a manual retry
    # starts a new window.
    window_started_at: datetime = Field(sa_column=dt_column(nullable=False))
    delivered_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "delivery_attempt"

    id: str = Field(primary_key=True, max_length=36)
    delivery_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("delivery.id"), nullable=False,
                            index=True)
    )
    at: datetime = Field(sa_column=dt_column(nullable=False))
    outcome: str = Field(max_length=16)
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: float = 0.0
    worker: str | None = Field(default=None, max_length=64)


class DeliveryAttemptPublic(SQLModel):
    at: datetime
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryPublic(SQLModel):
    id: str
    event_id: str
    event_type: str
    incident_id: str | None
    subscription_id: str
    agency: str
    notifier: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    last_status_code: int | None
    created_at: datetime
    delivered_at: datetime | None
    attempts: list[DeliveryAttemptPublic] = Field(default_factory=list)
