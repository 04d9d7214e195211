"""Events (the outbox's source and the live feed) and their deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.types import dt_column, json_column

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


class EventPublic(SQLModel):
    type: str
    id: str
    timestamp: datetime
    data: dict[str, Any]
