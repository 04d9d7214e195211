from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.core.types import dt_column, json_column


class IdempotencyRecord(SQLModel, table=True):
    """A POST's response, kept 24 h under (caller, Idempotency-Key). `status` is null while
    the first request is still running."""

    __tablename__ = "idempotency_record"

    principal: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    status: int | None = None
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=json_column(nullable=False))
    body: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))
    created_at: datetime = Field(sa_column=dt_column(nullable=False, index=True))
