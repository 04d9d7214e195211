from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import TypeAdapter

from app.alerts import service
from app.alerts.models import AlertPublic, IngestResponse
from app.alerts.parsers import (
    ParsedAlert,
    may_hold_nul,
    parse_alertmanager,
    parse_cap,
    parse_generic,
)
from app.alerts.remote import RemoteWriter
from app.alerts.schemas import AlertmanagerWebhookIn, GenericAlertIn
from app.alerts.writer import DuplicateWebhook, IngestWriter
from app.api.deps import Monitor, Reader, ReadSessionDep, monitor
from app.auth.service import Principal
from app.core.clock import utcnow
from app.core.errors import Unauthenticated, UnsupportedMediaType, ValidationProblem
from app.core.jsonutil import dumps, loads
from app.core.metrics import ALERTS, labelled
from app.core.pagination import MAX_LIMIT, Page
from app.core.ratelimit import RateLimiter
from app.core.signing import SignatureError, verify
from app.incidents.service import get_visible

router = APIRouter(tags=["alerts"])

JSON_TYPES = ("application/json",)
CAP_TYPES = ("application/cap+xml", "application/xml", "text/xml")


def _schema(model: Any) -> dict[str, Any]:
    return TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")


def _body_doc(schema: dict[str, Any], media: tuple[str, ...], example: Any) -> dict[str, Any]:
    defs = schema.pop("$defs", {})
    content = {m: {"schema": schema, "example": example} for m in media}
    return {"requestBody": {"required": True, "content": content}, "x-defs": defs}


GENERIC_EXAMPLE = {
    "source": "social-listening", "title": "Tin giả về chính sách bảo hiểm xã hội",
    "severity": "high", "category": "fake_news",
    "labels": {"topic": "bhxh", "agency": "MOHA", "platform": "facebook"},
}
_generic_doc = _body_doc(_schema(GenericAlertIn | list[GenericAlertIn]), JSON_TYPES,
                         GENERIC_EXAMPLE)
_am_doc = _body_doc(_schema(AlertmanagerWebhookIn), JSON_TYPES, None)
_cap_doc = {"requestBody": {"required": True, "content": {
    m: {"schema": {"type": "string", "description": "An OASIS CAP 1.2 <alert> document"}}
    for m in CAP_TYPES}}}
for doc in (_generic_doc, _am_doc):
    doc.pop("x-defs")


def _media_type(request: Request, allowed: tuple[str, ...]) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(f"send {' or '.join(allowed)}, not {media or 'nothing'}")


def _json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError:
        raise ValidationProblem("the body is not valid JSON",
                                [{"loc": ["body"], "msg": "invalid JSON"}]) from None


def _verify_signature(request: Request, principal: Principal, body: bytes) -> str | None:
    """Monitor keys created with a signing secret must sign every request."""
    if principal.signing_secret is None:
        return None
    h = request.headers
    try:
        verify(principal.signing_secret, h.get("webhook-id"), h.get("webhook-timestamp"),
               h.get("webhook-signature"), body, now=utcnow().timestamp())
    except SignatureError as exc:
        raise Unauthenticated(f"invalid webhook signature: {exc}") from None
    return h.get("webhook-id")


async def _accept(request: Request, principal: Principal, alerts: list[ParsedAlert],
                  webhook_id: str | None) -> Response:
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check(principal.key_id, len(alerts))
    writer: IngestWriter | RemoteWriter = request.app.state.ingest
    try:
        results, replayed = await writer.submit(alerts, principal.actor, principal.key_id,
                                                webhook_id)
    except DuplicateWebhook:
        # A concurrent request with this webhook-id has just committed: replay its result.
        results, replayed = await writer.submit(alerts, principal.actor, principal.key_id,
                                                webhook_id)
    if not replayed:
        for alert, result in zip(alerts, results, strict=True):
            outcome = "deduplicated" if result.deduplicated else result.status
            labelled(ALERTS, alert.format, outcome).inc()
    content = dumps(service.result_body(results))
    return Response(content, status_code=200 if replayed else 202,
                    media_type="application/json")


@dataclass(frozen=True)
class IngestRoute:
    media: tuple[str, ...]
    parse: Callable[[bytes], list[ParsedAlert]]


async def _ingest(request: Request, principal: Principal, route: IngestRoute) -> Response:
    """The steps every ingestion route shares: media type, raw body, signature, parse
    (all-or-nothing), rate limit, store."""
    _media_type(request, route.media)
    body = await request.body()
    webhook_id = _verify_signature(request, principal, body)
    return await _accept(request, principal, route.parse(body), webhook_id)


# Keyed by path below API_PREFIX; `app.alerts.fastpath` serves the same table.
INGEST_ROUTES = {
    "/alerts": IngestRoute(
        JSON_TYPES, lambda b: parse_generic(_json(b), nul_possible=may_hold_nul(b))),
    "/alerts/alertmanager": IngestRoute(JSON_TYPES, lambda b: parse_alertmanager(_json(b))),
    "/alerts/cap": IngestRoute(CAP_TYPES, lambda b: [parse_cap(b)]),
}


async def ingest_request(request: Request, path: str) -> Response:
    """POST `path` (one of INGEST_ROUTES) for a request FastAPI has not routed."""
    return await _ingest(request, await monitor(request), INGEST_ROUTES[path])


@router.post("/alerts", status_code=202, response_model=IngestResponse,
             openapi_extra=_generic_doc, responses={200: {"model": IngestResponse}})
async def post_alerts(request: Request, principal: Monitor) -> Response:
    """One generic alert, or an array of up to 1000 (all-or-nothing)."""
    return await _ingest(request, principal, INGEST_ROUTES["/alerts"])


@router.post("/alerts/alertmanager", status_code=202, response_model=IngestResponse,
             openapi_extra=_am_doc, responses={200: {"model": IngestResponse}})
async def post_alertmanager(request: Request, principal: Monitor) -> Response:
    """A Prometheus Alertmanager webhook (payload version 4)."""
    return await _ingest(request, principal, INGEST_ROUTES["/alerts/alertmanager"])


@router.post("/alerts/cap", status_code=202, response_model=IngestResponse,
             openapi_extra=_cap_doc, responses={200: {"model": IngestResponse}})
async def post_cap(request: Request, principal: Monitor) -> Response:
    """One OASIS CAP 1.2 `<alert>`; Update and Cancel follow `references`."""
    return await _ingest(request, principal, INGEST_ROUTES["/alerts/cap"])


@router.get("/incidents/{incident_id}/alerts", response_model=Page[AlertPublic],
            tags=["incidents"])
async def incident_alerts(incident_id: str, principal: Reader, session: ReadSessionDep,
                          limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
                          cursor: str | None = None) -> Page[AlertPublic]:
    """Alerts attached to an incident, newest first."""
    await get_visible(session, incident_id, principal)
    return await service.list_for_incident(session, incident_id, limit, cursor)


