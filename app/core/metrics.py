"""Prometheus metrics, one registry per process."""

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: prometheus_client validates and locks on every
    call, a cost each ingested alert paid two or three times. Label values are bounded
    (methods, route templates, statuses, formats), so this stays small."""
    child = _CHILDREN.get((metric, values))
    if child is None:
        child = _CHILDREN[(metric, values)] = metric.labels(*values)
    return child

REQUESTS = Counter("crisisflow_http_requests", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "crisisflow_http_request_seconds", "HTTP request duration", ["route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ALERTS = Counter("crisisflow_alerts", "Alerts accepted", ["format", "outcome"])
TRANSITIONS = Counter("crisisflow_transitions", "Incident transitions", ["trigger", "outcome"])
DELIVERIES = Counter("crisisflow_deliveries", "Delivery attempts", ["notifier", "outcome"])
DELIVERY_SECONDS = Histogram(
    "crisisflow_delivery_latency_seconds", "Event created to delivered",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OUTBOX_BACKLOG = Gauge("crisisflow_outbox_backlog", "Deliveries waiting (pending or failed)")
OUTBOX_OLDEST = Gauge("crisisflow_outbox_oldest_due_seconds", "Age of the oldest due delivery")
OVERDUE = Gauge("crisisflow_overdue_incidents", "Open incidents past a deadline")
INGEST_GROUP = Histogram(
    "crisisflow_ingest_group_requests", "Ingest requests committed together in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
