"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the ingest hot path)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge, problem_response
from app.core.ids import new_id
from app.core.metrics import REQUEST_SECONDS, REQUESTS, labelled

access = logging.getLogger("crisisflow.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Request id (`X-Request-ID` accepted and echoed), body-size limit, access log, metrics."""

    def __init__(self, app: ASGIApp, max_body: int, access_log: bool = True) -> None:
        self.app = app
        self.max_body = max_body
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = ""
        declared = 0
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _REQUEST_ID.match(candidate) else ""
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
        request_id = request_id or new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        rid_header = (b"x-request-id", request_id.encode())

        async def send_wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        if declared > self.max_body:
            await self._too_large(scope, receive, send_wrapped)
        else:
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_wrapped)
            except _BodyTooLarge:
                await self._too_large(scope, receive, send_wrapped)
        duration = time.perf_counter() - start
        route = _route_template(scope)
        labelled(REQUESTS, scope["method"], route, str(status)).inc()
        labelled(REQUEST_SECONDS, route).observe(duration)
        if self.access_log:
            access.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 2),
                    "request_id": request_id,
                },
            )

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = PayloadTooLarge(f"Request bodies are limited to {self.max_body} bytes.")
        response = problem_response(problem, scope["path"])
        await response(scope, receive, send)


API_PREFIX = "/api/v1"


def _route_template(scope: Scope) -> str:
    """The matched route's template (bounded label values for metrics). Routes of included
    routers carry their path without the router's prefix."""
    route: Any = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not path:
        return "unmatched"
    if scope["path"].startswith(API_PREFIX) and not str(path).startswith(API_PREFIX):
        return API_PREFIX + str(path)
    return str(path)
