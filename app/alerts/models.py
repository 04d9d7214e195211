"""Alerts as received, the keys that deduplicate and group them, and signed-webhook receipts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.types import dt_column, json_column


class Alert(SQLModel, table=True):
    __tablename__ = "alert"
    __table_args__ = (
        # The only index besides the key: each one costs every alert of a storm a page
        # write (migration 0009); resolutions read an incident's alerts through this one.
        sa.Index("ix_alert_incident_received", "incident_id", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    # On PostgreSQL triggers enforce this key once per statement (migration 0010): checked
    # per row, it cost a storm's COPY of alerts two fifths of its time.
    incident_id: str | None = Field(
        default=None,
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id"), nullable=True),
    )
    format: str = Field(max_length=16)
    source: str = Field(max_length=200)
    fingerprint: str = Field(max_length=200)
    group_key: str | None = Field(default=None, max_length=500)
    status: str = Field(max_length=16)
    deduplicated: bool = False
    severity: str = Field(max_length=16)
    category: str = Field(max_length=32)
    title: str = Field(max_length=500)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    raw: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    observed_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    received_at: datetime = Field(sa_column=dt_column(nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    received_by: str | None = Field(default=None, max_length=36)


class AlertKey(SQLModel, table=True):
    """The incident an alert fingerprint (`fp`) or grouping-label set (`group`) leads to.
    A key whose incident is closed is stale and gets pointed at the next incident."""

    __tablename__ = "alert_key"

    # `key` first: lookups are `kind = ? AND key IN (...)` (see migration 0007).
    key: str = Field(primary_key=True, max_length=500)
    kind: str = Field(primary_key=True, max_length=8)
    incident_id: str = Field(max_length=36)


class WebhookReceipt(SQLModel, table=True):
    """A signed request's `webhook-id`, so a repeat returns the first result."""

    __tablename__ = "webhook_receipt"

    principal: str = Field(primary_key=True, max_length=36)
    webhook_id: str = Field(primary_key=True, max_length=200)
    result: dict[str, Any] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    created_at: datetime = Field(sa_column=dt_column(nullable=False, index=True))


class AlertPublic(SQLModel):
    id: str
    incident_id: str | None
    format: str
    source: str
    fingerprint: str
    status: str
    deduplicated: bool
    severity: str
    category: str
    title: str
    labels: dict[str, str]
    observed_at: datetime | None
    received_at: datetime
    resolved_at: datetime | None


class AlertResult(SQLModel):
    """The response schema; the ingest path itself passes `Outcome`s."""

    alert_id: str
    incident_id: str | None
    deduplicated: bool
    status: str


class IngestResponse(SQLModel):
    results: list[AlertResult]


class Outcome(NamedTuple):
    """One alert's result as the ingest path passes it around: a storm makes thousands a
    second, and a model instance each cost more than deciding the alert's fate."""

    alert_id: str
    incident_id: str | None
    deduplicated: bool
    status: str
