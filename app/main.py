"""The application factory: settings, database, routers, error handler, worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.agencies.router import router as agencies_router
from app.alerts.router import router as alerts_router
from app.alerts.writer import IngestWriter
from app.auth.cache import KeyCache
from app.bootstrap import build_env, open_database
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.errors import Unavailable, install_error_handlers, problem_response
from app.core.middleware import RequestContextMiddleware
from app.core.migrate import current_revisions, head_revisions
from app.idempotency.middleware import IdempotencyMiddleware
from app.incidents.router import build_router as build_incidents_router
from app.notifications.router import router as notifications_router
from app.reports.router import router as reports_router
from app.reports.stream import Broadcaster
from app.worker import Worker
from app.workflows.router import router as workflows_router
from notifiers.base import NotifierContext, NotifierRegistry, make_http_client

log = logging.getLogger("crisisflow")

API_PREFIX = "/api/v1"
DESCRIPTION = """Crisis-response workflow engine for government policy communication
(Directive 7/CT-TTg, 2023): detect communication incidents, assess them, propose task forces,
issue responses through spokespersons, and escalate missed deadlines.

Authenticate with `Authorization: Bearer <api key>` (created with `crisisflow keys create`).
Errors are RFC 9457 `application/problem+json`."""


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> FastAPI:
    settings = settings or get_settings()
    env = build_env(settings)
    workflows = env.workflows

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = open_database(settings)
        app.state.db = db
        app.state.env = env
        app.state.heads = head_revisions()
        app.state.broadcaster = Broadcaster()
        db.event_listeners.append(app.state.broadcaster.notify)
        http = make_http_client(settings)
        app.state.notifiers = NotifierRegistry(NotifierContext(settings=settings, http=http))
        app.state.worker = None
        app.state.ingest = IngestWriter(db, env, settings.group_by, settings.raw_alert_max_bytes)
        app.state.ingest.start()
        if run_worker:
            app.state.worker = Worker(db, settings, registry=app.state.notifiers, env=env)
            app.state.worker.start()
        try:
            yield
        finally:
            await app.state.ingest.stop()
            if app.state.worker is not None:
                await app.state.worker.stop()
            await app.state.notifiers.aclose()
            await http.aclose()
            await db.dispose()

    app = FastAPI(
        title="crisisflow",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache()
    app.state.run_worker = run_worker
    install_error_handlers(app)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(agencies_router)
    api.include_router(build_incidents_router(workflows))
    api.include_router(workflows_router)
    api.include_router(notifications_router)
    api.include_router(alerts_router)
    api.include_router(reports_router)
    app.include_router(api)
    app.include_router(_ops_router())
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(
        RequestContextMiddleware, max_body=settings.max_body_bytes, access_log=settings.access_log
    )
    return app


def _ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        """Liveness: the process answers."""
        return "ok"

    @router.get(
        "/readyz",
        responses={503: {"description": "database unreachable or not migrated"}},
    )
    async def readyz(request: Request) -> Response:
        """Readiness: the database answers and its schema is at the newest migration."""
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
        return Response(content=b'{"status":"ready"}', media_type="application/json")

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics (text format)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


