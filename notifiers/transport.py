"""HTTP/1.1 for webhook delivery, under httpx's client.

httpx's own transport (httpcore over anyio) spends about a millisecond of CPU per request on
the bench machine, and more as connections multiply: on every request it walks the whole
pool asking each idle socket whether it is readable. The worker delivers one webhook per
event and subscription, in the API process's event loop, so at 100 incidents a second that
was a third of the process's CPU and pushed escalation latency past its target.

This transport keeps what a webhook needs: one request per connection at a time, idle
connections kept per origin (the most recent reused first; one found closed by its server
is dropped, and a request on one the server closes just as it is reused, before a byte of
an answer, is sent once more on a new connection), TLS with httpx's default verification,
httpx's connect /
write / read timeouts and exception classes. Parsing is h11's, as in httpcore. Where the
environment names a proxy, `make_http_client` keeps httpx's own transport, which knows them.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

_READ_SIZE = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


class _Connection:
    __slots__ = ("h11", "idle_until", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_until = 0.0

    def usable(self) -> bool:
        if self.writer.is_closing() or self.reader.at_eof() or time.monotonic() > self.idle_until:
            return False
        # An idle connection has nothing to read: readable means the server closed it (or sent
        # something unasked), even if the event loop has not noticed yet.
        sock = self.writer.get_extra_info("socket")
        return sock is None or not select.select([sock], [], [], 0)[0]

    def close(self) -> None:
        self.writer.close()

    async def _read_event(self, seconds: float | None) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(self.reader.read(_READ_SIZE), seconds)
            except TimeoutError as exc:
                raise httpx.ReadTimeout("timed out reading the response") from exc
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            self.h11.receive_data(data)


class _ClosedUnanswered(Exception):
    pass


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_idle_per_origin: int, keepalive_expiry: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_idle = max_idle_per_origin
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first https use: loading the CA bundle takes a while
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeout = request.extensions.get("timeout", {})
        conn = self._reuse(origin)
        if conn is not None:
            try:
                return await self._exchange(origin, conn, request, timeout, reused=True)
            except _ClosedUnanswered:
                pass  # the server closed it as we reused it: once more, on a new connection
        conn = await self._connect(origin, timeout.get("connect"))
        return await self._exchange(origin, conn, request, timeout, reused=False)

    async def _exchange(self, origin: Origin, conn: _Connection, request: httpx.Request,
                        limits: dict[str, float | None], *, reused: bool) -> httpx.Response:
        """One request and the head of its answer. On a reused connection the server closed
        before a byte of an answer, `_ClosedUnanswered` (the caller tries a new one)."""
        try:
            await self._send(conn, request, limits.get("write"))
            event = await conn._read_event(limits.get("read"))
            while isinstance(event, h11.InformationalResponse):
                event = await conn._read_event(limits.get("read"))
            if not isinstance(event, h11.Response):
                if reused:
                    raise _ClosedUnanswered()
                raise httpx.RemoteProtocolError("the server closed the connection without "
                                                "a response")
        except (httpx.ReadError, httpx.WriteError) as exc:
            conn.close()
            if reused and conn.h11.their_state is h11.SEND_RESPONSE:
                raise _ClosedUnanswered() from exc
            raise
        except h11.ProtocolError as exc:
            conn.close()
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        body = _Body(self, origin, conn, limits.get("read"))
        return httpx.Response(
            event.status_code, headers=event.headers, stream=body,
            extensions={"http_version": b"HTTP/" + event.http_version,
                        "reason_phrase": event.reason})

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        """After a complete exchange: keep the connection for the next request if both sides
        may go on, otherwise close it."""
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle:
                conn.idle_until = time.monotonic() + self.keepalive_expiry
                idle.append(conn)
                return
        conn.close()

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls,
                                        server_hostname=host if tls else None,
                                        limit=_READ_SIZE),
                seconds)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:  # refused, unreachable, name resolution, TLS
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    @staticmethod
    async def _send(conn: _Connection, request: httpx.Request, seconds: float | None) -> None:
        data = conn.h11.send(h11.Request(method=request.method, target=request.url.raw_path,
                                         headers=request.headers.raw)) or b""
        parts = [data]
        async for chunk in request.stream:  # type: ignore[union-attr]
            if chunk:
                parts.append(conn.h11.send(h11.Data(data=chunk)) or b"")
        parts.append(conn.h11.send(h11.EndOfMessage()) or b"")
        conn.writer.write(b"".join(parts))
        try:
            await asyncio.wait_for(conn.writer.drain(), seconds)
        except TimeoutError as exc:
            raise httpx.WriteTimeout("timed out sending the request") from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; the connection goes back to the pool once the body
    has been read to its end, and is closed if the reader stops early."""

    def __init__(self, transport: LeanTransport, origin: Origin, conn: _Connection,
                 timeout: float | None) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                event = await conn._read_event(self._timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        except h11.ProtocolError as exc:
            await self.aclose()
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except BaseException:
            await self.aclose()
            raise
        self._conn = None
        self._transport._release(self._origin, conn)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
