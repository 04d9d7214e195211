"""Cursor pagination shared by every list endpoint: `{"items": [...], "next_cursor"}`."""

from __future__ import annotations

import base64
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from app.core.errors import ValidationProblem
from app.core.jsonutil import dumps, loads

T = TypeVar("T")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str | None, size: int) -> list[Any] | None:
    if not cursor:
        return None
    try:
        values = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != size:
        raise ValidationProblem(
            "cursor is not one this API returned",
            [{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
        )
    return values


def keyset(first: Any, second: Any, after: list[Any], *, ascending: bool) -> Any:
    """Rows strictly after (first, second) = after, in the list's order."""
    import sqlalchemy as sa

    a, b = after
    if ascending:
        return sa.or_(first > a, sa.and_(first == a, second > b))
    return sa.or_(first < a, sa.and_(first == a, second < b))
