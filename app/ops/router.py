"""Liveness, readiness (with the worker's backlog) and Prometheus metrics."""

import logging

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core.db import Database
from app.core.errors import Unavailable, problem_response
from app.core.jsonutil import dumps
from app.core.metrics import OUTBOX_BACKLOG, OUTBOX_OLDEST
from app.core.migrate import current_revisions
from app.deadlines.firing import overdue_count
from app.notifications.delivery import backlog

log = logging.getLogger("crisisflow")
router = APIRouter(tags=["operations"])


@router.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    """Liveness: the process answers."""
    return "ok"


async def _outbox(db: Database) -> tuple[int, float]:
    async with db.read() as session:
        count, oldest = await backlog(session)
    OUTBOX_BACKLOG.set(count)
    OUTBOX_OLDEST.set(oldest)
    return count, oldest


@router.get("/readyz", responses={503: {"description": "database unreachable or not migrated"}})
async def readyz(request: Request) -> Response:
    """Readiness: the database answers, its schema is at the newest migration, and alert
    ingestion (the ingest process, when there is one) accepts alerts. The body
    also shows the outbox backlog and the age of the oldest due delivery."""
    db: Database = request.app.state.db
    try:
        async with db.read_engine.connect() as conn:
            current = await current_revisions(conn)
    except Exception as exc:  # any failure to reach the database means "not ready"
        log.warning("readiness check failed: %s", type(exc).__name__)
        return problem_response(Unavailable("The database is unreachable."), "/readyz")
    if current != request.app.state.heads:
        return problem_response(
            Unavailable("The database schema is not at the newest migration."), "/readyz"
        )
    if not await request.app.state.ingest.ready():
        return problem_response(Unavailable("Alert ingestion is starting."), "/readyz")
    count, oldest = await _outbox(db)
    body = {"status": "ready", "outbox_backlog": count, "oldest_due_seconds": round(oldest, 3)}
    return Response(content=dumps(body), media_type="application/json")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text format); gauges read from the database at scrape time."""
    db: Database = request.app.state.db
    try:
        await _outbox(db)
        await overdue_count(db)
    except Exception as exc:  # a scrape must still answer while the database is down
        log.warning("metrics: database gauges unavailable: %s", type(exc).__name__)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
