from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.agencies.models import Agency, AgencyCreate, AgencyPublic, AgencyUpdate
from app.core.errors import Conflict, NotFound, ValidationProblem
from app.core.pagination import Page, decode_cursor, encode_cursor


def to_public(row: Agency) -> AgencyPublic:
    return AgencyPublic.model_validate(row)


async def list_agencies(
    session: AsyncSession, limit: int, cursor: str | None
) -> Page[AgencyPublic]:
    after = decode_cursor(cursor, 1)
    stmt = select(Agency).order_by(col(Agency.code)).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(col(Agency.code) > str(after[0]))
    rows = list((await session.exec(stmt)).all())
    next_cursor = encode_cursor([rows[limit - 1].code]) if len(rows) > limit else None
    return Page(items=[to_public(r) for r in rows[:limit]], next_cursor=next_cursor)


async def get_agency(session: AsyncSession, code: str) -> AgencyPublic:
    row = await session.get(Agency, code)
    if row is None:
        raise NotFound(f"no agency with code {code}")
    return to_public(row)


async def require_agencies(
    session: AsyncSession, codes: Iterable[str | None], loc: Sequence[str | int] = ("body",)
) -> None:
    """422 naming every code the directory does not know."""
    wanted = {c for c in codes if c}
    if not wanted:
        return
    found = set((await session.exec(select(Agency.code).where(col(Agency.code).in_(wanted)))).all())
    missing = sorted(wanted - found)
    if missing:
        msg = f"unknown agency code(s): {', '.join(missing)}"
        raise ValidationProblem(msg, [{"loc": list(loc), "msg": msg}])


async def create_agency(session: AsyncSession, item_in: AgencyCreate) -> AgencyPublic:
    if await session.get(Agency, item_in.code) is not None:
        raise Conflict(f"agency {item_in.code} already exists")
    await require_agencies(session, [item_in.parent], loc=["body", "parent"])
    row = Agency.model_validate(item_in.model_dump())
    session.add(row)
    await session.flush()
    return to_public(row)


async def put_agency(
    session: AsyncSession, code: str, item_in: AgencyUpdate
) -> tuple[AgencyPublic, bool]:
    """Replace (or create) an agency; returns it and whether it was created."""
    if item_in.code is not None and item_in.code != code:
        msg = "the code in the body must match the path"
        raise ValidationProblem(msg, [{"loc": ["body", "code"], "msg": msg}])
    await require_agencies(session, [item_in.parent], loc=["body", "parent"])
    data = item_in.model_dump(exclude={"code"})
    row = await session.get(Agency, code)
    created = row is None
    if row is None:
        row = Agency.model_validate({**data, "code": code})
    else:
        row.sqlmodel_update(data)
    session.add(row)
    await session.flush()
    return to_public(row), created


async def count_agencies(session: AsyncSession) -> int:
    return int((await session.exec(select(func.count()).select_from(Agency))).one())


def seed_records() -> list[dict[str, Any]]:
    text = resources.files("app.agencies").joinpath("seed/agencies.json").read_text("utf-8")
    records: list[dict[str, Any]] = json.loads(text)
    return records


class ImportError_(ValueError):
    """A file of agencies could not be read; the message names the line or item."""


def parse_agency_file(path: Path) -> list[AgencyCreate]:
    try:
        text = path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportError_(f"{path}: cannot read: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportError_(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        if isinstance(data, dict) and "items" in data:
            data = data["items"]
        if not isinstance(data, list):
            raise ImportError_(f"{path}: expected a JSON array of agencies")
        return [_validate(item, f"{path}: item {i}") for i, item in enumerate(data)]
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"code", "kind"} - set(reader.fieldnames or [])
        if missing or not ({"name", "name_vi"} & set(reader.fieldnames or [])):
            need = sorted(missing | ({"name"} if not missing else set()))
            raise ImportError_(f"{path}:1: header must name columns code, name, kind ({need})")
        out = []
        for row in reader:
            record: dict[str, Any] = {k: (v or None) for k, v in row.items() if k}
            record.setdefault("name", record.pop("name_vi", None))
            record.pop("name_vi", None)
            if record.get("merged_from") and not record.get("note"):
                record["note"] = f"formed from {record['merged_from']}"
            record.pop("merged_from", None)
            out.append(_validate(record, f"{path}:{reader.line_num}"))
        return out
    raise ImportError_(f"{path}: use a .csv or .json file")


def _validate(item: Any, where: str) -> AgencyCreate:
    try:
        return AgencyCreate.model_validate(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "item"
        raise ImportError_(f"{where}: {field}: {err['msg']}") from None


async def upsert_many(session: AsyncSession, items: Sequence[AgencyCreate]) -> tuple[int, int]:
    """Insert or update agencies; parents may refer to agencies in the same batch."""
    known = set((await session.exec(select(Agency.code))).all()) | {i.code for i in items}
    for item in items:
        if item.parent and item.parent not in known:
            raise ValidationProblem(f"{item.code}: unknown parent agency {item.parent}")
    created = updated = 0
    for item in items:
        row = await session.get(Agency, item.code)
        data = item.model_dump()
        if row is None:
            session.add(Agency.model_validate(data))
            created += 1
        else:
            row.sqlmodel_update(data)
            session.add(row)
            updated += 1
    await session.flush()
    return created, updated
