"""OASIS CAP 1.2 documents: hardened XML parsing and validation of the elements we map.

This module knows CAP, not incidents: it returns a validated `CapAlert`, and
`app.alerts.parsers.parse_cap` maps that onto a `ParsedAlert`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from xml.etree.ElementTree import Element

# defusedxml ships no type hints; the one call used is wrapped and its result cast below.
import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]

from app.alerts.schemas import parse_rfc3339, single_problem, validation_problem
from app.core.errors import BadRequest

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
_PREFIX = "{" + CAP_NS + "}"
_PREFIX_LEN = len(_PREFIX)

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
INFO_CATEGORIES = (
    "Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport",
    "Infra", "CBRNE", "Other",
)  # fmt: skip
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")

MsgType = Literal["Alert", "Update", "Cancel", "Ack", "Error"]

# The same bound as a generic alert's fingerprint/source, since these become exactly that
# ("cap/" + sender must fit the 200 characters of a source).
MAX_IDENTIFIER = 200
MAX_SENDER = 196

# One message for every rejected document: parser errors quote the offending line and entity
# names, and nothing of an attacker's document may be reflected back.
REJECTED_DOCUMENT = (
    "The CAP document was rejected: it is not well-formed XML, or it contains a DTD, "
    "entity declarations or external references, which are not accepted."
)

# CAP 1.2 §3.2.1: identifier and sender must not contain spaces, commas or < and &; the
# comma and the space matter to us because `references` is built from them.
_FORBIDDEN_ID_CHARS = re.compile(r"[\s,<&]")
_XML_ENCODING = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._-]*)[\"']")


@dataclass(slots=True, frozen=True)
class CapInfo:
    categories: tuple[str, ...]
    event: str
    urgency: str
    severity: str
    certainty: str
    headline: str | None
    description: str | None
    web: str | None
    parameters: tuple[tuple[str, str], ...]


@dataclass(slots=True, frozen=True)
class CapAlert:
    identifier: str
    sender: str
    sent: datetime
    status: str
    msg_type: MsgType
    scope: str
    references: tuple[str, ...]  # identifiers of the referenced alerts, in document order
    infos: tuple[CapInfo, ...]
    text: str  # the document as text, for the record


Errors = list[dict[str, Any]]


def read_cap(document: bytes | str) -> CapAlert:
    """Parse and validate one CAP 1.2 `<alert>` (bytes as received; text is taken as decoded).

    Raises BadRequest (400) for anything that is not plain well-formed XML, and
    ValidationProblem (422) listing every missing or invalid element.
    """
    root = _parse_xml(document)
    if root.tag != _PREFIX + "alert":
        raise single_problem(
            ["alert"], f"the root element must be <alert> in the namespace {CAP_NS}"
        )

    errors: Errors = []
    loc: list[Any] = ["alert"]
    kids = _children(root)
    identifier = _identifier(kids, "identifier", MAX_IDENTIFIER, loc, errors)
    sender = _identifier(kids, "sender", MAX_SENDER, loc, errors)
    sent = _sent(kids, loc, errors)
    status = _enum(kids, "status", STATUSES, loc, errors)
    msg_type = _enum(kids, "msgType", MSG_TYPES, loc, errors)
    scope = _enum(kids, "scope", SCOPES, loc, errors)
    references = _references(kids, msg_type, errors)

    info_elements = kids.get("info", [])
    if not info_elements:
        _add(
            errors,
            ["alert", "info"],
            "missing required element <info> (at least one is needed to raise an alert)",
        )
    infos = [_info(element, index, errors) for index, element in enumerate(info_elements)]

    if errors:
        raise validation_problem(errors)
    # Every value below was checked above; the casts only tell the type checker so.
    return CapAlert(
        identifier=cast(str, identifier),
        sender=cast(str, sender),
        sent=cast(datetime, sent),
        status=cast(str, status),
        msg_type=cast(MsgType, msg_type),
        scope=cast(str, scope),
        references=references,
        infos=tuple(cast(CapInfo, info) for info in infos),
        text=_document_text(document),
    )


def _add(errors: Errors, loc: list[Any], msg: str) -> None:
    errors.append({"loc": loc, "msg": msg})


def _parse_xml(document: bytes | str) -> Element:
    try:
        root = SafeET.fromstring(
            document, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except Exception:
        # Whatever the parser trips over (syntax, DTD, entities, unknown encodings, ...) is a
        # property of the untrusted document, never a server fault; `from None` keeps the
        # parser's message, which quotes the document, out of every log and response.
        raise BadRequest(REJECTED_DOCUMENT) from None
    return cast(Element, root)


def _children(element: Element) -> dict[str, list[Element]]:
    """CAP children by local name; elements from other namespaces are not CAP and ignored."""
    found: dict[str, list[Element]] = {}
    for child in element:
        tag = child.tag
        if isinstance(tag, str) and tag.startswith(_PREFIX):
            found.setdefault(tag[_PREFIX_LEN:], []).append(child)
    return found


def _text(element: Element) -> str:
    return (element.text or "").strip()


def _optional(kids: dict[str, list[Element]], name: str) -> str | None:
    found = kids.get(name)
    return (_text(found[0]) or None) if found else None


def _required(
    kids: dict[str, list[Element]], name: str, loc: list[Any], errors: Errors
) -> str | None:
    found = kids.get(name)
    if not found:
        _add(errors, [*loc, name], f"missing required element <{name}>")
        return None
    value = _text(found[0])
    if not value:
        _add(errors, [*loc, name], f"element <{name}> must not be empty")
        return None
    return value


def _quote(value: str) -> str:
    return f"'{value[:40]}…'" if len(value) > 40 else f"'{value}'"


def _enum(
    kids: dict[str, list[Element]],
    name: str,
    allowed: tuple[str, ...],
    loc: list[Any],
    errors: Errors,
) -> str | None:
    value = _required(kids, name, loc, errors)
    if value is not None and value not in allowed:
        _add(
            errors,
            [*loc, name],
            f"{name} {_quote(value)} is not one of {', '.join(allowed)}",
        )
        return None
    return value


def _identifier(
    kids: dict[str, list[Element]], name: str, limit: int, loc: list[Any], errors: Errors
) -> str | None:
    value = _required(kids, name, loc, errors)
    if value is None:
        return None
    if _FORBIDDEN_ID_CHARS.search(value):
        _add(
            errors,
            [*loc, name],
            f"<{name}> must not contain spaces, commas, '<' or '&'",
        )
        return None
    if len(value) > limit:
        _add(
            errors,
            [*loc, name],
            f"<{name}> must be at most {limit} characters long",
        )
        return None
    return value


def _sent(kids: dict[str, list[Element]], loc: list[Any], errors: Errors) -> datetime | None:
    value = _required(kids, "sent", loc, errors)
    if value is None:
        return None
    try:
        return parse_rfc3339(value, require_offset=True)
    except ValueError as exc:
        _add(errors, [*loc, "sent"], f"<sent> {exc}")
        return None


def _references(
    kids: dict[str, list[Element]], msg_type: str | None, errors: Errors
) -> tuple[str, ...]:
    loc = ["alert", "references"]
    text = _optional(kids, "references")
    if text is None:
        if msg_type in ("Update", "Cancel"):
            _add(
                errors,
                loc,
                f"missing required element <references> (required for msgType {msg_type})",
            )
        return ()
    identifiers: list[str] = []
    for entry in text.split():
        parts = entry.split(",")
        if len(parts) != 3 or not parts[1]:
            _add(
                errors,
                loc,
                f"references entry {_quote(entry)} is not a 'sender,identifier,sent' triple",
            )
            continue
        if parts[1] not in identifiers:
            identifiers.append(parts[1])
    return tuple(identifiers)


def _info(element: Element, index: int, errors: Errors) -> CapInfo | None:
    loc: list[Any] = ["alert", "info", index]
    before = len(errors)
    kids = _children(element)

    categories = tuple(_text(c) for c in kids.get("category", []))
    if not categories:
        _add(errors, [*loc, "category"], "missing required element <category>")
    for category in categories:
        if category not in INFO_CATEGORIES:
            _add(
                errors,
                [*loc, "category"],
                f"category {_quote(category)} is not one of {', '.join(INFO_CATEGORIES)}",
            )
    event = _required(kids, "event", loc, errors)
    urgency = _enum(kids, "urgency", URGENCIES, loc, errors)
    severity = _enum(kids, "severity", SEVERITIES, loc, errors)
    certainty = _enum(kids, "certainty", CERTAINTIES, loc, errors)
    if len(errors) > before:
        return None

    parameters: list[tuple[str, str]] = []
    for parameter in kids.get("parameter", []):
        parts = _children(parameter)
        name = _optional(parts, "valueName")
        values = parts.get("value")
        # An incomplete <parameter> carries nothing we could map; rejecting the whole
        # warning over it would help nobody.
        if name is not None and values:
            parameters.append((name, _text(values[0])))

    return CapInfo(
        categories=categories,
        event=cast(str, event),
        urgency=cast(str, urgency),
        severity=cast(str, severity),
        certainty=cast(str, certainty),
        headline=_optional(kids, "headline"),
        description=_optional(kids, "description"),
        web=_optional(kids, "web"),
        parameters=tuple(parameters),
    )


def _document_text(document: bytes | str) -> str:
    """The document as text in the encoding the parser used, so non-ASCII text survives."""
    if isinstance(document, str):
        return document
    if document.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return document.decode("utf-16")
    declared = _XML_ENCODING.match(document)
    encoding = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        if codecs.lookup(encoding).name == "utf-8":
            encoding = "utf-8-sig"
    except LookupError:
        encoding = "utf-8"
    return document.decode(encoding, errors="replace")
