"""Alert parsing: generic JSON, Alertmanager webhooks and CAP 1.2 into one `ParsedAlert`.

Pure functions, no database and no HTTP: the ingest service decides what an alert does. Every
malformed input ends as ValidationProblem (422) or BadRequest (400), never as another
exception, because the ingest path turns anything else into a 500.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from app.alerts.cap import MsgType, read_cap
from app.alerts.schemas import (
    AlertmanagerAlertIn,
    AlertmanagerWebhookIn,
    GenericAlertIn,
    is_http_url,
    render_loc,
    single_problem,
    validation_problem,
)
from app.core.jsonutil import canonical

__all__ = [
    "CATEGORIES",
    "MAX_BATCH",
    "ParsedAlert",
    "Severity",
    "generic_fingerprint",
    "map_category",
    "map_severity",
    "parse_alertmanager",
    "parse_cap",
    "parse_generic",
]

Severity = Literal["low", "medium", "high", "critical"]
CATEGORIES = ("fake_news", "negative_sentiment", "policy_misunderstanding", "crisis", "other")
MAX_BATCH = 1000
# Incident limits; Alertmanager and CAP texts are written by people and may run longer, and
# a long summary is better shortened than the whole notification refused.
MAX_TITLE = 500
MAX_DESCRIPTION = 20000
MAX_SOURCE = 200


@dataclass(slots=True)
class ParsedAlert:
    format: Literal["generic", "alertmanager", "cap"]
    source: str
    fingerprint: str
    status: Literal["firing", "resolved"]
    title: str
    description: str | None
    severity: Severity
    category: str
    labels: dict[str, str]
    lead_agency: str | None
    affected_agencies: list[str]
    links: list[str]
    observed_at: datetime | None
    metrics: dict[str, float]
    raw: Any
    msg_type: MsgType = "Alert"
    references: list[str] = field(default_factory=list)
    # Set by `app.alerts.service.prepare` (the parsers leave them): the grouping key, and
    # `raw` turned into the text stored with the alert.
    group_key: str | None = None
    prepared: bool = False


_SEVERITY_WORDS: dict[str, Severity] = {
    "critical": "critical", "page": "critical", "emergency": "critical", "extreme": "critical",
    "high": "high", "error": "high", "major": "high", "severe": "high",
    "medium": "medium", "warning": "medium", "minor": "medium", "moderate": "medium",
}  # fmt: skip
_SEVERITY_RANK: dict[Severity, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_CATEGORY_SET = frozenset(CATEGORIES)


def map_severity(word: str | None) -> Severity:
    """The api.md severity table, case-insensitive; unknown, empty and missing words are low."""
    if not word:
        return "low"
    return _SEVERITY_WORDS.get(word.strip().lower(), "low")


def map_category(word: str | None) -> str:
    if not word:
        return "other"
    category = word.strip().lower()
    return category if category in _CATEGORY_SET else "other"


def generic_fingerprint(source: str, labels: dict[str, str], title: str) -> str:
    """Stable across processes and label order: sha256 of canonical JSON, 32 hex chars."""
    # A dict and a string never serialise alike, so the two forms cannot collide.
    material: list[Any] = [source, labels] if labels else [source, title]
    return hashlib.sha256(canonical(material)).hexdigest()[:32]


def _agencies(labels: dict[str, str]) -> tuple[str | None, list[str]]:
    lead = (labels.get("agency") or "").strip() or None
    affected: list[str] = []
    for code in (labels.get("agencies") or "").split(","):
        code = code.strip()
        if code and code not in affected:
            affected.append(code)
    return lead, affected


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- pydantic errors -> problem details -------------------------------------------------------

_NOT_AN_OBJECT = "must be a JSON object"
_MESSAGE_OVERRIDES = {
    "model_type": _NOT_AN_OBJECT,
    "model_attributes_type": _NOT_AN_OBJECT,
    "dict_type": _NOT_AN_OBJECT,
    "list_type": "must be a JSON array",
}


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # No input and no context: both may echo the sender's data (or hold exception objects).
    out = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        msg = _MESSAGE_OVERRIDES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        out.append({"loc": list(err["loc"]), "msg": msg, "type": err["type"]})
    return out


# PostgreSQL cannot store U+0000 in text or JSON; JSON can carry it (as \u0000), so it is
# refused up front as bad input instead of failing the insert with a 500.
_NUL = "\x00"
_NUL_MSG = "must not contain the NUL character (U+0000)"


def _nul_loc(value: Any, loc: list[Any]) -> list[Any] | None:
    """The location of the first string (or object key) holding a NUL character."""
    if isinstance(value, str):
        return loc if _NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _NUL in key:
                return [*loc, key.replace(_NUL, "")]
            found = _nul_loc(item, [*loc, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_loc(item, [*loc, index])
            if found is not None:
                return found
    return None


def may_hold_nul(raw: bytes) -> bool:
    """Whether a JSON document can decode to a string holding NUL: JSON has no other way to
    write it than the escape `\\u0000`, so a body without that escape skips the walk over
    every value (a tenth of the time of a 1,000-alert array)."""
    return b"\\u0000" in raw


def _reject_nul(body: Any) -> None:
    loc = _nul_loc(body, [])
    if loc is not None:
        raise single_problem(loc, _NUL_MSG)


# --- generic -------------------------------------------------------------------------------

# Built once: schema construction is the slow part of pydantic, validation is not.
_GENERIC_BATCH: TypeAdapter[list[GenericAlertIn]] = TypeAdapter(list[GenericAlertIn])


def parse_generic(body: Any, *, nul_possible: bool = True) -> list[ParsedAlert]:
    """One generic alert object, or an array of 1..1000; all-or-nothing. `nul_possible=False`
    when the raw body was checked with `may_hold_nul`."""
    if isinstance(body, dict):
        if nul_possible:
            _reject_nul(body)
        try:
            alert = GenericAlertIn.model_validate(body)
        except ValidationError as exc:
            raise validation_problem(_errors(exc)) from None
        return [_from_generic(alert, body)]

    if not isinstance(body, list):
        raise single_problem([], "the body must be an alert object or an array of alerts")
    if not body or len(body) > MAX_BATCH:
        raise single_problem(
            [], f"a batch must hold between 1 and {MAX_BATCH} alerts; it holds {len(body)}"
        )
    if nul_possible:
        _reject_nul(body)
    try:
        alerts = _GENERIC_BATCH.validate_python(body)
    except ValidationError as exc:
        errors = _errors(exc)
        index, *rest = errors[0]["loc"]
        where = render_loc(rest)
        first = f"alert {index}: " + (f"{where}: " if where else "") + errors[0]["msg"]
        raise validation_problem(errors, first) from None
    return [_from_generic(alert, raw) for alert, raw in zip(alerts, body, strict=True)]


def _from_generic(alert: GenericAlertIn, raw: dict[str, Any]) -> ParsedAlert:
    labels = alert.labels
    lead, affected = _agencies(labels)
    severity = alert.severity if alert.severity and alert.severity.strip() else None
    category = alert.category if alert.category and alert.category.strip() else None
    return ParsedAlert(
        format="generic",
        source=alert.source,
        fingerprint=alert.fingerprint or generic_fingerprint(alert.source, labels, alert.title),
        status=alert.status,
        title=alert.title,
        description=alert.description or None,
        severity=map_severity(severity or labels.get("severity")),
        category=map_category(category or labels.get("category")),
        labels=dict(labels),
        lead_agency=lead,
        affected_agencies=affected,
        links=[alert.url] if alert.url else [],
        observed_at=alert.observed_at,
        metrics=dict(alert.metrics),
        raw=raw,
    )


# --- Alertmanager ----------------------------------------------------------------------------

_ALERTMANAGER_CONTEXT = ("receiver", "groupKey", "externalURL")


def parse_alertmanager(body: Any) -> list[ParsedAlert]:
    """An Alertmanager webhook payload, version "4"; one ParsedAlert per entry of `alerts`."""
    if not isinstance(body, dict):
        raise single_problem([], "the body must be an Alertmanager webhook payload (an object)")
    # Checked first and alone: another version has another shape, so listing its other
    # "errors" would only bury the real problem.
    if body.get("version") != "4":
        raise single_problem(
            ["version"], 'version must be "4" (the webhook payload of Alertmanager 0.25 and later)'
        )
    _reject_nul(body)
    try:
        payload = AlertmanagerWebhookIn.model_validate(body)
    except ValidationError as exc:
        raise validation_problem(_errors(exc)) from None

    # Receiver names come from Alertmanager's configuration and may be long; the source is
    # stored in 200 characters.
    source = f"alertmanager/{payload.receiver}" if payload.receiver else "alertmanager"
    source = _clip(source, MAX_SOURCE)
    context = {key: body[key] for key in _ALERTMANAGER_CONTEXT if key in body}
    return [
        _from_alertmanager(alert, raw, source, context)
        for alert, raw in zip(payload.alerts, body["alerts"], strict=True)
    ]


def _from_alertmanager(
    alert: AlertmanagerAlertIn, raw: dict[str, Any], source: str, context: dict[str, Any]
) -> ParsedAlert:
    labels = alert.labels
    annotations = alert.annotations
    lead, affected = _agencies(labels)
    title = (
        annotations.get("summary", "").strip()
        or labels.get("alertname", "").strip()
        or f"Alertmanager alert {alert.fingerprint}"
    )
    description = annotations.get("description") or None
    url = alert.generatorURL
    return ParsedAlert(
        format="alertmanager",
        source=source,
        fingerprint=alert.fingerprint,
        status=alert.status,
        title=_clip(title, MAX_TITLE),
        description=_clip(description, MAX_DESCRIPTION) if description else None,
        severity=map_severity(labels.get("severity")),
        category=map_category(labels.get("category")),
        labels=dict(labels),
        lead_agency=lead,
        affected_agencies=affected,
        # Relative or empty generator URLs (Prometheus without --web.external-url) lead
        # nowhere for a reader of the incident, so they stay in `raw` only.
        links=[url] if url and is_http_url(url) else [],
        observed_at=alert.startsAt,
        metrics={},
        raw={**raw, **context},
    )


# --- CAP 1.2 -------------------------------------------------------------------------------


def parse_cap(document: bytes | str) -> ParsedAlert:
    """One CAP 1.2 `<alert>` document: bytes as received (any declared encoding) or text."""
    cap = read_cap(document)
    first = cap.infos[0]

    labels: dict[str, str] = {}
    for info in cap.infos:
        for name, value in info.parameters:
            # Several <info> blocks usually repeat one warning in several languages; the
            # first (the sender's primary language) wins.
            labels.setdefault(name, value)
    labels["cap_event"] = first.event
    # Test, Exercise, Draft and System messages must not open real incidents.
    labels["cap_status"] = cap.status
    lead, affected = _agencies(labels)

    title = next((info.headline for info in cap.infos if info.headline), first.event)
    description = next((info.description for info in cap.infos if info.description), None)
    # Different <info> blocks may grade different areas or audiences; the incident has to
    # carry the worst of them.
    severity = max(
        (map_severity(info.severity) for info in cap.infos), key=_SEVERITY_RANK.__getitem__
    )
    links: list[str] = []
    for info in cap.infos:
        if info.web and is_http_url(info.web) and info.web not in links:
            links.append(info.web)

    return ParsedAlert(
        format="cap",
        source=f"cap/{cap.sender}",
        fingerprint=cap.identifier,
        status="resolved" if cap.msg_type == "Cancel" else "firing",
        title=_clip(title, MAX_TITLE),
        description=_clip(description, MAX_DESCRIPTION) if description else None,
        severity=severity,
        category=map_category(labels.get("category")),
        labels=labels,
        lead_agency=lead,
        affected_agencies=affected,
        links=links,
        observed_at=cap.sent,
        metrics={},
        raw=cap.text,
        msg_type=cap.msg_type,
        references=list(cap.references),
    )
