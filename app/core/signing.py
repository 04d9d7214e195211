"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com), both directions:
crisisflow verifies signed alert webhooks from monitors and signs its own deliveries.

signature = base64(HMAC-SHA256(key, f"{webhook_id}.{timestamp}.{body}")), sent as
`webhook-signature: v1,<sig>` (several space-separated signatures are allowed)."""

from __future__ import annotations

import base64
import hashlib
import hmac

TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """The request's signature headers are missing, stale or do not match."""


def secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    payload = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), payload, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str | None, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    out = {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp)}
    if secret:
        out["webhook-signature"] = sign(secret, webhook_id, timestamp, body)
    return out


def verify(
    secret: str,
    webhook_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Raise SignatureError unless one `v1,` signature matches and the timestamp is fresh."""
    if not webhook_id or not timestamp or not signature:
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp must be integer seconds") from None
    if abs(now - ts) > tolerance:
        raise SignatureError("webhook-timestamp is more than 5 minutes off")
    expected = sign(secret, webhook_id, ts, body).encode()
    for candidate in signature.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise SignatureError("no webhook-signature matches")
