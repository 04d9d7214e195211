"""Pydantic input models for the JSON alert formats (generic and Alertmanager webhook v4).

The models only validate shape; mapping onto incident fields lives in `app.alerts.parsers`.
Extra fields are ignored everywhere: monitoring tools add fields over time and a new field
must never turn a delivery into a 422.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    Strict,
    StringConstraints,
    TypeAdapter,
)
from pydantic_core import SchemaValidator

from app.core.errors import ValidationProblem

# RFC 3339 only: pydantic's own datetime parsing also takes unix timestamps, bare dates and
# numbers, which would silently turn a wrong field into a date in 1970.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_HTTP_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?", re.IGNORECASE)
MAX_URL_LENGTH = 2048


def parse_rfc3339(text: str, *, require_offset: bool) -> datetime:
    """An RFC 3339 timestamp as aware UTC; without an offset (when allowed) it is taken as UTC.

    Raises ValueError with a message fit for a 422.
    """
    match = _RFC3339.fullmatch(text)
    if match is None or (require_offset and match["tz"] is None):
        example = "2026-11-26T10:18:20+07:00"
        kind = "date-time with offset" if require_offset else "date-time"
        raise ValueError(f"must be an RFC 3339 {kind}, e.g. {example}")
    try:
        # fromisoformat wants upper-case T/Z, which RFC 3339 lets senders write in lower case.
        value = datetime.fromisoformat(text.upper())
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid calendar date-time or is out of range") from None


def _url_check(url_type: Any) -> SchemaValidator:
    """The URL parser and constraints of `url_type`, without the Python wrapper that builds a
    `url_type` around the result: a third of the cost, for the link of every alert of a storm
    (1.5 -> 0.4 µs a link)."""
    schema: Any = TypeAdapter(url_type).core_schema
    if schema["type"] == "function-wrap" and schema["schema"]["type"] == "url":
        schema = schema["schema"]
    return SchemaValidator(schema)


_ANY_HTTP_URL = _url_check(AnyHttpUrl)


def is_http_url(text: str) -> bool:
    if len(text) > MAX_URL_LENGTH or _HTTP_URL.fullmatch(text) is None:
        return False
    # The incident's `links` check (AnyHttpUrl) is stricter than the pattern (ports, IP
    # addresses, percent signs and brackets in the host): a link it refuses must be caught
    # here, or opening the incident fails with a 500.
    try:
        _ANY_HTTP_URL.validate_python(text)
    except ValueError:
        return False
    return True


def _timestamp(value: Any) -> Any:
    if isinstance(value, datetime):
        # Only reachable from Python callers; JSON bodies always give strings.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range") from None
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    return parse_rfc3339(value, require_offset=False)


def _go_timestamp(value: Any) -> Any:
    parsed = _timestamp(value)
    # Alertmanager sends Go's zero time ("0001-01-01T00:00:00Z") for "not set"; nothing
    # real happens in year 1, so any year-1 value means unset.
    return None if parsed.year == 1 else parsed


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _http_url(value: str) -> str:
    if not is_http_url(value):
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


NotBlank = AfterValidator(_not_blank)
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
GoTimestamp = Annotated[datetime | None, BeforeValidator(_go_timestamp)]
HttpUrlText = Annotated[
    str, StringConstraints(max_length=MAX_URL_LENGTH), AfterValidator(_http_url)
]
# JSON numbers only: lax floats would also take "12" and true, hiding broken exporters.
MetricValue = Annotated[float, Strict(), AllowInfNan(False)]
Status = Literal["firing", "resolved"]


class GenericAlertIn(BaseModel):
    """One alert in the generic format (`POST /alerts`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: Annotated[str, StringConstraints(min_length=1, max_length=200), NotBlank]
    title: Annotated[str, StringConstraints(min_length=1, max_length=500), NotBlank]
    description: Annotated[str, StringConstraints(max_length=20000)] | None = None
    fingerprint: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    status: Status = "firing"
    severity: str | None = None
    category: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    url: HttpUrlText | None = None
    observed_at: Timestamp | None = None
    metrics: dict[str, MetricValue] = Field(default_factory=dict)


class AlertmanagerAlertIn(BaseModel):
    """One entry of `alerts` in an Alertmanager webhook payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Status
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: GoTimestamp
    endsAt: GoTimestamp
    # Prometheus may be configured without an external URL, leaving this empty or relative.
    generatorURL: str
    fingerprint: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class AlertmanagerWebhookIn(BaseModel):
    """Alertmanager webhook payload, version "4" (Alertmanager 0.25 and later)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    receiver: str = ""
    status: Status | None = None
    alerts: list[AlertmanagerAlertIn]
    groupKey: str | None = None
    externalURL: str | None = None
    truncatedAlerts: NonNegativeInt = 0
    notification_reason: str | None = None


# A 1 MiB body can hold tens of thousands of broken values; past this many the list stops
# helping the sender and only bloats the response.
MAX_REPORTED_ERRORS = 100


def render_loc(loc: list[Any]) -> str:
    """["alerts", 0, "status"] -> "alerts[0].status"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def validation_problem(errors: list[dict[str, Any]], first: str | None = None) -> ValidationProblem:
    """A 422 whose detail names the first problem (`first` overrides how) and counts the rest."""
    if first is None:
        where = render_loc(errors[0]["loc"])
        first = f"{where}: {errors[0]['msg']}" if where else str(errors[0]["msg"])
    more = len(errors) - 1
    if more:
        first += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ValidationProblem(first, errors[:MAX_REPORTED_ERRORS])


def single_problem(loc: list[Any], msg: str) -> ValidationProblem:
    return validation_problem([{"loc": loc, "msg": msg}])
