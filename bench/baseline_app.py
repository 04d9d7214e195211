"""The baseline: a bare FastAPI app whose one route validates the alert body with Pydantic
(`app.alerts.schemas.GenericAlertIn`, one object or a list) and answers 202, touching no
database. Served like crisisflow: `uvicorn bench.baseline_app:app --workers 1 --no-access-log`.

The body is declared the idiomatic FastAPI way (a typed body parameter), so the figure is
"what FastAPI + Pydantic cost on this machine" and every crisisflow throughput is a ratio of it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI
from fastapi.responses import PlainTextResponse, Response

from app.alerts.schemas import GenericAlertIn

app = FastAPI(title="crisisflow-bench-baseline", openapi_url=None, docs_url=None,
              redoc_url=None)


@app.post("/api/v1/alerts", status_code=202)
async def post_alerts(
    body: Annotated[GenericAlertIn | list[GenericAlertIn], Body()],
) -> Response:
    count = len(body) if isinstance(body, list) else 1
    return Response(b'{"accepted":%d}' % count, status_code=202, media_type="application/json")


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    return "ok"
