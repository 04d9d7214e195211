"""Ingestion without FastAPI's routing and dependency solving.

An alert storm is thousands of small POSTs. FastAPI spends more on each of them (walking the
routes, solving the key dependency, its exception and exit-stack layers) than the route's own
work outside the database: 130 of 260 µs in-process. The ingestion routes take no path or
query parameters and validate their bodies themselves, so this layer serves them with the very
functions the FastAPI routes call (`app.alerts.router.ingest_request`) and the application's
own exception handlers. It sits inside the request-context and idempotency middleware, which
therefore behave the same for both. The FastAPI routes stay for the OpenAPI document and
anything this layer passes on.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.alerts.router import INGEST_ROUTES, ingest_request, router
from app.core.errors import handle_error


class IngestFastPath:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        # The route objects go into the scope as the router would put them (for the
        # metrics' route label); an included router's routes carry paths without its prefix.
        self.table: dict[str, tuple[str, Any]] = {
            prefix + route.path: (route.path, route) for route in router.routes
            if isinstance(route, APIRoute) and route.path in INGEST_ROUTES
            and "POST" in (route.methods or ())}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                (hit := self.table.get(scope["path"])) is None:
            await self.app(scope, receive, send)
            return
        path, route = hit
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            response = await ingest_request(request, path)
        except Exception as exc:
            response = await handle_error(request, exc)
        await response(scope, receive, send)
