"""`Idempotency-Key` on POST: the same key and body within 24 h replays the first response
(same status, same body); the same key with another body is 422.

The key is reserved in its own short transaction before the request runs, so two
concurrent requests with one key cannot both execute: the second gets 409 until the first
has finished. Keys are per caller (the hash of the Authorization header)."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.clock import utcnow
from app.core.db import Database
from app.core.errors import Conflict, IdempotencyMismatch, ValidationProblem, problem_response
from app.core.types import table_of
from app.idempotency.models import IdempotencyRecord

log = logging.getLogger("crisisflow.idempotency")
TTL = timedelta(hours=24)
MAX_KEY = 200
REPLAYED_HEADERS = ("content-type", "location", "etag")
# Not stored: answers that say nothing about the request itself, so a retry should run it.
NOT_STORED = {401, 403, 408, 409, 425, 429}


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(b"idempotency-key")
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY:
            msg = f"Idempotency-Key must be 1 to {MAX_KEY} characters"
            problem = ValidationProblem(msg, [{"loc": ["header", "Idempotency-Key"], "msg": msg}])
            await problem_response(problem, scope["path"])(scope, receive, send)
            return
        body = await _read_body(receive)
        principal = hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()
        digest = hashlib.sha256(scope["path"].encode() + b"\n" + body).hexdigest()
        db: Database = scope["app"].state.db
        try:
            replay = await _reserve(db, principal, key, digest)
        except _Problem as exc:
            await problem_response(exc.problem, scope["path"])(scope, receive, send)
            return
        if replay is not None:
            await _send_replay(replay, scope, receive, send)
            return

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def send_capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        sent = False

        async def receive_body() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, receive_body, send_capture)
        finally:
            await _finish(db, principal, key, captured)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        elif message["type"] == "http.disconnect":
            break
    return b"".join(chunks)


async def _reserve(db: Database, principal: str, key: str, digest: str) -> Any:
    """Reserve the key; or return the stored record to replay; or raise a problem."""
    now = utcnow()
    table = table_of(IdempotencyRecord)  # type: ignore[attr-defined]
    insert = sqlite_insert if db.is_sqlite else pg_insert
    async with db.transaction() as session:
        await session.execute(
            sa.delete(table).where(table.c.principal == principal, table.c.key == key,
                                   table.c.created_at < now - TTL)
        )
        stmt = insert(table).values(principal=principal, key=key, request_hash=digest,
                                    status=None, headers={}, body=None, created_at=now)
        # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
        inserted = await session.execute(stmt.on_conflict_do_nothing().returning(table.c.key))
        if inserted.first() is not None:
            return None
        row = (await session.execute(
            sa.select(table).where(table.c.principal == principal, table.c.key == key)
        )).one()
    if row.request_hash != digest:
        raise _Problem(IdempotencyMismatch(
            "This Idempotency-Key was used with a different request body."))
    if row.status is None:
        raise _Problem(Conflict("A request with this Idempotency-Key is still in progress."))
    return row


class _Problem(Exception):
    def __init__(self, problem: Any) -> None:
        self.problem = problem


async def _send_replay(row: Any, scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(k.encode(), str(v).encode()) for k, v in row.headers.items()]
    headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": row.status, "headers": headers})
    await send({"type": "http.response.body", "body": row.body or b""})


async def _finish(db: Database, principal: str, key: str, captured: dict[str, Any]) -> None:
    table = table_of(IdempotencyRecord)  # type: ignore[attr-defined]
    where = sa.and_(table.c.principal == principal, table.c.key == key)
    status = int(captured["status"])
    try:
        async with db.transaction() as session:
            if status >= 500 or status in NOT_STORED:
                await session.execute(sa.delete(table).where(where))
            else:
                kept = {k.decode().lower(): v.decode("latin-1") for k, v in captured["headers"]
                        if k.decode().lower() in REPLAYED_HEADERS}
                await session.execute(sa.update(table).where(where).values(
                    status=status, headers=kept, body=bytes(captured["body"])))
    except Exception:
        # The response has gone out already; a lost record only means a retry runs again.
        log.exception("could not record the Idempotency-Key result")
