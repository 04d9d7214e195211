"""The notifier plug-in interface: what the delivery worker hands a notifier, what it gets back,
and how notifiers are found (entry-point group ``crisisflow.notifiers``).

A notifier turns one `Envelope` (one event, for one subscription) into one delivery attempt and
reports the outcome as a `DeliveryResult`. It never retries by itself: the outbox worker owns
retries, back-off and `Retry-After`, so a notifier only has to say whether a failure is worth
retrying (`permanent=False`) or not (`permanent=True`).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import entry_points
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from app.core.config import Settings
from notifiers.transport import LeanTransport

ENTRY_POINT_GROUP = "crisisflow.notifiers"
USER_AGENT = "crisisflow"
MAX_ERROR_CHARS = 300

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One delivery of one event. `delivery_id` is stable across retries of that delivery, so
    receivers can drop repeats (webhook-id header, email Message-ID)."""

    delivery_id: str
    event_id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]

    def __post_init__(self) -> None:
        # A naive timestamp would be rendered without an offset and silently shift by the
        # server's time zone on the receiving side.
        if self.timestamp.tzinfo is None or self.timestamp.utcoffset() is None:
            raise ValueError("Envelope.timestamp must be timezone-aware")

    @property
    def incident(self) -> dict[str, Any]:
        """`data["incident"]`, or an empty dict for events that carry none."""
        value = self.data.get("incident")
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one subscription wants its events. `config` is what `Notifier.validate` returned
    when the subscription was created; `secret` is the Standard Webhooks secret, if any."""

    subscription_id: str
    agency: str
    target: str
    config: dict[str, Any]
    secret: str | None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of one attempt. `error` is short, human-readable and never contains a secret."""

    ok: bool
    permanent: bool = False
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0


@dataclass
class NotifierContext:
    """What every notifier instance shares. `http` is one client per process (connection pool,
    timeouts from `make_http_client`); whoever created it closes it, not the notifiers."""

    settings: Settings
    http: httpx.AsyncClient


class EmptyConfig(BaseModel):
    """The config model of a notifier that takes no extra configuration: any key is refused,
    so a typo in a subscription fails at creation instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class Notifier(ABC):
    """Base class of every notifier, built-in or third-party.

    To add one from another package, without touching crisisflow:

    1. subclass `Notifier`, set `name` (the value subscriptions put in `notifier`) and
       `config_model` (a pydantic model of the subscription's extra `config`; leave the default
       `EmptyConfig` when there is none);
    2. implement `send()`: make exactly one attempt and return a `DeliveryResult`; do not retry
       and do not sleep, the outbox worker schedules retries. Return `permanent=True` only when
       retrying cannot help. Expected failures should be returned, not raised;
    3. optionally override `validate()` to check the target (called when a subscription is
       created; raise `ValueError` with a message meant for the API caller), and `aclose()` to
       release resources of your own;
    4. register the class in your package metadata, e.g. in pyproject.toml::

           [project.entry-points."crisisflow.notifiers"]
           acme-pager = "acme_pager:AcmePager"

    The entry-point name is the notifier's name and should equal `name`. One instance per
    process is created (lazily) and shared by concurrent deliveries, so `send()` must be safe to
    run concurrently. Use `self.http` for HTTP calls: it is shared and has explicit timeouts.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]] = EmptyConfig

    def __init__(self, ctx: NotifierContext) -> None:
        self.ctx = ctx

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def http(self) -> httpx.AsyncClient:
        return self.ctx.http

    def validate(self, target: str, config: dict[str, Any]) -> dict[str, Any]:
        """Check a subscription's target and config; return the normalized config to store.

        Raises ValueError with a message fit for an API client. The default validates `config`
        against `config_model` and accepts any target."""
        return validate_config(self.config_model, config)

    @abstractmethod
    async def send(self, envelope: Envelope, target: Target) -> DeliveryResult:
        """Make one delivery attempt of `envelope` to `target`."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op
        """Release resources the notifier opened itself (not `ctx.http`)."""


def validate_config(model: type[BaseModel], config: dict[str, Any]) -> dict[str, Any]:
    try:
        return model.model_validate(config).model_dump(mode="json")
    except ValidationError as exc:
        # Pydantic's own text spans several lines and links to its docs; an API caller wants
        # one line per problem, naming the config key.
        problems = "; ".join(
            f"config.{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"invalid notifier config: {problems}") from None


# ---------------------------------------------------------------------------------- discovery


def discover() -> dict[str, type[Notifier]]:
    """Load every notifier class registered under the `crisisflow.notifiers` entry-point group.

    One broken plugin (import error, not a Notifier subclass) is logged and skipped, so a bad
    third-party install cannot keep the service from starting."""
    found: dict[str, type[Notifier]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            logger.error(
                "notifier plugin %r (%s) failed to load, skipped: %s: %s",
                ep.name, ep.value, type(exc).__name__, exc,
                extra={"plugin": ep.name},
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, Notifier)):
            logger.error(
                "notifier plugin %r (%s) is not a Notifier subclass, skipped", ep.name, ep.value,
                extra={"plugin": ep.name},
            )
            continue
        if ep.name in found and found[ep.name] is not cls:
            logger.warning(
                "notifier %r is registered twice; keeping %s, ignoring %s",
                ep.name, found[ep.name].__module__, ep.value,
            )
            continue
        found[ep.name] = cls
    return found


class NotifierRegistry:
    """The notifiers available to this process, by name. Instances are created on first use and
    cached: one per name per process."""

    def __init__(
        self, ctx: NotifierContext, classes: dict[str, type[Notifier]] | None = None
    ) -> None:
        self.ctx = ctx
        self._classes = dict(discover() if classes is None else classes)
        self._instances: dict[str, Notifier] = {}

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> Notifier:
        instance = self._instances.get(name)
        if instance is None:
            try:
                cls = self._classes[name]
            except KeyError:
                known = ", ".join(self.names()) or "none"
                raise KeyError(f"unknown notifier {name!r} (available: {known})") from None
            instance = self._instances[name] = cls(self.ctx)
        return instance

    async def send(self, name: str, envelope: Envelope, target: Target) -> DeliveryResult:
        """Send through notifier `name`, turning an exception escaping a (third-party) notifier
        into a retryable result, so one buggy plugin cannot crash the delivery worker."""
        notifier = self.get(name)
        started = time.perf_counter()
        try:
            return await notifier.send(envelope, target)
        except Exception as exc:
            logger.exception("notifier %r raised instead of returning a result", name)
            return DeliveryResult(
                ok=False,
                error=short_error(f"notifier raised {type(exc).__name__}"),
                duration_ms=ms_since(started),
            )

    async def aclose(self) -> None:
        """Close every instantiated notifier. The shared `ctx.http` belongs to the caller."""
        for name, instance in self._instances.items():
            try:
                await instance.aclose()
            except Exception:
                logger.exception("closing notifier %r failed", name)
        self._instances.clear()


# ------------------------------------------------------------------------------ HTTP plumbing


def http_timeout(settings: Settings) -> httpx.Timeout:
    total = settings.webhook_timeout_seconds
    # A receiver that does not even accept the connection within 5 s is down; waiting the full
    # read timeout for it would only hold a worker slot longer.
    return httpx.Timeout(total, connect=min(5.0, total))


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    """The one outbound HTTP client of a process, sized to the delivery worker's concurrency."""
    size = max(settings.delivery_concurrency, 1)
    lean = None if urllib.request.getproxies() else LeanTransport(
        max_idle_per_origin=size, keepalive_expiry=30.0)
    return httpx.AsyncClient(
        transport=lean,
        timeout=http_timeout(settings),
        # A redirect would re-send a signed payload to a place the subscriber never validated
        # (possibly an internal address); the 3xx is reported instead.
        follow_redirects=False,
        limits=httpx.Limits(
            max_connections=size, max_keepalive_connections=size, keepalive_expiry=30.0
        ),
        headers={"User-Agent": USER_AGENT},
    )


def classify_status(status: int) -> tuple[bool, bool]:
    """(ok, permanent) for an HTTP status. Retryable: 408, 409, 425, 429 and 5xx (including
    out-of-range codes above 599). Permanent: other 4xx, and 1xx/3xx (redirects are not
    followed, so retrying would get the same answer)."""
    if 200 <= status < 300:
        return True, False
    if status in (408, 409, 425, 429) or status >= 500:
        return False, False
    return False, True


_DELTA_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (relative to
    `now`). A date in the past gives 0; anything unparsable gives None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.match(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown origin zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# ------------------------------------------------------------------------ shared small helpers


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_payload(envelope: Envelope) -> dict[str, Any]:
    """The event JSON every notifier sends or shows (workflow.md, Notifications)."""
    return {
        "type": envelope.type,
        "id": envelope.event_id,
        "timestamp": rfc3339(envelope.timestamp),
        "data": envelope.data,
    }


def ms_since(started: float) -> float:
    """Milliseconds elapsed since a `time.perf_counter()` reading."""
    return round((time.perf_counter() - started) * 1000.0, 3)


def short_error(text: str, *, redact: str | None = None) -> str:
    """One line, bounded, with `redact` (a credential) removed wherever it appears."""
    if redact:
        text = text.replace(redact, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transport_error(exc: BaseException, timeout: float) -> str:
    """Short text for a failure below the protocol (timeout, refused, DNS, TLS), found anywhere
    in the exception chain, since httpx and smtplib both wrap the socket error."""
    chain = list(_chain(exc))
    for item in chain:
        if isinstance(item, TimeoutError | httpx.TimeoutException):
            return f"timeout after {timeout:g}s"
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(item, socket.gaierror):
            return f"name resolution failed: {item.strerror or item}"
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {item.verify_message or item.reason}"
        if isinstance(item, ssl.SSLError):
            return f"TLS error: {item.reason or item}"
        if isinstance(item, OSError) and item.errno is not None:
            return f"connection failed: {item.strerror or errno.errorcode.get(item.errno, '?')}"
    return short_error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
