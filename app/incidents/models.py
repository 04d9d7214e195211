"""Incidents, their timeline, task-force proposals and responses."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from pydantic import AnyHttpUrl, field_validator
from sqlmodel import Field, SQLModel

from app.core.types import dt_column, enum_type, json_column


class State(StrEnum):
    detected = "detected"
    assessed = "assessed"
    task_force_proposed = "task_force_proposed"
    response_issued = "response_issued"
    closed = "closed"


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Category(StrEnum):
    fake_news = "fake_news"
    negative_sentiment = "negative_sentiment"
    policy_misunderstanding = "policy_misunderstanding"
    crisis = "crisis"
    other = "other"


class ProposalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    withdrawn = "withdrawn"


AGENCY_CODE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"


# -- incident ---------------------------------------------------------------------------

class IncidentBase(SQLModel):
    title: str = Field(min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=20000)


class IncidentEditable(IncidentBase):
    lead_agency: str | None = Field(default=None, max_length=32)
    affected_agencies: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class Incident(IncidentBase, table=True):
    __tablename__ = "incident"
    __table_args__ = (
        sa.Index("ix_incident_state_severity_created", "state", "severity", "created_at"),
        sa.Index("ix_incident_created_at_id", "created_at", "id"),
        sa.Index(
            "ix_incident_open_group_key", "group_key",
            sqlite_where=sa.text("state != 'closed' AND group_key IS NOT NULL"),
            postgresql_where=sa.text("state != 'closed' AND group_key IS NOT NULL"),
        ),
        sa.Index("ix_incident_overdue", "overdue", "state"),
        # Room on each page for the new versions of its rows: see migration 0008.
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: str = Field(primary_key=True, max_length=36)
    reference: str = Field(max_length=32, unique=True)
    workflow: str = Field(max_length=100)
    workflow_version: int
    state: State = Field(sa_type=enum_type(State))
    severity: Severity = Field(sa_type=enum_type(Severity))
    category: Category = Field(sa_type=enum_type(Category))
    search_text: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    lead_agency: str | None = Field(default=None, max_length=32)
    affected_agencies: list[str] = Field(
        default_factory=list, sa_column=json_column(nullable=False)
    )
    channels: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    links: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    tags: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    assessment: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    closure: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    escalation_level: int = 0
    overdue: bool = False
    deadline_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    version: int = 1
    alert_count: int = 0
    first_alert_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    last_alert_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    group_key: str | None = Field(default=None, max_length=200)
    first_response_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    assessed_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    created_by: str = Field(max_length=300)
    created_at: datetime = Field(sa_column=dt_column(nullable=False))
    updated_at: datetime = Field(sa_column=dt_column(nullable=False))
    state_changed_at: datetime = Field(sa_column=dt_column(nullable=False))
    timeline_seq: int = 0
    timeline_head: str = Field(default="0" * 64, max_length=64)


class IncidentAgency(SQLModel, table=True):
    """Which agencies an incident names, for the `agency` filter and viewer scopes."""

    __tablename__ = "incident_agency"

    incident_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id", ondelete="CASCADE"),
                            primary_key=True)
    )
    agency: str = Field(primary_key=True, max_length=32, index=True)


def _clean_list(values: list[str], limit: int, item_max: int) -> list[str]:
    out: list[str] = []
    for v in values:
        v = v.strip()
        if v and v not in out:
            out.append(v[:item_max])
    if len(out) > limit:
        raise ValueError(f"at most {limit} items")
    return out


class IncidentCreate(IncidentEditable):
    category: Category = Category.other
    severity: Severity = Severity.medium

    @field_validator("affected_agencies", "channels", "tags")
    @classmethod
    def _lists(cls, v: list[str]) -> list[str]:
        return _clean_list(v, 100, 100)

    @field_validator("links")
    @classmethod
    def _links(cls, v: list[str]) -> list[str]:
        for url in v:
            AnyHttpUrl(url)
        return _clean_list(v, 50, 2000)


class IncidentUpdate(SQLModel):
    title: str | None = Field(default=None, min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=20000)
    lead_agency: str | None = Field(default=None, max_length=32)
    affected_agencies: list[str] | None = None
    channels: list[str] | None = None
    links: list[str] | None = None
    tags: list[str] | None = None

    @field_validator("affected_agencies", "channels", "tags")
    @classmethod
    def _lists(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _clean_list(v, 100, 100)

    @field_validator("links")
    @classmethod
    def _links(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        for url in v:
            AnyHttpUrl(url)
        return _clean_list(v, 50, 2000)


class IncidentPublic(IncidentEditable):
    id: str
    reference: str
    workflow: str
    workflow_version: int
    state: State
    severity: Severity
    category: Category
    assessment: dict[str, Any] | None = None
    closure: dict[str, Any] | None = None
    escalation_level: int
    overdue: bool
    deadline_at: datetime | None
    version: int
    alert_count: int
    first_alert_at: datetime | None
    last_alert_at: datetime | None
    first_response_at: datetime | None
    assessed_at: datetime | None = None
    created_by: str
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime
    allowed_triggers: list[str] | None = None


# -- timeline ---------------------------------------------------------------------------

class TimelineEntry(SQLModel, table=True):
    """Append-only, hash-chained: each entry's hash covers its content and the previous hash."""

    __tablename__ = "timeline_entry"
    __table_args__ = (sa.UniqueConstraint("incident_id", "seq"),)

    id: str = Field(primary_key=True, max_length=36)
    incident_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id"), nullable=False)
    )
    seq: int
    at: datetime = Field(sa_column=dt_column(nullable=False))
    actor: str = Field(max_length=300)
    kind: str = Field(max_length=40)
    from_state: str | None = Field(default=None, max_length=40)
    to_state: str | None = Field(default=None, max_length=40)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class TimelineEntryPublic(SQLModel):
    id: str
    seq: int
    at: datetime
    actor: str
    kind: str
    from_state: str | None = None
    to_state: str | None = None
    data: dict[str, Any]
    hash: str


class CommentCreate(SQLModel):
    body: str = Field(min_length=1, max_length=20000)


# -- proposals and responses ------------------------------------------------------------

class ProposalBase(SQLModel):
    lead_agency: str = Field(max_length=32)
    members: list[str] = Field(default_factory=list, sa_column=json_column(nullable=False))
    mandate: str
    rationale: str


class Proposal(ProposalBase, table=True):
    __tablename__ = "proposal"
    __table_args__ = (sa.Index("ix_proposal_status_proposed_at", "status", "proposed_at"),)

    id: str = Field(primary_key=True, max_length=36)
    incident_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id"), nullable=False, index=True)
    )
    status: ProposalStatus = Field(sa_type=enum_type(ProposalStatus))
    mandate: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    rationale: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    proposed_by: str = Field(max_length=300)
    proposed_by_key: str = Field(max_length=36)
    proposed_at: datetime = Field(sa_column=dt_column(nullable=False))
    decided_by: str | None = Field(default=None, max_length=300)
    decided_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    decision_comment: str | None = Field(default=None, sa_column=sa.Column(sa.Text))


class ProposalPublic(ProposalBase):
    id: str
    incident_id: str
    incident_reference: str
    status: ProposalStatus
    proposed_by: str
    proposed_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_comment: str | None


class DecisionIn(SQLModel):
    comment: str | None = Field(default=None, max_length=2000)


class RejectionIn(SQLModel):
    comment: str = Field(min_length=1, max_length=2000)


class Response(SQLModel, table=True):
    __tablename__ = "response"

    id: str = Field(primary_key=True, max_length=36)
    incident_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id"), nullable=False, index=True)
    )
    channel: str = Field(max_length=40)
    statement: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    spokesperson: str = Field(max_length=300)
    url: str | None = Field(default=None, max_length=2000)
    language: str = Field(default="vi", max_length=8)
    severity_at_issue: str = Field(max_length=16)
    approved_proposal_id: str | None = Field(default=None, max_length=36)
    issued_at: datetime = Field(sa_column=dt_column(nullable=False))
    issued_by: str = Field(max_length=300)


class ReferenceCounter(SQLModel, table=True):
    """The yearly sequence behind `INC-YYYY-NNNNNN`, bumped with one atomic upsert."""

    __tablename__ = "reference_counter"

    year: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    value: int = 0
