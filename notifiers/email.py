"""`email`: send the event as a Vietnamese plain-text email (with one English line) over SMTP,
with the host, port, STARTTLS and credentials taken from settings."""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from app.core.clock import utcnow
from app.core.config import Settings
from notifiers.base import (
    DeliveryResult,
    EmptyConfig,
    Envelope,
    Notifier,
    NotifierContext,
    Target,
    ms_since,
    short_error,
    transport_error,
)

# Deliberately simple: no quoted local parts, no display names, no whitespace (which also keeps
# CR/LF header injection out of the To header).
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)
_MAX_RECIPIENTS = 50
_MAX_TITLE_CHARS = 150

EVENT_PHRASES: dict[str, str] = {
    "incident.detected": "Phát hiện sự cố",
    "incident.assessed": "Đánh giá sự cố",
    "incident.escalated": "Leo thang sự cố",
    "incident.overdue": "Sự cố quá hạn xử lý",
    "task_force.proposed": "Đề xuất thành lập Tổ công tác",
    "task_force.approved": "Phê duyệt Tổ công tác",
    "task_force.rejected": "Từ chối đề xuất Tổ công tác",
    "response.issued": "Đã phát ngôn/cung cấp thông tin",
    "incident.closed": "Đóng sự cố",
    "incident.reopened": "Mở lại sự cố",
}
SEVERITIES = {
    "low": "thấp",
    "medium": "trung bình",
    "high": "cao",
    "critical": "đặc biệt nghiêm trọng",
}
STATES = {
    "detected": "mới phát hiện",
    "assessed": "đã đánh giá",
    "task_force_proposed": "đã đề xuất Tổ công tác",
    "response_issued": "đã phát ngôn",
    "closed": "đã đóng",
}
CLOCKS = {
    "assess": "thời hạn đánh giá",
    "first_response": "thời hạn phát ngôn lần đầu",
    "proposal_decision": "thời hạn quyết định đề xuất Tổ công tác",
}
REASONS = {"severity": "mức độ nghiêm trọng", "overdue": "quá hạn xử lý"}


def parse_addresses(target: str) -> list[str]:
    """One address or a comma-separated list; ValueError naming the first bad one."""
    addresses = [part.strip() for part in target.split(",")]
    if not any(addresses):
        raise ValueError("email target must be an email address")
    for address in addresses:
        if not _ADDRESS.match(address):
            raise ValueError(f"email target {address!r} is not a valid email address")
    if len(addresses) > _MAX_RECIPIENTS:
        raise ValueError(f"email target lists more than {_MAX_RECIPIENTS} addresses")
    return addresses


def _one_line(value: Any, limit: int = _MAX_TITLE_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _both(value: Any, names: dict[str, str]) -> str:
    """'cao (high)': the Vietnamese word with the code operators search logs for."""
    code = str(value)
    return f"{names[code]} ({code})" if code in names else code


def subject(envelope: Envelope) -> str:
    incident = envelope.incident
    phrase = EVENT_PHRASES.get(envelope.type, f"Sự kiện {envelope.type}")
    reference = incident.get("reference")
    title = incident.get("title")
    text = f"[crisisflow] {phrase}"
    if reference:
        text += f" {reference}"
    if title:
        text += f": {_one_line(title)}"
    return text


def body(envelope: Envelope, settings: Settings) -> str:
    incident = envelope.incident
    data = envelope.data
    lines = [EVENT_PHRASES.get(envelope.type, f"Sự kiện {envelope.type}"), ""]

    def add(label: str, value: Any) -> None:
        if value is not None and value != "" and value != []:
            lines.append(f"{label}: {value}")

    add("Mã sự cố", incident.get("reference"))
    add("Tiêu đề", incident.get("title") and _one_line(incident["title"], 500))
    add("Trạng thái", incident.get("state") and _both(incident["state"], STATES))
    add("Mức độ nghiêm trọng", incident.get("severity") and _both(incident["severity"], SEVERITIES))
    add("Cấp leo thang", data.get("level", incident.get("escalation_level")))
    add("Cơ quan chủ trì", incident.get("lead_agency"))
    affected = incident.get("affected_agencies")
    add("Cơ quan liên quan", ", ".join(map(str, affected)) if isinstance(affected, list) else None)
    add("Lý do", data.get("reason") and _both(data["reason"], REASONS))
    add("Thời hạn bị trễ", data.get("clock") and _both(data["clock"], CLOCKS))
    proposal = data.get("proposal")
    if isinstance(proposal, dict):
        add("Tổ công tác - cơ quan chủ trì", proposal.get("lead_agency"))
        members = proposal.get("members")
        add("Tổ công tác - thành viên", ", ".join(map(str, members)) if members else None)
        add("Tổ công tác - trạng thái đề xuất", proposal.get("status"))
    response = data.get("response")
    if isinstance(response, dict):
        add("Kênh phát ngôn", response.get("channel"))
        add("Người phát ngôn", response.get("spokesperson"))
        add("Đường dẫn", response.get("url"))
    local = envelope.timestamp.astimezone(settings.zone)
    add("Thời điểm", f"{local:%H:%M %d/%m/%Y} ({settings.timezone})")
    add("Mã sự kiện", envelope.event_id)

    english = f"English: {envelope.type}"
    if incident.get("reference"):
        english += f" for {incident['reference']}"
    details = []
    if incident.get("severity"):
        details.append(f"severity {incident['severity']}")
    level = data.get("level", incident.get("escalation_level"))
    if level is not None:
        details.append(f"level {level}")
    if details:
        english += f" ({', '.join(details)})"
    lines += ["", english, ""]
    return "\n".join(lines)


def build_message(envelope: Envelope, target: Target, settings: Settings) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(parse_addresses(target.target))
    msg["Subject"] = subject(envelope)
    msg["Date"] = format_datetime(utcnow())
    # Stable per delivery: a retry after a lost SMTP reply carries the same id, so mail clients
    # and archives can fold the duplicate.
    msg["Message-ID"] = f"<{envelope.delivery_id}@crisisflow>"
    msg["X-Crisisflow-Event"] = envelope.type
    msg["X-Crisisflow-Event-Id"] = envelope.event_id
    msg.set_content(body(envelope, settings), charset="utf-8")
    return msg


class _SendFailed(Exception):
    def __init__(self, error: str, permanent: bool, code: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent
        self.code = code


def _smtp_reply(code: int, message: bytes | str) -> _SendFailed:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    # 5xx is the server's final word; 4xx (and anything odd) may pass.
    return _SendFailed(f"SMTP {code} {text}", permanent=500 <= code < 600, code=code)


class EmailNotifier(Notifier):
    """Sends through the SMTP server in settings (smtplib, in a worker thread).

    `ssl_context` verifies the server's certificate for STARTTLS; it defaults to the system trust
    store and can be replaced (e.g. by tests with a self-signed certificate)."""

    name = "email"
    config_model = EmptyConfig

    def __init__(self, ctx: NotifierContext) -> None:
        super().__init__(ctx)
        self.ssl_context: ssl.SSLContext = ssl.create_default_context()

    def validate(self, target: str, config: dict[str, Any]) -> dict[str, Any]:
        parse_addresses(target)
        return super().validate(target, config)

    async def send(self, envelope: Envelope, target: Target) -> DeliveryResult:
        started = time.perf_counter()
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            recipients = parse_addresses(target.target)
            msg = build_message(envelope, target, settings)
        except ValueError as exc:
            return DeliveryResult(ok=False, permanent=True, error=str(exc))
        try:
            refused = await asyncio.to_thread(self._deliver, msg, recipients, password)
        except _SendFailed as exc:
            return DeliveryResult(
                ok=False,
                permanent=exc.permanent,
                status_code=exc.code,
                error=short_error(exc.error, redact=password),
                duration_ms=ms_since(started),
            )
        error = None
        if refused:
            # The others already have it; a retry would send them a second copy.
            error = short_error(
                "some recipients refused: "
                + ", ".join(f"{addr} ({code})" for addr, (code, _) in refused.items()),
                redact=password,
            )
        return DeliveryResult(ok=True, status_code=250, error=error, duration_ms=ms_since(started))

    def _deliver(
        self, msg: EmailMessage, recipients: list[str], password: str | None
    ) -> dict[str, tuple[int, bytes]]:
        """Blocking SMTP conversation; runs in a thread. Raises only _SendFailed."""
        settings = self.settings
        try:
            with smtplib.SMTP(
                settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds
            ) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls(context=self.ssl_context)
                if settings.smtp_username:
                    smtp.login(settings.smtp_username, password or "")
                return smtp.send_message(msg, from_addr=settings.smtp_from, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            permanent = bool(codes) and all(500 <= code < 600 for code in codes)
            detail = ", ".join(f"{addr} ({code})" for addr, (code, _) in exc.recipients.items())
            raise _SendFailed(
                f"all recipients refused: {detail}", permanent, min(codes, default=None)
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise _smtp_reply(exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPNotSupportedError as exc:
            # STARTTLS or AUTH configured but not offered: a configuration mismatch that a
            # retry with the same settings cannot fix.
            raise _SendFailed(f"SMTP server does not support it: {exc}", permanent=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _SendFailed(
                transport_error(exc, settings.smtp_timeout_seconds), permanent=False
            ) from None
