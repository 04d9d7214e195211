"""Real receivers for delivery tests: an HTTP server and an SMTP server, each in its own thread
on 127.0.0.1 with an ephemeral port.

    with HttpReceiver() as rx:
        rx.set_response(503, {"Retry-After": "7"})
        ... deliver to rx.url ...
        [req] = rx.wait_for(1)
        req.headers["webhook-id"], req.json()

    with SmtpReceiver(credentials={"user": "pw"}) as smtp:
        ... send to smtp.host:smtp.port ...
        [mail] = smtp.wait_for(1)
        mail.message["Subject"]
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# ----------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    received_at: float  # time.time()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class CannedResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real receivers; every reply has a length
    timeout = 10  # idle keep-alive connections must not pin handler threads forever
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        receiver = self.server.receiver
        request = ReceivedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
            received_at=time.time(),
        )
        # Recorded before hanging: a timeout test can still see the request arrived.
        reply = receiver._record(request)
        if receiver.hang_seconds > 0:
            receiver._release.wait(receiver.hang_seconds)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (ConnectionError, OSError):
            self.close_connection = True  # the client gave up (timeout test): nothing to do

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 resets connections under load
    block_on_close = False  # stop() must not wait for a handler that is hanging on purpose
    receiver: HttpReceiver


class HttpReceiver:
    """Records every request; answers with `set_response()` (default 200), or first with the
    one-shot replies queued by `push_response()`. `hang_seconds` delays every reply (released
    early by `stop()`)."""

    def __init__(self, host: str = "127.0.0.1", path: str = "/hook", port: int = 0) -> None:
        self.host = host
        self._port = port
        self.path = path
        self.requests: list[ReceivedRequest] = []
        self.hang_seconds = 0.0
        self._default = CannedResponse()
        self._queue: deque[CannedResponse] = deque()
        self._lock = threading.Condition()
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def start(self) -> Self:
        self._release.clear()
        # Restarting keeps the port, so a test can take the receiver down and bring it back.
        self._server = _Server((self.host, self._port), _Handler)
        self._port = int(self._server.server_address[1])
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set_response(
        self, status: int = 200, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        with self._lock:
            self._default = CannedResponse(status, dict(headers or {}), body)

    def push_response(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        with self._lock:
            self._queue.append(CannedResponse(status, dict(headers or {}), body))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._queue.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until at least `count` requests arrived; AssertionError after `timeout`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.requests)}")
            return list(self.requests)

    def _record(self, request: ReceivedRequest) -> CannedResponse:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            return self._queue.popleft() if self._queue else self._default


# ----------------------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None  # the authenticated user, if the session logged in

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.receiver.rcpt_reply:
            return self.receiver.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.receiver.data_reply:
            return self.receiver.data_reply
        login = session.auth_data if session.authenticated else None
        self.receiver._record(
            ReceivedMail(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or envelope.content),
                login=login.decode() if isinstance(login, bytes) else login,
            )
        )
        return "250 Message accepted for delivery"


class _EphemeralController(Controller):
    """aiosmtpd's Controller probes `self.port` after binding; with port 0 that probe would fail,
    so learn the real port from the bound socket first."""

    def _trigger_server(self) -> None:
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpReceiver:
    """aiosmtpd server storing every accepted message.

    credentials: {login: password} turns on required AUTH (allowed without TLS unless a
    tls_context is given). tls_context: offer STARTTLS; require_starttls: refuse mail without it.
    rcpt_reply / data_reply: answer RCPT / DATA with this line instead (e.g. "550 5.1.1 no such
    user", "451 4.3.0 try later"). `auth_attempts` lists (login, accepted), never passwords."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        credentials: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        self.messages: list[ReceivedMail] = []
        self.auth_attempts: list[tuple[str, bool]] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self._lock = threading.Condition()
        self._controller: _EphemeralController | None = None

    @property
    def port(self) -> int:
        assert self._controller is not None, "receiver not started"
        return int(self._controller.port)

    def start(self) -> Self:
        kwargs: dict[str, Any] = {}
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=self.require_starttls)
        if self.credentials is not None:
            kwargs.update(
                auth_required=True,
                auth_require_tls=self.tls_context is not None,
                authenticator=self._authenticate,
            )
        self._controller = _EphemeralController(
            _SmtpHandler(self), hostname=self.host, port=0, **kwargs
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
            return list(self.messages)

    def _record(self, mail: ReceivedMail) -> None:
        with self._lock:
            self.messages.append(mail)
            self._lock.notify_all()

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = (self.credentials or {}).get(login) == auth_data.password.decode()
        self.auth_attempts.append((login, ok))
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


# ------------------------------------------------------------------------------------------ TLS


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path] | None:
    """(cert.pem, key.pem) for `host` (as an IP SAN), made with the openssl command; None when
    openssl is not installed, so callers can skip."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={host}",
            "-addext", f"subjectAltName=IP:{host}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key
