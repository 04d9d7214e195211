"""The real Prometheus Alertmanager delivering to a running crisisflow.

Alertmanager (the Debian package `prometheus-alertmanager`, 0.25) runs as a process with the
webhook receiver of tests/fixtures/alertmanager/crisisflow.yml pointed at crisisflow's
`/api/v1/alerts/alertmanager`, authenticated with a monitor key (`Authorization: Bearer`).
Alerts are posted to Alertmanager's own API; the test then watches crisisflow through its
REST API until it holds what Alertmanager sent. Runs on both backends (the `client` fixture
is parametrized), about 10 s each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.factories import eventually, free_port, live_server

API = "/api/v1"
CONFIG = Path(__file__).resolve().parent / "fixtures" / "alertmanager" / "crisisflow.yml"
BINARIES = ("prometheus-alertmanager", "alertmanager")

FAKE_NEWS: dict[str, Any] = {
    "labels": {"alertname": "TinGiaLanTruyen", "topic": "chinh-sach-bao-hiem", "agency": "MIC",
               "agencies": "MOLISA,VSS", "severity": "critical", "platform": "facebook"},
    "annotations": {"summary": "Tin giả về chính sách bảo hiểm xã hội lan truyền nhanh",
                    "description": "1.200 lượt chia sẻ trong 30 phút; tỷ lệ tiêu cực 78%"},
    "generatorURL": "http://monitor.example.vn/graph?id=42",
}
FUEL: dict[str, Any] = {
    "labels": {"alertname": "GiaXangTang", "severity": "warning", "agency": "MOIT",
               "category": "negative_sentiment"},
    "annotations": {"summary": "Phản ứng tiêu cực về giá xăng dầu"},
    "generatorURL": "http://monitor.example.vn/graph?id=43",
}


def alertmanager_binary() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    message = ("prometheus-alertmanager is not installed (apt-get install "
               "prometheus-alertmanager; .ci/run installs it)")
    if os.environ.get("CI") == "true" or os.environ.get("CRISISFLOW_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def running_alertmanager(tmp_path: Path, crisisflow_url: str, key: str) -> Iterator[str]:
    """Start Alertmanager with the crisisflow receiver; yields its base URL."""
    binary = alertmanager_binary()
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(Template(CONFIG.read_text("utf-8")).substitute(
        CRISISFLOW_URL=crisisflow_url, MONITOR_KEY=key), "utf-8")
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address=",  # empty: no gossip, no cluster port
             "--log.level=debug"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text("utf-8", "replace")[-3000:]

    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited with {proc.returncode}:\n{log_tail()}")
            try:
                if httpx.get(f"{base}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"alertmanager did not become ready:\n{log_tail()}")
            time.sleep(0.1)
        try:
            yield base
        except BaseException:
            print(f"--- alertmanager log ---\n{log_tail()}")
            raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_real_alertmanager_delivers_dedups_and_resolves(
        client: TestClient, settings: Settings, make_key: Callable[..., dict[str, str]],
        tmp_path: Path) -> None:
    from app.main import create_app

    monitor = make_key("monitor", name="alertmanager")
    duty = make_key("duty_officer")
    key = monitor["Authorization"].removeprefix("Bearer ")
    started = time.monotonic()

    with live_server(create_app(settings)) as crisisflow, \
            running_alertmanager(tmp_path, crisisflow, key) as am, \
            httpx.Client(base_url=crisisflow, headers=duty, timeout=10) as cf, \
            httpx.Client(base_url=am, timeout=10) as amc:

        def incidents() -> list[dict[str, Any]]:
            resp = cf.get(f"{API}/incidents", params={"limit": 200})
            assert resp.status_code == 200, resp.text
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        def alerts_of(incident_id: str) -> list[dict[str, Any]]:
            resp = cf.get(f"{API}/incidents/{incident_id}/alerts", params={"limit": 200})
            assert resp.status_code == 200, resp.text
            items: list[dict[str, Any]] = resp.json()["items"]
            return items

        def by_title() -> dict[str, dict[str, Any]]:
            return {i["title"]: i for i in incidents()}

        def post_to_alertmanager(*alerts: dict[str, Any]) -> None:
            resp = amc.post("/api/v2/alerts", json=list(alerts))
            assert resp.status_code == 200, resp.text

        # 1. Two distinct label sets: two groups, two notifications, two incidents.
        now = datetime.now(UTC)
        post_to_alertmanager({**FAKE_NEWS, "startsAt": rfc3339(now)},
                             {**FUEL, "startsAt": rfc3339(now)})
        opened = eventually(lambda: (lambda m: m if len(m) == 2 else None)(by_title()), 15,
                            "two incidents from two Alertmanager groups")
        fake = opened[FAKE_NEWS["annotations"]["summary"]]
        fuel = opened[FUEL["annotations"]["summary"]]
        assert fake["severity"] == "critical" and fake["lead_agency"] == "MIC"
        assert fake["affected_agencies"] == ["MOLISA", "VSS"]
        assert fake["description"] == FAKE_NEWS["annotations"]["description"]
        assert fake["links"] == [FAKE_NEWS["generatorURL"]]
        assert fake["state"] == "detected"
        assert fuel["severity"] == "medium" and fuel["category"] == "negative_sentiment"
        assert fuel["lead_agency"] == "MOIT"

        # crisisflow keeps Alertmanager's own fingerprint.
        am_alerts = amc.get("/api/v2/alerts").json()
        am_fp = {a["labels"]["alertname"]: a["fingerprint"] for a in am_alerts}
        [first] = alerts_of(fake["id"])[-1:]
        assert first["fingerprint"] == am_fp["TinGiaLanTruyen"]
        assert first["format"] == "alertmanager" and first["status"] == "firing"
        assert first["source"] == "alertmanager/crisisflow"

        # 2. Alertmanager re-sends a still-firing alert (repeat_interval): deduplicated onto
        #    the same incident, alert_count grows, no new incident.
        def repeated() -> dict[str, Any] | None:
            current = by_title()
            inc = current[fake["title"]]
            return inc if len(current) == 2 and inc["alert_count"] >= 2 else None

        fake_now = eventually(repeated, 15, "Alertmanager to repeat the firing notification")
        assert fake_now["id"] == fake["id"] and fake_now["version"] == fake["version"]
        repeats = alerts_of(fake["id"])
        assert {a["fingerprint"] for a in repeats} == {am_fp["TinGiaLanTruyen"]}
        assert sum(not a["deduplicated"] for a in repeats) == 1

        # 3. Resolved in Alertmanager (endsAt in the past): the alerts are marked resolved,
        #    the incident stays open.
        post_to_alertmanager({**FAKE_NEWS, "startsAt": rfc3339(now),
                              "endsAt": rfc3339(datetime.now(UTC) - timedelta(seconds=1))})

        def all_resolved() -> list[dict[str, Any]] | None:
            found = alerts_of(fake["id"])
            return found if all(a["status"] == "resolved" for a in found) else None

        resolved = eventually(all_resolved, 15, "the resolved notification")
        assert all(a["resolved_at"] for a in resolved)
        fake_after = cf.get(f"{API}/incidents/{fake['id']}").json()
        assert fake_after["state"] == "detected"
        timeline = cf.get(f"{API}/incidents/{fake['id']}/timeline").json()["items"]
        kinds = [e["kind"] for e in timeline]
        assert "alert_resolved" in kinds
        assert {a["status"] for a in alerts_of(fuel["id"])} == {"firing"}

        # 4. The same alert fires again (flapping): still the same open incident.
        count_before = fake_after["alert_count"]
        post_to_alertmanager({**FAKE_NEWS, "startsAt": rfc3339(datetime.now(UTC))})

        def refired() -> dict[str, Any] | None:
            current = by_title()
            inc = current[fake["title"]]
            return inc if inc["alert_count"] > count_before else None

        refired_inc = eventually(refired, 15, "the re-fired notification")
        assert refired_inc["id"] == fake["id"]
        latest = alerts_of(fake["id"])[0]
        assert latest["status"] == "firing" and latest["deduplicated"] is True
        assert len(incidents()) == 2

    elapsed = time.monotonic() - started
    print(f"\nAlertmanager round trip took {elapsed:.1f} s")
    assert elapsed < 40
