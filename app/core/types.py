"""Portable column types for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out; SQLite stores naive text, so the zone is reattached."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType: Any = sa.JSON().with_variant(JSONB(), "postgresql")


def dt_column(**kw: Any) -> sa.Column[Any]:
    return sa.Column(UTCDateTime(), **kw)


def json_column(**kw: Any) -> sa.Column[Any]:
    return sa.Column(JSONType, **kw)


def enum_type(enum_cls: type[Any]) -> sa.Enum:
    """Enums stored as plain strings: adding a value later needs no type migration."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
    )


def table_of(model: type[Any]) -> sa.Table:
    """The Core table behind a SQLModel table class, for bulk statements."""
    table: sa.Table = model.__table__
    return table


def row_of(obj: Any) -> dict[str, Any]:
    """Every column of a SQLModel table object, for a bulk Core insert."""
    return {c.key: getattr(obj, c.key) for c in table_of(type(obj)).columns}
