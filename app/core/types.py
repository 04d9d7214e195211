"""Portable column types for SQLite and PostgreSQL."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import class_mapper
from sqlmodel import SQLModel

M = TypeVar("M", bound=SQLModel)
P = TypeVar("P", bound=BaseModel)


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


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

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # SQLAlchemy's SQLite text format, formatted from the fields in one step: its own
        # processor formats through a dict, several times slower, for every datetime of every
        # alert and incident a storm stores.
        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is not UTC:
                if value.tzinfo is None:
                    raise ValueError("naive datetime given to a UTC column")
                value = value.astimezone(UTC)
            return _SQLITE_DATETIME % (value.year, value.month, value.day, value.hour,
                                       value.minute, value.second, value.microsecond)

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # SQLite hands back the ISO text SQLAlchemy stored; parsing it and attaching UTC in
        # one step halves the cost of the datetime columns of every listed incident.
        def process(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return process


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
    """Every column of a SQLModel table object, for a bulk Core insert. Values are read from
    the instance's dict where they are (objects built in memory hold them all), past
    SQLAlchemy's attribute instrumentation."""
    held = obj.__dict__
    return {c.key: held[c.key] if c.key in held else getattr(obj, c.key)
            for c in table_of(type(obj)).columns}


@functools.cache
def _defaults(model: type[SQLModel]
              ) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...], Callable[[], Any]]:
    plain: dict[str, Any] = {}
    factories: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            factories.append((name, info.default_factory))
        elif not info.is_required():
            plain[name] = info.default
    return plain, tuple(factories), class_mapper(model).class_manager.new_instance


def unvalidated(model: type[M], values: dict[str, Any]) -> M:
    """A table object from values validated elsewhere, with the model's defaults for the rest,
    built without pydantic validation or SQLAlchemy change events (~3 µs instead of ~90 µs for
    an incident). Only for rows inserted with Core statements, never added to a session:
    enums and types must already be right."""
    plain, factories, new_instance = _defaults(model)  # type: ignore[arg-type]  # hashable
    data = dict(plain)
    for name, factory in factories:
        if name not in values:
            data[name] = factory()
    data.update(values)
    missing = model.model_fields.keys() - data.keys()
    if missing:
        raise TypeError(f"{model.__name__} needs {', '.join(sorted(missing))}")
    obj: M = new_instance()
    return _filled(obj, data, set(values))


def constructed(model: type[P], values: dict[str, Any]) -> P:
    """A plain (non-table) model from values of exactly its field types, every field given,
    without validation: for serialising a table object as its public model."""
    return _filled(model.__new__(model), values, set(values))


def _filled(obj: P, data: dict[str, Any], fields_set: set[str]) -> P:
    obj.__dict__.update(data)
    # What pydantic's own constructor would have set.
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj
