from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import Reader, ReadSessionDep
from app.core.clock import utcnow
from app.core.errors import ValidationProblem
from app.core.jsonutil import dumps
from app.reports import service
from app.reports.models import SpokespersonReport, Stats
from app.reports.stream import latest_seq, stream

router = APIRouter(tags=["live and reports"])


@router.get("/events/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events"}})
async def events_stream(
    request: Request,
    principal: Reader,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, description="Resume after this event id")] = None,
) -> StreamingResponse:
    """Live events (`id:` lines; reconnect with `Last-Event-ID` to resume without gaps)."""
    db = request.app.state.db
    start = after
    if start is None and last_event_id:
        try:
            start = int(last_event_id)
        except ValueError:
            raise ValidationProblem("Last-Event-ID must be an event id from this stream",
                                    [{"loc": ["header", "Last-Event-ID"],
                                      "msg": "not an integer"}]) from None
    if start is None:
        start = await latest_seq(db)
    settings = request.app.state.settings
    body = stream(db, request.app.state.broadcaster, principal, start,
                  settings.sse_heartbeat_seconds)
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/stats", response_model=Stats)
async def get_stats(principal: Reader, session: ReadSessionDep) -> Stats:
    """Counts by state, severity and category; open overdue; median times."""
    return await service.stats(session, principal)


@router.get("/reports/spokesperson", response_model=SpokespersonReport,
            responses={200: {"content": {"text/csv": {}}}})
async def spokesperson_report(
    request: Request,
    principal: Reader,
    session: ReadSessionDep,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    agency: str | None = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Per lead agency: incidents, incidents with a response, first responses on time (before
    the first_response deadline), median minutes to first response. CSV with
    `Accept: text/csv`."""
    now = utcnow()
    zone = request.app.state.settings.zone
    start = from_ or service.default_period(now, zone)
    end = to or now
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None:
            raise ValidationProblem(f"{name} needs a time zone offset",
                                    [{"loc": ["query", name], "msg": "naive datetime"}])
    if end <= start:
        raise ValidationProblem("`to` must be after `from`",
                                [{"loc": ["query", "to"], "msg": "empty period"}])
    report = await service.spokesperson(session, principal, start, end, agency)
    if accept and "text/csv" in accept:
        return Response(service.report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="spokesperson.csv"'})
    return Response(dumps(report.model_dump(mode="json", by_alias=True)),
                    media_type="application/json")
