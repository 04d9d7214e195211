from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.types import dt_column


class Deadline(SQLModel, table=True):
    """One SLA clock of one incident. (incident_id, clock, cycle) is unique, and a deadline
    fires only by setting `fired_at` where it is still null: it cannot fire twice."""

    __tablename__ = "deadline"
    __table_args__ = (
        sa.UniqueConstraint("incident_id", "clock", "cycle"),
        sa.Index("ix_deadline_due", "due_at", postgresql_where=sa.text(
            "fired_at IS NULL AND met_at IS NULL"), sqlite_where=sa.text(
            "fired_at IS NULL AND met_at IS NULL")),
    )

    id: str = Field(primary_key=True, max_length=36)
    incident_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("incident.id"), nullable=False, index=True)
    )
    clock: str = Field(max_length=40)
    cycle: int = 1
    started_at: datetime = Field(sa_column=dt_column(nullable=False))
    due_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    fired_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
    met_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))
