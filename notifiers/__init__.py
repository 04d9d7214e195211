"""Pluggable notifiers (entry-point group ``crisisflow.notifiers``): see `notifiers.base.Notifier`
for how to write one. Built-ins: `webhook`, `email`, `log`."""

from notifiers.base import (
    ENTRY_POINT_GROUP,
    DeliveryResult,
    EmptyConfig,
    Envelope,
    Notifier,
    NotifierContext,
    NotifierRegistry,
    Target,
    classify_status,
    discover,
    event_payload,
    make_http_client,
    parse_retry_after,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "DeliveryResult",
    "EmptyConfig",
    "Envelope",
    "Notifier",
    "NotifierContext",
    "NotifierRegistry",
    "Target",
    "classify_status",
    "discover",
    "event_payload",
    "make_http_client",
    "parse_retry_after",
]
