"""Diacritic- and case-insensitive search for Vietnamese.

Titles and descriptions are folded (NFD, combining marks dropped, đ → d, lower case,
spaces collapsed) into `incident.search_text`; a query is folded the same way and matched
as a substring through an index: an FTS5 trigram table on SQLite, a pg_trgm GIN index on
PostgreSQL. Both need three characters or more; shorter queries fall back to LIKE.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import sqlalchemy as sa

_SPACE = re.compile(r"\s+")
MIN_INDEXED = 3


class _Folding(dict[int, str]):
    """str.translate table that learns each character's folded form on first sight: its
    canonical decomposition without combining marks (NFD of a whole text is the NFD of each
    character, reordered only among the marks that are dropped)."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        folded = "".join(c for c in unicodedata.normalize("NFD", char)
                         if not unicodedata.combining(c))
        if len(self) < _FOLD_CACHE:  # bounded: a text may hold any of Unicode's characters
            self[code] = folded
        return folded


_FOLD_CACHE = 20_000
_FOLDING = _Folding({ord("đ"): "d", ord("Đ"): "d"})


def fold(text: str | None) -> str:
    if not text:
        return ""
    return _SPACE.sub(" ", text.translate(_FOLDING)).strip().lower()


def search_text(title: str, description: str | None) -> str:
    return fold(f"{title} {description or ''}")


def like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_clause(dialect: str, table: Any, q: str) -> sa.ColumnElement[bool]:
    folded = fold(q)
    column = table.c.search_text if hasattr(table, "c") else table.search_text
    like: sa.ColumnElement[bool] = column.like(like_pattern(folded), escape="\\")
    if dialect == "sqlite" and len(folded) >= MIN_INDEXED:
        phrase = '"' + folded.replace('"', '""') + '"'
        fts = sa.text("SELECT rowid FROM incident_fts WHERE incident_fts MATCH :fts_q").bindparams(
            fts_q=phrase
        )
        return sa.literal_column("incident.rowid").in_(fts)
    # PostgreSQL: the trigram GIN index serves LIKE '%…%' directly.
    return like
