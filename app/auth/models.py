from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from app.core.types import dt_column, enum_type


class Role(StrEnum):
    admin = "admin"
    duty_officer = "duty_officer"
    leader = "leader"
    monitor = "monitor"
    viewer = "viewer"


class ApiKeyBase(SQLModel):
    name: str = Field(max_length=200)
    role: Role
    agency: str | None = Field(default=None, max_length=32)


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=36)
    role: Role = Field(sa_type=enum_type(Role))
    prefix: str = Field(max_length=16)
    hash: str = Field(max_length=64, unique=True)
    # Kept as given: verifying Standard Webhooks signatures needs the secret itself.
    signing_secret: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_column=dt_column(nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=dt_column(nullable=True))


class ApiKeyCreate(ApiKeyBase):
    signing_secret: str | None = None


class ApiKeyPublic(ApiKeyBase):
    id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    signed: bool


class ApiKeyCreated(SQLModel):
    id: str
    name: str
    role: Role
    key: str
