"""Webhook delivery over crisisflow's HTTP/1.1 transport (notifiers.transport), against a real
TCP server in a thread that answers with exact bytes: keep-alive reuse, servers that close
idle connections, chunked / close-delimited / interim responses, an early stop, TLS. No
database."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifiers.base import NotifierContext, Target, make_http_client
from notifiers.transport import LeanTransport
from notifiers.webhook import WebhookNotifier
from tests.helpers.receivers import self_signed_cert
from tests.test_notifiers import envelope, settings

OK = b"HTTP/1.1 204 No Content\r\n\r\n"


class ScriptedServer:
    """Accepts connections; for each request read (headers + Content-Length body) it sends
    `reply(n)` (n counts requests over all connections), then closes the connection when
    `close_after(n)` says so. Counts connections and requests."""

    def __init__(self, reply: Callable[[int], bytes] = lambda n: OK,
                 close_after: Callable[[int], bool] = lambda n: False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.reply, self.close_after, self.tls = reply, close_after, tls
        self.connections = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused our certificate
            conn.close()
            return
        with self._lock:
            self.connections += 1
        with conn, contextlib.suppress(OSError):  # the client may reset a garbled exchange
            self._exchange(conn)

    def _exchange(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(buffer) < length:
                buffer += conn.recv(65536)
            buffer = buffer[length:]
            with self._lock:
                self.requests += 1
                n = self.requests
            conn.sendall(self.reply(n))
            if self.close_after(n):
                return


def deliver(urls: list[str], transport: LeanTransport | None = None) -> list[Any]:
    """Each URL in turn through one client (one connection pool), as the worker does."""
    cfg = settings(webhook_timeout_seconds=3)

    async def run() -> list[Any]:
        async with make_http_client(cfg) as http:
            if transport is not None:
                http._transport = transport  # the same client, trusting a test CA
            notifier = WebhookNotifier(NotifierContext(cfg, http))
            return [await notifier.send(envelope(), Target(
                subscription_id="sub_1", agency="MIC", target=url, config={}, secret=None))
                for url in urls]

    return asyncio.run(run())


def test_deliveries_to_one_receiver_share_a_kept_alive_connection() -> None:
    with ScriptedServer() as server:
        results = deliver([server.url()] * 3)
    assert [r.ok for r in results] == [True, True, True]
    assert (server.connections, server.requests) == (1, 3)


def test_a_receiver_closing_idle_connections_costs_no_failed_delivery() -> None:
    with ScriptedServer(close_after=lambda n: True) as server:
        results = deliver([server.url()] * 3)
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    assert (server.connections, server.requests) == (3, 3)


def test_interim_chunked_and_close_delimited_answers_are_read() -> None:
    answers = {
        1: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n8\r\nupstream\r\n5\r\n down\r\n0\r\n\r\n",
        2: b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nschema mismatch",
        3: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }
    with ScriptedServer(reply=answers.__getitem__, close_after=lambda n: n == 2) as server:
        first, second, third = deliver([server.url()] * 3)
    assert (first.ok, first.permanent, first.status_code) == (False, False, 503)
    assert first.error == "HTTP 503 Service Unavailable: upstream down"
    assert (second.ok, second.permanent, second.status_code) == (False, True, 400)
    assert second.error == "HTTP 400 Bad Request: schema mismatch"
    assert third.ok and third.status_code == 200
    assert server.connections == 2  # the chunked answer kept it open; "close" did not


def test_a_long_answer_is_cut_short_and_its_connection_not_reused() -> None:
    big = b"x" * (512 * 1024)
    answers = {1: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big, 2: OK}
    with ScriptedServer(reply=answers.__getitem__) as server:
        results = deliver([server.url()] * 2)
    assert [r.ok for r in results] == [True, True]
    assert server.connections == 2


def test_a_garbled_answer_is_a_retryable_failure() -> None:
    with ScriptedServer(reply=lambda n: b"SMTP ready\r\n\r\n") as server:
        [result] = deliver([server.url()])
    assert (result.ok, result.permanent, result.status_code) == (False, False, None)
    assert result.error and "RemoteProtocolError" in result.error


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    pair = self_signed_cert(tmp_path)
    if pair is None:
        pytest.skip("openssl command not available to make a test certificate")
    yield pair


def test_https_receivers_are_verified(tls_pair: tuple[Path, Path]) -> None:
    cert, key = tls_pair
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with ScriptedServer(tls=server_ctx) as server:
        [untrusted] = deliver([server.url("https")])
        trusting = LeanTransport(max_idle_per_origin=4, keepalive_expiry=30,
                                 ssl_context=ssl.create_default_context(cafile=str(cert)))
        trusted = deliver([server.url("https")] * 2, transport=trusting)
    assert (untrusted.ok, untrusted.permanent) == (False, False)
    assert untrusted.error and untrusted.error.startswith("TLS certificate verification failed")
    assert [r.ok for r in trusted] == [True, True]
    # The refused handshake never became a connection; the trusted one was kept alive.
    assert (server.connections, server.requests) == (1, 2)
