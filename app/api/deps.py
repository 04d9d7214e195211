"""Dependencies named once, so route signatures read like sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.cache import KeyCache
from app.auth.models import Role
from app.auth.service import Principal, authenticate
from app.core.db import Database
from app.core.errors import Forbidden, Unauthenticated


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


# Dependencies are coroutines even when they do no I/O: FastAPI runs a plain function in a
# worker thread, a hand-off (and a wait for the GIL behind the event loop) on every request.
async def _db_dep(request: Request) -> Database:
    return get_db(request)


DatabaseDep = Annotated[Database, Depends(_db_dep)]


# The request itself rather than a nested DatabaseDep: each dependency FastAPI solves costs
# every request, and lists are the most frequent reads.
async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_db(request).transaction() as session:
        yield session


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_db(request).read() as session:
        yield session


# scope="function": the transaction commits when the route returns, before the response is
# sent, so a client never sees a 2xx for a write that then fails to commit.
SessionDep = Annotated[AsyncSession, Depends(_write_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(_read_session, scope="function")]


async def current_principal(request: Request) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    cache: KeyCache = request.app.state.key_cache
    db = get_db(request)
    principal = await cache.get_or_load(token.strip(), lambda key: _load_principal(db, key))
    if principal is None:
        raise Unauthenticated("The API key is unknown or revoked.")
    request.state.principal = principal
    return principal


async def _load_principal(db: Database, key: str) -> Principal | None:
    async with db.read() as session:
        return await authenticate(session, key)


def require(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting `roles` (and admin, which may do everything). It takes the
    request itself rather than nested dependencies: every route pays for each dependency
    FastAPI solves, and an alert storm is many small requests."""
    allowed = {Role.admin, *roles}

    async def _check(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal.role not in allowed:
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    return _check


READERS = (Role.duty_officer, Role.leader, Role.viewer)
Reader = Annotated[Principal, Depends(require(*READERS))]
DutyOfficer = Annotated[Principal, Depends(require(Role.duty_officer))]
Leader = Annotated[Principal, Depends(require(Role.leader))]
Admin = Annotated[Principal, Depends(require())]
# Also called directly by the ingestion fast path (`app.alerts.fastpath`).
monitor = require(Role.monitor)
Monitor = Annotated[Principal, Depends(monitor)]
