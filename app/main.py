"""The application factory: settings, database, routers, error handler, worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.agencies.router import router as agencies_router
from app.alerts.fastpath import IngestFastPath
from app.alerts.remote import RemoteWriter
from app.alerts.router import router as alerts_router
from app.alerts.writer import IngestWriter
from app.auth.cache import KeyCache
from app.bootstrap import build_env, open_database
from app.core import collector
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.middleware import RequestContextMiddleware
from app.core.migrate import head_revisions
from app.core.openapi import install_openapi
from app.core.ratelimit import RateLimiter
from app.idempotency.middleware import IdempotencyMiddleware
from app.incidents.router import build_router as build_incidents_router
from app.notifications.router import router as notifications_router
from app.ops.router import router as ops_router
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
        if settings.ingest_socket:
            app.state.ingest = RemoteWriter(settings.ingest_socket, db.events_committed,
                                            db.deliveries_committed, settings.group_by,
                                            settings.raw_alert_max_bytes)
        else:
            app.state.ingest = IngestWriter(db, env, settings.group_by,
                                            settings.raw_alert_max_bytes)
        app.state.ingest.start()
        if run_worker:
            app.state.worker = Worker(db, settings, registry=app.state.notifiers, env=env)
            app.state.worker.start()
        collector.settle()
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
        # FastAPI's OpenTelemetry hooks act only once an OpenTelemetry SDK is configured,
        # which crisisflow does not ship (it exports Prometheus metrics at /metrics); yet
        # looking for one on every request cost ~4 % of the API process's CPU in a storm.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.key_cache = KeyCache()
    app.state.rate_limiter = RateLimiter(settings.ingest_rate_limit, settings.ingest_burst)
    app.state.run_worker = run_worker
    install_error_handlers(app)
    install_openapi(app)

    # Flat, hot path first: FastAPI matches included routers one after the other on every
    # request, so nesting them under one /api/v1 router, or putting ingestion last, costs
    # the storm's requests a walk over every other route.
    for router in (alerts_router, build_incidents_router(workflows), agencies_router,
                   notifications_router, workflows_router, reports_router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(ops_router)
    app.add_middleware(IngestFastPath, prefix=API_PREFIX)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(
        RequestContextMiddleware, max_body=settings.max_body_bytes, access_log=settings.access_log
    )
    return app
