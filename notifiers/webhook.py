"""`webhook`: POST the event JSON to the subscriber's URL, signed per Standard Webhooks."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core import signing
from app.core.clock import utcnow
from app.core.jsonutil import dumps
from notifiers.base import (
    USER_AGENT,
    DeliveryResult,
    EmptyConfig,
    Envelope,
    Notifier,
    Target,
    classify_status,
    event_payload,
    http_timeout,
    ms_since,
    parse_retry_after,
    short_error,
    transport_error,
)

# Enough to keep a keep-alive connection reusable after a typical small reply; a larger body is
# not worth reading, the connection is dropped instead.
_DRAIN_LIMIT = 64 * 1024
_SNIPPET_BYTES = 200
# Forms like 2852039166 or 0xa9.0xfe.0xa9.0xfe are not IP literals to `ipaddress`, yet the
# resolver (inet_aton rules) turns them into 169.254.169.254.
_LEGACY_IPV4 = re.compile(r"^[0-9][0-9a-fA-Fx.]*$")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_webhook_url(target: str) -> str:
    """Return the URL if it may receive webhooks; raise ValueError saying why not.

    Link-local addresses are refused because 169.254.169.254 is the cloud metadata service: a
    subscription there would let an admin key read instance credentials through the delivery
    log. Only IP literals are checked; host names are resolved at delivery time."""
    url = target.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise ValueError("webhook target is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("webhook target must be an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise ValueError("webhook target URL has no host")
    address = _ip_literal(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is not None and address.is_link_local:
        raise ValueError(
            "webhook target may not be a link-local address (169.254.0.0/16 or fe80::/10)"
        )
    return url


async def _drain(response: httpx.Response) -> bytes:
    """Read at most _DRAIN_LIMIT bytes of the reply; return its first bytes for error text."""
    head = b""
    read = 0
    async for chunk in response.aiter_bytes():
        if len(head) < _SNIPPET_BYTES:
            head += chunk[: _SNIPPET_BYTES - len(head)]
        read += len(chunk)
        if read >= _DRAIN_LIMIT:
            break
    return head


class WebhookNotifier(Notifier):
    """POSTs `{"type", "id", "timestamp", "data"}` with `webhook-id` (the delivery id, stable
    across retries), `webhook-timestamp` and, when the subscription has a secret,
    `webhook-signature` over the exact bytes sent."""

    name = "webhook"
    config_model = EmptyConfig

    def validate(self, target: str, config: dict[str, Any]) -> dict[str, Any]:
        check_webhook_url(target)
        return super().validate(target, config)

    async def send(self, envelope: Envelope, target: Target) -> DeliveryResult:
        started = time.perf_counter()
        try:
            # Checked again here: the row may predate a rule, or have been edited in the DB.
            url = check_webhook_url(target.target)
        except ValueError as exc:
            return DeliveryResult(ok=False, permanent=True, error=str(exc))
        # Serialized once: the signature must cover exactly the bytes on the wire.
        body = dumps(event_payload(envelope))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signing.headers(
                target.secret, envelope.delivery_id, int(utcnow().timestamp()), body
            ),
        }
        limit = self.settings.webhook_timeout_seconds
        try:
            # httpx timeouts are per phase (each read may take `limit`); a receiver dripping
            # bytes could hold a worker slot forever without this overall deadline.
            async with asyncio.timeout(limit):
                async with self.http.stream(
                    "POST", url, content=body, headers=headers,
                    timeout=http_timeout(self.settings),
                ) as response:
                    head = await _drain(response)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return DeliveryResult(
                ok=False, error=transport_error(exc, limit), duration_ms=ms_since(started)
            )
        duration = ms_since(started)
        status = response.status_code
        ok, permanent = classify_status(status)
        if ok:
            return DeliveryResult(ok=True, status_code=status, duration_ms=duration)
        return DeliveryResult(
            ok=False,
            permanent=permanent,
            status_code=status,
            error=_status_error(response, head),
            retry_after=parse_retry_after(response.headers.get("retry-after"), utcnow()),
            duration_ms=duration,
        )


def _status_error(response: httpx.Response, head: bytes) -> str:
    text = f"HTTP {response.status_code}"
    if response.reason_phrase:
        text += f" {response.reason_phrase}"
    if 300 <= response.status_code < 400:
        text += " (redirects are not followed)"
    snippet = head.decode("utf-8", "replace").strip()
    if snippet:
        text += f": {snippet}"
    return short_error(text)
