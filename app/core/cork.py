"""Sending what a connection writes within one turn of the event loop as one write.

uvloop sends every write at once: one system call each, and on TCP (TCP_NODELAY) one segment
each. uvicorn writes a response's status line and headers, then its body, as two writes, so
every small 202 of an alert storm cost two; those writes were a quarter of the API process's
CPU. Between an API process and the ingest process, each request's frame and each answer
was a write of its own, though a group's answers all go out in the same turn. `Cork` holds
a connection's writes until the end of the turn (or until they reach FLUSH_BYTES, so a
streamed report keeps its back-pressure) and sends them together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Held writes past this size go out at once: the transport then signals back-pressure
# (pause_writing) as soon as it would have without the holding.
FLUSH_BYTES = 64 * 1024


class Cork:
    """A transport (or asyncio StreamWriter) whose writes are sent once per turn of the
    event loop; everything else is the wrapped object's own."""

    __slots__ = ("_loop", "_pending", "_size", "_wrapped")

    def __init__(self, wrapped: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._wrapped = wrapped
        self._loop = loop or asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._size = self._pending, [], 0
        if not self._wrapped.is_closing():
            self._wrapped.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._wrapped.close()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._wrapped.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (what `crisisflow serve` runs) on a corked transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked: Any = Cork(transport, self.loop)
        super().connection_made(corked)
