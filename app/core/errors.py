"""Domain errors and the one place that turns every error into RFC 9457 problem+json.

ProblemError
 ├── NotFound (404)             ├── InvalidTransition (409)   ├── PayloadTooLarge (413)
 ├── Unauthenticated (401)      ├── GuardFailed (409)         ├── UnsupportedMediaType (415)
 ├── Forbidden (403)            ├── PreconditionFailed (412)  ├── RateLimited (429)
 ├── BadRequest (400)           ├── ValidationProblem (422)   └── Unavailable (503)
 └── Conflict (409)             └── IdempotencyMismatch (422)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    OperationalError,
    PendingRollbackError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.core.jsonutil import dumps

log = logging.getLogger("crisisflow.errors")
PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    status = 500
    type = "/problems/internal"
    title = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(ProblemError):
    status, type, title = 400, "/problems/validation", "Bad request"


class Unauthenticated(ProblemError):
    status, type, title = 401, "/problems/unauthenticated", "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(ProblemError):
    status, type, title = 403, "/problems/forbidden", "Forbidden"


class NotFound(ProblemError):
    status, type, title = 404, "/problems/not-found", "Not found"


class Conflict(ProblemError):
    status, type, title = 409, "/problems/conflict", "Conflict"


class InvalidTransition(ProblemError):
    status, type, title = 409, "/problems/invalid-transition", "Transition not allowed"


class GuardFailed(ProblemError):
    status, type, title = 409, "/problems/guard-failed", "Guard failed"


class PreconditionFailed(ProblemError):
    status, type, title = 412, "/problems/precondition-failed", "Precondition failed"


class PayloadTooLarge(ProblemError):
    status, type, title = 413, "/problems/payload-too-large", "Payload too large"


class UnsupportedMediaType(ProblemError):
    status, type, title = 415, "/problems/unsupported-media-type", "Unsupported media type"


class ValidationProblem(ProblemError):
    status, type, title = 422, "/problems/validation", "Validation failed"

    def __init__(self, detail: str | None = None, errors: Sequence[dict[str, Any]] = ()) -> None:
        errs = list(errors) or [{"loc": [], "msg": detail or self.title}]
        super().__init__(detail or errs[0]["msg"], errors=errs)


class IdempotencyMismatch(ProblemError):
    status, type, title = 422, "/problems/idempotency-mismatch", "Idempotency key reused"


class RateLimited(ProblemError):
    status, type, title = 429, "/problems/rate-limited", "Too many requests"


class Unavailable(ProblemError):
    status, type, title = 503, "/problems/unavailable", "Service unavailable"


def problem_response(problem: ProblemError, instance: str | None = None) -> Response:
    return Response(
        content=dumps(problem.body(instance)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def _jsonable_loc(loc: Sequence[Any]) -> list[Any]:
    return [part if isinstance(part, int | str) else str(part) for part in loc]


def validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        out.append({"loc": _jsonable_loc(err.get("loc", ())), "msg": msg, "type": err.get("type")})
    return out


_STATUS_PROBLEMS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationProblem,
    429: RateLimited,
    503: Unavailable,
}


def is_database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout | PendingRollbackError):
        # PendingRollbackError: the connection died inside a transaction being rolled back.
        return True
    if isinstance(exc, OperationalError):
        text = str(exc.orig if exc.orig is not None else exc).lower()
        busy = "database is locked" in text or "database is busy" in text
        return busy or exc.connection_invalidated or _looks_like_connection_error(text)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | OSError) and not isinstance(exc, FileNotFoundError)


def _looks_like_connection_error(text: str) -> bool:
    needles = ("connection", "server closed", "terminating", "could not connect", "timeout")
    return any(n in text for n in needles)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = validation_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return problem_response(ValidationProblem(detail, errors), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        cls = _STATUS_PROBLEMS.get(exc.status_code)
        if cls is None:
            problem = ProblemError(str(exc.detail))
            problem.status = exc.status_code
            problem.type = "/problems/method-not-allowed" if exc.status_code == 405 else (
                "/problems/internal" if exc.status_code >= 500 else "/problems/validation"
            )
            problem.title = "Method not allowed" if exc.status_code == 405 else "Error"
        else:
            problem = cls(str(exc.detail))
        problem.headers.update(exc.headers or {})
        return problem_response(problem, request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up while sending its body (a load generator stopping, a timeout):
        # nothing to answer and nothing wrong with the service.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(SQLAlchemyError)
    async def _database(request: Request, exc: SQLAlchemyError) -> Response:
        return _database_problem(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if is_database_unavailable(exc):
            return _database_problem(request, exc)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        problem = ProblemError("An unexpected error occurred; it has been logged.")
        return problem_response(problem, request.url.path)


async def handle_error(request: Request, exc: Exception) -> Response:
    """The response the application's exception handlers give `exc`, for code serving a
    request outside FastAPI's routing (`app.alerts.fastpath`)."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc


def _database_problem(request: Request, exc: BaseException) -> Response:
    if isinstance(exc, DataError):
        # Values the database cannot hold (a NUL character in PostgreSQL text, a number out
        # of range) are bad input, not a server fault.
        msg = "a value in the request cannot be stored (NUL character or number out of range)"
        return problem_response(ValidationProblem(msg, [{"loc": ["body"], "msg": msg}]),
                                request.url.path)
    if is_database_unavailable(exc):
        log.warning("database unavailable: %s", type(exc).__name__)
        problem: ProblemError = Unavailable(
            "The database is unreachable; try again shortly.", headers={"Retry-After": "5"}
        )
    else:
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        problem = ProblemError("An unexpected error occurred; it has been logged.")
    return problem_response(problem, request.url.path)
