"""A bounded soak: mixed ingest, transitions, reads and SSE clients against a running
crisisflow, with the webhook receiver failing 20% of deliveries (their first attempt).

    python -m bench.soak [--minutes 5] [--backend sqlite|postgresql]

Loopback only; stops by itself. Prints requests, errors by status, alerts accepted versus
stored, deliveries expected versus received; exits 1 on any 5xx, lost alert or lost delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import create_key, fresh_database, start_crisisflow
from tests.helpers.receivers import CannedResponse, HttpReceiver, ReceivedRequest

FAIL_SHARE = 0.2


class FlakyReceiver(HttpReceiver):
    """Fails the first attempt of 20% of deliveries (by webhook-id), accepts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[str] = set()
        self.delivered: set[str] = set()
        self.attempts = 0
        self._rng = random.Random(7)
        self._ids = threading.Lock()

    def _record(self, request: ReceivedRequest) -> CannedResponse:
        webhook_id = request.headers.get("webhook-id", "")
        with self._ids:
            self.attempts += 1
            if webhook_id not in self.failed and webhook_id not in self.delivered \
                    and self._rng.random() < FAIL_SHARE:
                self.failed.add(webhook_id)
                return CannedResponse(503)
            self.delivered.add(webhook_id)
        return CannedResponse(200)


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.accepted: set[str] = set()
        self.sse_events = 0

    def seen(self, resp: httpx.Response) -> None:
        self.statuses[resp.status_code] += 1


async def ingest(http: httpx.AsyncClient, key: str, tally: Tally, until: float) -> None:
    n = 0
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < until:
        n += 1
        batch = [{"source": "soak", "title": f"Tin đồn số {n}-{i}",
                  "labels": {"topic": f"chu-de-{random.randrange(200)}",
                             "post": str(random.randrange(2000))}}
                 for i in range(random.choice([1, 1, 1, 10, 50]))]
        resp = await http.post("/api/v1/alerts", json=batch, headers=headers)
        tally.seen(resp)
        if resp.status_code == 202:
            tally.accepted.update(r["alert_id"] for r in resp.json()["results"])
        await asyncio.sleep(0.02)


async def officer(http: httpx.AsyncClient, duty: str, leader: str, tally: Tally,
                  until: float) -> None:
    d = {"Authorization": f"Bearer {duty}"}
    ld = {"Authorization": f"Bearer {leader}"}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("assess", {"severity": "high", "category": "fake_news", "summary": "Đánh giá"}),
        ("propose_task_force", {"lead_agency": "MOH", "members": ["MIC"], "mandate": "m",
                                "rationale": "r"}),
        ("approve", {}),
        ("issue_response", {"channel": "press_release", "statement": "Cải chính",
                            "spokesperson": "Người phát ngôn"}),
        ("close", {"resolution": "resolved", "summary": "Xong"}),
    ]
    while time.monotonic() < until:
        resp = await http.post("/api/v1/incidents", headers=d,
                               json={"title": "Sự cố kiểm thử", "affected_agencies": ["MOH"]})
        tally.seen(resp)
        if resp.status_code != 201:
            await asyncio.sleep(0.5)
            continue
        incident = resp.json()["id"]
        for trigger, payload in steps:
            if trigger == "approve":
                pending = await http.get(f"/api/v1/proposals?status=pending&incident={incident}",
                                         headers=ld)
                tally.seen(pending)
                for p in pending.json().get("items", []):
                    tally.seen(await http.post(f"/api/v1/proposals/{p['id']}/approve",
                                               json={}, headers=ld))
                continue
            tally.seen(await http.post(f"/api/v1/incidents/{incident}/transitions", headers=d,
                                       json={"trigger": trigger, **payload}))
        await asyncio.sleep(0.2)


async def reader(http: httpx.AsyncClient, key: str, tally: Tally, until: float) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    queries = ["/api/v1/incidents?state=detected&severity=low", "/api/v1/incidents?q=tin%20don",
               "/api/v1/stats", "/api/v1/incidents?overdue=true", "/api/v1/agencies"]
    while time.monotonic() < until:
        tally.seen(await http.get(random.choice(queries), headers=headers))
        await asyncio.sleep(0.05)


async def sse_client(base: str, key: str, tally: Tally, until: float) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=30)) as http:
        while time.monotonic() < until:
            try:
                async with http.stream("GET", "/api/v1/events/stream",
                                       headers={"Authorization": f"Bearer {key}"}) as resp:
                    tally.statuses[resp.status_code] += 1
                    async for line in resp.aiter_lines():
                        if line.startswith("id: "):
                            tally.sse_events += 1
                        if time.monotonic() > until:
                            break
            except httpx.HTTPError:
                await asyncio.sleep(0.5)


async def run(base: str, keys: dict[str, str], seconds: float) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        await asyncio.gather(
            *(ingest(http, keys["monitor"], tally, until) for _ in range(4)),
            *(officer(http, keys["duty_officer"], keys["leader"], tally, until)
              for _ in range(2)),
            *(reader(http, keys["viewer"], tally, until) for _ in range(2)),
            *(sse_client(base, keys["viewer"], tally, until) for _ in range(3)),
        )
    return tally


def stored(db_url: str) -> tuple[set[str], set[str]]:
    from app.core.db import make_sync_engine

    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            alerts = {r[0] for r in conn.execute(sa.text("SELECT id FROM alert"))}
            deliveries = {r[0] for r in conn.execute(sa.text("SELECT id FROM delivery"))}
    finally:
        engine.dispose()
    return alerts, deliveries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--drain-seconds", type=float, default=90.0)
    args = parser.parse_args()
    with fresh_database(args.backend) as db_url, FlakyReceiver() as receiver:
        server = start_crisisflow("soak", db_url)
        try:
            keys = {r: create_key(db_url, r) for r in
                    ("admin", "duty_officer", "leader", "monitor", "viewer")}
            events = ["incident.detected", "incident.assessed", "incident.escalated",
                      "task_force.proposed", "task_force.approved", "response.issued",
                      "incident.closed"]
            resp = httpx.post(f"{server.base}/api/v1/subscriptions", json={
                "agency": "MIC", "notifier": "webhook", "target": receiver.url,
                "events": events, "scope": "all"},
                headers={"Authorization": f"Bearer {keys['admin']}"})
            resp.raise_for_status()
            started = time.monotonic()
            print(f"soak: {args.minutes:g} min on {args.backend}, receiver fails "
                  f"{FAIL_SHARE:.0%} of first attempts", flush=True)
            tally = asyncio.run(run(server.base, keys, args.minutes * 60))
            load_seconds = time.monotonic() - started
            _, deliveries = stored(db_url)
            deadline = time.monotonic() + args.drain_seconds
            while time.monotonic() < deadline and not deliveries <= receiver.delivered:
                time.sleep(1)
                _, deliveries = stored(db_url)
            alerts, deliveries = stored(db_url)
        finally:
            server.proc.stop()
    requests = sum(tally.statuses.values())
    lost_alerts = tally.accepted - alerts
    missing = deliveries - receiver.delivered
    server_errors = sum(n for s, n in tally.statuses.items() if s >= 500)
    print(f"requests: {requests} in {load_seconds:.0f} s ({requests / load_seconds:.0f}/s)")
    print(f"responses by status: {dict(sorted(tally.statuses.items()))}")
    print(f"5xx: {server_errors}")
    print(f"alerts accepted (202): {len(tally.accepted)}; stored: {len(alerts)}; "
          f"accepted but missing: {len(lost_alerts)}")
    print(f"deliveries expected: {len(deliveries)}; received at least once: "
          f"{len(deliveries & receiver.delivered)}; missing: {len(missing)}; "
          f"first attempts failed on purpose: {len(receiver.failed)}; "
          f"receiver saw {receiver.attempts} attempts")
    print(f"SSE events read by 3 clients: {tally.sse_events}")
    return 1 if server_errors or lost_alerts or missing else 0


if __name__ == "__main__":
    sys.exit(main())
