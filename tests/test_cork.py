"""Corked connections (app.core.cork): one write per turn of the event loop, nothing lost,
back-pressure kept. On real TCP connections under uvloop, as `crisisflow serve` runs."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from app.core.cork import FLUSH_BYTES, Cork


class _Counting:
    """The real transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _pair() -> tuple[_Counting, asyncio.StreamReader, asyncio.AbstractServer]:
    """A real TCP connection: our side's transport, and a reader on the peer's side."""
    accepted: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        accepted.set_result(reader)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol,
                                                                       "127.0.0.1", port)
    return _Counting(transport), await accepted, server  # type: ignore[arg-type]


def test_writes_of_one_turn_go_out_as_one_and_arrive_whole() -> None:
    async def scenario() -> tuple[list[int], list[int], bytes]:
        real, peer, server = await _pair()
        cork = Cork(real)
        cork.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\n")
        cork.write(b"hello")
        held = list(real.writes)  # nothing sent yet within this turn
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        sent = list(real.writes)
        got = await asyncio.wait_for(peer.readexactly(49), 5)
        cork.close()
        server.close()
        return held, sent, got

    held, sent, got = uvloop.run(scenario())
    assert held == []
    assert sent == [49]
    assert got == b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhello"


def test_large_writes_go_out_at_once_and_close_sends_what_is_held() -> None:
    async def scenario() -> tuple[list[int], list[int], bytes]:
        real, peer, server = await _pair()
        cork = Cork(real)
        cork.write(b"a" * 100)
        cork.write(b"b" * FLUSH_BYTES)  # past the limit: sent within this turn
        at_once = list(real.writes)
        cork.write(b"tail")
        cork.close()  # before the turn ends: what is held still goes first
        sent = list(real.writes)
        got = await asyncio.wait_for(peer.read(), 5)  # to the end: the peer saw the close
        server.close()
        return at_once, sent, got

    at_once, sent, got = uvloop.run(scenario())
    assert at_once == [100 + FLUSH_BYTES]
    assert sent == [100 + FLUSH_BYTES, 4]
    assert got == b"a" * 100 + b"b" * FLUSH_BYTES + b"tail"


def test_writes_held_for_a_connection_already_gone_are_dropped_quietly() -> None:
    async def scenario() -> list[int]:
        real, _peer, server = await _pair()
        cork = Cork(real)
        cork.write(b"late answer")
        real.transport.close()
        await asyncio.sleep(0.01)  # the turn ends: flush finds the transport closing
        server.close()
        return real.writes

    assert uvloop.run(scenario()) == []
