"""Escalation latency: alerts at a fixed rate, each opening a new incident; the time from each
alert's 202 to the arrival of that incident's `incident.detected` webhook at a local receiver.

The receiver is a minimal HTTP/1.1 server on 127.0.0.1 in the harness's own event loop, so
both timestamps come from one monotonic clock. Matching is by incident id: the 202 carries
`results[0].incident_id`, the webhook `data.incident.id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.alerts import make_alert
from bench.common import HOST


@dataclass
class Receiver:
    arrivals: dict[str, float] = field(default_factory=dict)
    received: int = 0
    bad: int = 0
    port: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    break
                length, close = 0, False
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip() or 0)
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                body = await asyncio.wait_for(reader.readexactly(length), 30) if length else b""
                now = time.monotonic()
                self.received += 1
                try:
                    event = json.loads(body)
                    if event.get("type") == "incident.detected":
                        incident_id = event["data"]["incident"]["id"]
                        self.arrivals.setdefault(incident_id, now)
                        self.changed.set()
                except (ValueError, KeyError, TypeError):
                    self.bad += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # the receiver is stopping
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))  # nearest rank
    return ordered[k]


async def run(base: str, monitor_key: str, admin_key: str, *, rate: float = 100.0,
              duration: float = 20.0, drain: float = 15.0, nonce: str = "") -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    accepted: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    ack_ms: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    rng = random.Random(11)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
            resp = await client.post(
                "/api/v1/subscriptions", headers={"Authorization": f"Bearer {admin_key}"},
                json={"agency": "MIC", "notifier": "webhook",
                      "target": f"http://{HOST}:{receiver.port}/hook",
                      "events": ["incident.detected"], "scope": "all"})
            if resp.status_code != 201:
                raise RuntimeError(f"subscription refused: {resp.status_code} {resp.text[:300]}")
            headers = {"Authorization": f"Bearer {monitor_key}"}
            gate = asyncio.Semaphore(256)

            async def send(i: int) -> None:
                alert = make_alert(f"esc-{nonce}-{i:06d}", i % 5000, rng)
                alert["labels"]["topic"] = f"esc-{nonce}-{i:06d}"  # a new topic each time
                async with gate:
                    t0 = time.monotonic()
                    try:
                        r = await client.post("/api/v1/alerts", json=alert, headers=headers)
                    except httpx.HTTPError as exc:
                        errors.append(type(exc).__name__)
                        return
                    t1 = time.monotonic()
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                ack_ms.append((t1 - t0) * 1000.0)
                if r.status_code == 202:
                    incident_id = r.json()["results"][0]["incident_id"]
                    accepted[incident_id] = t1
                    sent_at[incident_id] = t0

            total = int(rate * duration)
            start = time.monotonic()
            tasks = []
            for i in range(total):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(send(i)))
            send_end = time.monotonic()
            _, pending = await asyncio.wait(tasks, timeout=90) if tasks else (set(), set())
            for task in pending:
                task.cancel()
            deadline = time.monotonic() + drain
            while not set(accepted) <= set(receiver.arrivals):  # the last webhooks, bounded
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                receiver.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receiver.changed.wait(), remaining)
    finally:
        await receiver.stop()
    lat, from_send, early = [], [], 0
    for incident_id, t_ok in accepted.items():
        t_hook = receiver.arrivals.get(incident_id)
        if t_hook is None:
            continue
        delta = (t_hook - t_ok) * 1000.0
        if delta < 0:
            early += 1
            delta = 0.0
        lat.append(delta)
        from_send.append((t_hook - sent_at[incident_id]) * 1000.0)
    return {
        "sent": total, "accepted": len(accepted), "statuses": statuses,
        "client_errors": len(errors),
        "client_error_types": {e: errors.count(e) for e in sorted(set(errors))},
        "matched": len(lat),
        "missing": len(accepted) - len(lat), "early": early,
        "rate_achieved": total / max(send_end - start, 1e-9),
        # How fast the server actually accepted them (below `rate` means a growing backlog).
        "accept_rate": len(accepted) / max(max(accepted.values(), default=start) - start, 1e-9),
        "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
        "max_ms": max(lat) if lat else None,
        "mean_ms": statistics.fmean(lat) if lat else None,
        "send_p50_ms": _pct(from_send, 50), "send_p99_ms": _pct(from_send, 99),
        "ack_p50_ms": _pct(ack_ms, 50), "ack_p99_ms": _pct(ack_ms, 99),
        "webhooks": receiver.received, "bad_webhooks": receiver.bad,
    }
