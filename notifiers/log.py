"""`log`: write the event to the structured log. For development and for trying subscriptions
without a receiver; it always succeeds."""

from __future__ import annotations

import logging
import time

from notifiers.base import DeliveryResult, EmptyConfig, Envelope, Notifier, Target, ms_since

logger = logging.getLogger("crisisflow.notifications")


class LogNotifier(Notifier):
    """One INFO record per delivery on logger `crisisflow.notifications`; the JSON log formatter
    turns the `extra` fields into keys of the log line."""

    name = "log"
    config_model = EmptyConfig

    async def send(self, envelope: Envelope, target: Target) -> DeliveryResult:
        started = time.perf_counter()
        reference = envelope.incident.get("reference")
        logger.info(
            "notification %s for %s to %s",
            envelope.type, reference or "-", target.agency,
            extra={
                "event_type": envelope.type,
                "event_id": envelope.event_id,
                "delivery_id": envelope.delivery_id,
                "incident_reference": reference,
                "agency": target.agency,
                "subscription_id": target.subscription_id,
                "target": target.target,
            },
        )
        return DeliveryResult(ok=True, duration_ms=ms_since(started))
