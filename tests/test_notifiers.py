"""Notifiers against real receivers: an HTTP server and an aiosmtpd server in threads, real
entry-point discovery from a dist-info written into tmp_path. No database."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from app.core.config import Settings
from app.core.signing import SignatureError, verify
from notifiers.base import (
    DeliveryResult,
    Envelope,
    Notifier,
    NotifierContext,
    NotifierRegistry,
    Target,
    classify_status,
    discover,
    make_http_client,
    parse_retry_after,
)
from notifiers.email import EmailNotifier
from notifiers.log import LogNotifier
from notifiers.webhook import WebhookNotifier
from tests.helpers.receivers import HttpReceiver, SmtpReceiver, self_signed_cert

T = TypeVar("T")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSWORD = "s3cr3t-Pa55word"
DELIVERY_ID = "dlv_01JABCDEF0123456789"
EVENT_TIME = datetime(2026, 3, 1, 7, 5, tzinfo=UTC)


# ------------------------------------------------------------------------------------- helpers


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def envelope(event_type: str = "incident.escalated", **data: Any) -> Envelope:
    incident = {
        "id": "inc_1",
        "reference": "INC-2026-000001",
        "title": "Tin giả về dịch bệnh lan truyền trên mạng xã hội",
        "severity": "high",
        "state": "assessed",
        "lead_agency": "MOH",
        "affected_agencies": ["MIC", "MPS"],
        "escalation_level": 1,
    }
    return Envelope(
        delivery_id=DELIVERY_ID,
        event_id="evt_1",
        type=event_type,
        timestamp=EVENT_TIME,
        data={"incident": incident, **data},
    )


def target(where: str, secret: str | None = None, agency: str = "MIC") -> Target:
    return Target(subscription_id="sub_1", agency=agency, target=where, config={}, secret=secret)


def settings(**overrides: Any) -> Settings:
    return Settings(log_json=False, access_log=False, **overrides)


async def with_registry(
    cfg: Settings, use: Callable[[NotifierRegistry], Coroutine[Any, Any, T]]
) -> T:
    async with make_http_client(cfg) as http:
        registry = NotifierRegistry(NotifierContext(cfg, http))
        try:
            return await use(registry)
        finally:
            await registry.aclose()


def send(cfg: Settings, name: str, env: Envelope, tgt: Target) -> DeliveryResult:
    return run(with_registry(cfg, lambda reg: reg.get(name).send(env, tgt)))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    with SmtpReceiver() as server:
        yield server


# ------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (True, False)), (204, (True, False)),
        (408, (False, False)), (409, (False, False)), (425, (False, False)),
        (429, (False, False)), (500, (False, False)), (503, (False, False)),
        (400, (False, True)), (401, (False, True)), (404, (False, True)), (410, (False, True)),
        (301, (False, True)), (302, (False, True)), (101, (False, True)),
    ],
)
def test_classify_status(status: int, expected: tuple[bool, bool]) -> None:
    assert classify_status(status) == expected


def test_parse_retry_after() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now) == 0.0
    for bad in (None, "", "soon", "-5", "inf"):
        assert parse_retry_after(bad, now) is None


def test_envelope_requires_aware_timestamp() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Envelope("d", "e", "incident.detected", datetime(2026, 1, 1), {})


# -------------------------------------------------------------------------------------- webhook


def test_webhook_delivers_signed_json(receiver: HttpReceiver) -> None:
    env = envelope(reason="severity", level=1)
    result = send(settings(), "webhook", env, target(receiver.url, secret=SECRET))

    assert result.ok and result.status_code == 200 and result.error is None
    assert result.duration_ms > 0
    [req] = receiver.requests
    assert req.method == "POST" and req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "crisisflow"
    assert req.headers["webhook-id"] == DELIVERY_ID
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 5
    assert req.json() == {
        "type": "incident.escalated",
        "id": "evt_1",
        "timestamp": "2026-03-01T07:05:00Z",
        "data": env.data,
    }
    # Verified the way a subscriber would: over the raw bytes received.
    verify(SECRET, req.headers["webhook-id"], req.headers["webhook-timestamp"],
           req.headers["webhook-signature"], req.body, now=time.time())
    with pytest.raises(SignatureError):
        verify("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==", req.headers["webhook-id"],
               req.headers["webhook-timestamp"], req.headers["webhook-signature"], req.body,
               now=time.time())
    assert SECRET not in repr(result)


def test_webhook_id_is_stable_across_retries(receiver: HttpReceiver) -> None:
    receiver.push_response(503)
    cfg = settings()

    async def twice(reg: NotifierRegistry) -> list[DeliveryResult]:
        hook = reg.get("webhook")
        return [await hook.send(envelope(), target(receiver.url)) for _ in range(2)]

    first, second = run(with_registry(cfg, twice))
    assert (first.ok, second.ok) == (False, True)
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {DELIVERY_ID}
    assert receiver.requests[0].body == receiver.requests[1].body


def test_webhook_without_secret_is_unsigned(receiver: HttpReceiver) -> None:
    result = send(settings(), "webhook", envelope(), target(receiver.url))
    assert result.ok
    [req] = receiver.requests
    assert "webhook-signature" not in req.headers
    assert req.headers["webhook-id"] == DELIVERY_ID and "webhook-timestamp" in req.headers


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (408, False), (404, True), (410, True)]
)
def test_webhook_status_classification(
    receiver: HttpReceiver, status: int, permanent: bool
) -> None:
    receiver.set_response(status, body=b"nope")
    result = send(settings(), "webhook", envelope(), target(receiver.url, secret=SECRET))
    assert not result.ok
    assert result.permanent is permanent
    assert result.status_code == status
    assert result.error is not None and result.error.startswith(f"HTTP {status}")
    assert "nope" in result.error and SECRET not in result.error


def test_webhook_redirect_is_not_followed(receiver: HttpReceiver) -> None:
    receiver.set_response(302, {"Location": "http://169.254.169.254/latest"})
    result = send(settings(), "webhook", envelope(), target(receiver.url))
    assert (result.ok, result.permanent, result.status_code) == (False, True, 302)
    assert len(receiver.requests) == 1


def test_webhook_429_retry_after_seconds(receiver: HttpReceiver) -> None:
    receiver.set_response(429, {"Retry-After": "7"})
    result = send(settings(), "webhook", envelope(), target(receiver.url))
    assert (result.ok, result.permanent, result.retry_after) == (False, False, 7.0)


def test_webhook_retry_after_http_date(receiver: HttpReceiver) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    receiver.set_response(503, {"Retry-After": format_datetime(when, usegmt=True)})
    result = send(settings(), "webhook", envelope(), target(receiver.url))
    assert not result.ok and not result.permanent
    assert result.retry_after is not None and 25 <= result.retry_after <= 31


def test_webhook_hanging_receiver_times_out(receiver: HttpReceiver) -> None:
    receiver.hang_seconds = 5
    started = time.perf_counter()
    result = send(settings(webhook_timeout_seconds=0.5), "webhook", envelope(),
                  target(receiver.url, secret=SECRET))
    elapsed = time.perf_counter() - started
    assert not result.ok and not result.permanent and result.status_code is None
    assert result.error == "timeout after 0.5s"
    assert elapsed < 3 and result.duration_ms >= 400
    assert len(receiver.requests) == 1  # it did arrive; the answer never came


def test_webhook_connection_refused_is_retryable() -> None:
    result = send(settings(), "webhook", envelope(),
                  target(f"http://127.0.0.1:{free_port()}/hook", secret=SECRET))
    assert (result.ok, result.permanent) == (False, False)
    assert result.error == "connection refused"


def test_webhook_send_refuses_link_local_target() -> None:
    result = send(settings(), "webhook", envelope(), target("http://169.254.169.254/latest"))
    assert (result.ok, result.permanent) == (False, True)
    assert result.error is not None and "link-local" in result.error


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.org/hook",
        "not a url",
        "http://169.254.169.254/latest",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "https:///no-host",
        "http://example.org:99999/",
    ],
)
def test_webhook_validate_rejects(bad: str) -> None:
    hook = WebhookNotifier(NotifierContext(settings(), None))  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        hook.validate(bad, {})
    assert str(info.value).startswith("webhook target")


def test_webhook_validate_accepts_and_refuses_unknown_config() -> None:
    hook = WebhookNotifier(NotifierContext(settings(), None))  # type: ignore[arg-type]
    assert hook.validate("https://example.org/hook", {}) == {}
    assert hook.validate("http://127.0.0.1:8080/x", {}) == {}
    with pytest.raises(ValueError, match=r"config\.colour"):
        hook.validate("https://example.org/hook", {"colour": "red"})


# ---------------------------------------------------------------------------------------- email


def smtp_settings(server: SmtpReceiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": server.host, "smtp_port": server.port, "smtp_from": "crisisflow@gov.example",
        "smtp_timeout_seconds": 5,
    }
    return settings(**(values | overrides))


def test_email_vietnamese_subject_body_and_stable_message_id(smtp: SmtpReceiver) -> None:
    cfg = smtp_settings(smtp)
    env = envelope(reason="overdue", clock="assess", level=1)
    tgt = target("duty@mic.example, lead@moh.example")

    async def twice(reg: NotifierRegistry) -> list[DeliveryResult]:
        return [await reg.get("email").send(env, tgt) for _ in range(2)]

    results = run(with_registry(cfg, twice))
    assert all(r.ok and r.error is None for r in results)
    first, second = smtp.wait_for(2)
    assert first.mail_from == "crisisflow@gov.example"
    assert first.rcpt_tos == ["duty@mic.example", "lead@moh.example"]

    msg = first.message
    assert msg["Subject"] == (
        "[crisisflow] Leo thang sự cố INC-2026-000001: "
        "Tin giả về dịch bệnh lan truyền trên mạng xã hội"
    )
    assert msg["To"] == "duty@mic.example, lead@moh.example"
    assert msg["Message-ID"] == f"<{DELIVERY_ID}@crisisflow>"
    assert second.message["Message-ID"] == msg["Message-ID"]
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    text = msg.get_content()
    for expected in (
        "Mã sự cố: INC-2026-000001",
        "Mức độ nghiêm trọng: cao (high)",
        "Trạng thái: đã đánh giá (assessed)",
        "Cấp leo thang: 1",
        "Cơ quan chủ trì: MOH",
        "Lý do: quá hạn xử lý (overdue)",
        "Thời hạn bị trễ: thời hạn đánh giá (assess)",
        "Thời điểm: 14:05 01/03/2026 (Asia/Ho_Chi_Minh)",
        "English: incident.escalated for INC-2026-000001 (severity high, level 1)",
    ):
        assert expected in text


@pytest.mark.parametrize(
    ("event_type", "phrase"),
    [("incident.detected", "Phát hiện sự cố"), ("task_force.approved", "Phê duyệt Tổ công tác"),
     ("response.issued", "Đã phát ngôn/cung cấp thông tin")],
)
def test_email_subject_per_event_type(smtp: SmtpReceiver, event_type: str, phrase: str) -> None:
    result = send(smtp_settings(smtp), "email", envelope(event_type), target("a@b.example"))
    assert result.ok
    [mail] = smtp.wait_for(1)
    assert mail.message["Subject"].startswith(f"[crisisflow] {phrase} INC-2026-000001: ")


# AUTH over plaintext is what this test wants; the STARTTLS test covers AUTH over TLS.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_authenticates_with_settings_credentials() -> None:
    with SmtpReceiver(credentials={"notifier": PASSWORD}) as server:
        good = send(smtp_settings(server, smtp_username="notifier",
                                  smtp_password=SecretStr(PASSWORD)),
                    "email", envelope(), target("a@b.example"))
        assert good.ok, good.error
        [mail] = server.wait_for(1)
        assert mail.login == "notifier"

        bad = send(smtp_settings(server, smtp_username="notifier",
                                 smtp_password=SecretStr("wrong-" + PASSWORD)),
                   "email", envelope(), target("a@b.example"))
        assert (bad.ok, bad.permanent, bad.status_code) == (False, True, 535)
        assert bad.error is not None and PASSWORD not in bad.error
        # smtplib tries each mechanism the server offers before giving up.
        first, *retries = server.auth_attempts
        assert first == ("notifier", True)
        assert retries and not any(ok for _, ok in retries)

        # Without credentials the server's "530 authentication required" is final too.
        anonymous = send(smtp_settings(server), "email", envelope(), target("a@b.example"))
        assert (anonymous.ok, anonymous.permanent) == (False, True)


def test_email_smtp_reply_codes(smtp: SmtpReceiver) -> None:
    cfg = smtp_settings(smtp)
    smtp.rcpt_reply = "550 5.1.1 no such mailbox"
    refused = send(cfg, "email", envelope(), target("nobody@b.example"))
    assert (refused.ok, refused.permanent, refused.status_code) == (False, True, 550)
    assert refused.error is not None and "nobody@b.example" in refused.error

    smtp.rcpt_reply = None
    smtp.data_reply = "451 4.3.0 try again later"
    later = send(cfg, "email", envelope(), target("a@b.example"))
    assert (later.ok, later.permanent, later.status_code) == (False, False, 451)
    assert later.error is not None and "try again later" in later.error


def test_email_unreachable_server_is_retryable_without_password() -> None:
    cfg = settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_username="notifier",
                   smtp_password=SecretStr(PASSWORD))
    result = send(cfg, "email", envelope(), target("a@b.example"))
    assert (result.ok, result.permanent) == (False, False)
    assert result.error == "connection refused"
    assert PASSWORD not in repr(result)


def test_email_silent_server_times_out() -> None:
    # Accepts TCP connections (the kernel's backlog) but never says hello.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        cfg = settings(smtp_host="127.0.0.1", smtp_port=silent.getsockname()[1],
                       smtp_timeout_seconds=0.3)
        result = send(cfg, "email", envelope(), target("a@b.example"))
    assert (result.ok, result.permanent, result.error) == (False, False, "timeout after 0.3s")


def test_email_starttls_with_verified_certificate(tmp_path: Path) -> None:
    pair = self_signed_cert(tmp_path)
    if pair is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = pair
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with SmtpReceiver(tls_context=server_ctx, require_starttls=True,
                      credentials={"notifier": PASSWORD}) as server:
        cfg = smtp_settings(server, smtp_starttls=True, smtp_username="notifier",
                            smtp_password=SecretStr(PASSWORD))

        async def deliver(trusting: bool) -> DeliveryResult:
            async with make_http_client(cfg) as http:
                notifier = EmailNotifier(NotifierContext(cfg, http))
                if trusting:
                    notifier.ssl_context = ssl.create_default_context(cafile=str(cert))
                return await notifier.send(envelope(), target("a@b.example"))

        # The default context verifies against the system store: a self-signed server is
        # refused (retryable: the operator may fix the certificate).
        untrusted = run(deliver(trusting=False))
        assert (untrusted.ok, untrusted.permanent) == (False, False)
        assert untrusted.error is not None and "certificate" in untrusted.error

        trusted = run(deliver(trusting=True))
        assert trusted.ok, trusted.error
        [mail] = server.wait_for(1)
        assert mail.login == "notifier"  # AUTH went over the TLS channel (auth_require_tls)


def test_email_validate() -> None:
    notifier = EmailNotifier(NotifierContext(settings(), None))  # type: ignore[arg-type]
    assert notifier.validate("duty@mic.gov.vn", {}) == {}
    assert notifier.validate("a@b.example, c@d.example", {}) == {}
    for bad in ("", "not-an-address", "a@b.example, ", "a@b.example\r\nBcc: x@y.example",
                "Duty <duty@mic.gov.vn>"):
        with pytest.raises(ValueError, match="email"):
            notifier.validate(bad, {})


# ------------------------------------------------------------------------------------------ log


def test_log_notifier_writes_one_structured_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crisisflow.notifications")
    notifier = LogNotifier(NotifierContext(settings(), None))  # type: ignore[arg-type]
    result = run(notifier.send(envelope(), target("dev console", agency="MOH")))
    assert result.ok
    [record] = [r for r in caplog.records if r.name == "crisisflow.notifications"]
    assert record.levelno == logging.INFO
    assert record.__dict__["event_type"] == "incident.escalated"
    assert record.__dict__["delivery_id"] == DELIVERY_ID
    assert record.__dict__["incident_reference"] == "INC-2026-000001"
    assert record.__dict__["agency"] == "MOH"
    assert "incident.escalated" in record.getMessage()


# ------------------------------------------------------------------------------------ discovery

PLUGIN_SOURCE = '''
from pydantic import BaseModel

from notifiers.base import DeliveryResult, Notifier

SENT = []


class PagerConfig(BaseModel):
    priority: int = 3


class AcmePager(Notifier):
    name = "acme-pager"
    config_model = PagerConfig

    async def send(self, envelope, target):
        SENT.append((envelope.type, target.target, target.config["priority"]))
        return DeliveryResult(ok=True, status_code=202)


class NotANotifier:
    pass
'''


def install_dist(site: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution: what pip leaves in site-packages, minus RECORD."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[crisisflow.notifiers]\n{entry_points}\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "acme_pager").mkdir()
    (tmp_path / "acme_pager" / "__init__.py").write_text(PLUGIN_SOURCE)
    install_dist(tmp_path, "acme_pager", "acme-pager = acme_pager:AcmePager")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("acme_pager", None)


def test_discover_finds_builtins() -> None:
    found = discover()
    assert found["webhook"] is WebhookNotifier
    assert found["email"] is EmailNotifier
    assert found["log"] is LogNotifier


def test_third_party_notifier_is_discovered_and_used(plugin_site: Path) -> None:
    found = discover()
    assert {"webhook", "email", "log", "acme-pager"} <= set(found)
    assert issubclass(found["acme-pager"], Notifier)

    cfg = settings()

    async def use(reg: NotifierRegistry) -> DeliveryResult:
        assert "acme-pager" in reg.names()
        pager = reg.get("acme-pager")
        assert reg.get("acme-pager") is pager  # one instance per process
        config = pager.validate("ops-rotation", {"priority": "1"})
        assert config == {"priority": 1}
        with pytest.raises(ValueError, match=r"config\.priority"):
            pager.validate("ops-rotation", {"priority": "urgent"})
        tgt = Target("sub_9", "MIC", "ops-rotation", config, None)
        return await reg.send("acme-pager", envelope("incident.detected"), tgt)

    result = run(with_registry(cfg, use))
    assert result.ok and result.status_code == 202
    assert sys.modules["acme_pager"].SENT == [("incident.detected", "ops-rotation", 1)]


def test_broken_plugins_are_skipped_and_logged(
    plugin_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install_dist(plugin_site, "broken_pager", "broken = broken_pager_missing:Pager")
    install_dist(plugin_site, "odd_pager", "odd = acme_pager:NotANotifier")
    with caplog.at_level(logging.ERROR, logger="notifiers.base"):
        found = discover()
    assert "broken" not in found and "odd" not in found
    assert {"webhook", "email", "log", "acme-pager"} <= set(found)
    messages = [r.getMessage() for r in caplog.records if r.name == "notifiers.base"]
    assert any("'broken'" in m and "ModuleNotFoundError" in m for m in messages)
    assert any("'odd'" in m and "not a Notifier subclass" in m for m in messages)


def test_registry_unknown_name_and_crashing_plugin() -> None:
    class Crashing(Notifier):
        name = "crashing"

        async def send(self, envelope: Envelope, target: Target) -> DeliveryResult:
            raise RuntimeError(f"boom with {target.secret}")

    async def use(reg: NotifierRegistry) -> DeliveryResult:
        with pytest.raises(KeyError, match="carrier-pigeon"):
            reg.get("carrier-pigeon")
        return await reg.send("crashing", envelope(), target("x", secret=SECRET))

    async def scenario() -> DeliveryResult:
        cfg = settings()
        async with make_http_client(cfg) as http:
            reg = NotifierRegistry(NotifierContext(cfg, http), {"crashing": Crashing})
            assert reg.names() == ["crashing"]
            return await use(reg)

    result = run(scenario())
    assert (result.ok, result.permanent) == (False, False)
    assert result.error == "notifier raised RuntimeError"
    assert SECRET not in repr(result)
