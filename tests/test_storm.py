"""During an alert storm, a runaway monitor is rate-limited and duty officers and leaders
keep being served."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.factories import ASSESS, live_server


@pytest.fixture
def settings_env() -> dict[str, Any]:
    return {"ingest_rate_limit": 500, "ingest_burst": 1000}


def test_officers_are_served_during_a_storm(app: Any, client: TestClient,
                                            make_key: Callable[..., dict[str, str]]) -> None:
    monitor, duty, leader = make_key("monitor"), make_key("duty_officer"), make_key("leader")
    storm_status: Counter[int] = Counter()
    stop = threading.Event()

    def storm(base: str) -> None:
        n = 0
        with httpx.Client(base_url=base, headers=monitor, timeout=30) as http:
            while not stop.is_set():
                batch = [{"source": "runaway", "title": f"Tin đồn {n + i}",
                          "labels": {"topic": f"t{(n + i) % 50}", "k": str(n + i)}}
                         for i in range(500)]
                n += 500
                storm_status[http.post("/api/v1/alerts", json=batch).status_code] += 1

    with live_server(app) as base:
        threads = [threading.Thread(target=storm, args=(base,), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        slowest = 0.0
        try:
            time.sleep(1.0)
            with httpx.Client(base_url=base, timeout=30) as http:
                for i in range(5):
                    started = time.perf_counter()
                    created = http.post("/api/v1/incidents", headers=duty,
                                        json={"title": f"Sự cố thủ công {i}"})
                    assert created.status_code == 201, created.text
                    moved = http.post(f"/api/v1/incidents/{created.json()['id']}/transitions",
                                      headers=duty, json={"trigger": "assess", **ASSESS})
                    assert moved.status_code == 200, moved.text
                    listed = http.get("/api/v1/incidents?state=assessed", headers=leader)
                    assert listed.status_code == 200
                    slowest = max(slowest, time.perf_counter() - started)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    print(f"\nstorm responses {dict(storm_status)}; slowest officer round trip {slowest:.3f} s")
    assert storm_status[202] > 0
    assert storm_status[429] > 0, "the runaway monitor was never limited"
    assert set(storm_status) <= {202, 429}
    assert slowest < 5.0, "duty officers were starved by the storm"
