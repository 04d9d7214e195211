"""`crisisflow serve` writes alerts in an ingest process beside its API process: clients see
the same answers, the worker still hears of new incidents at once, and a crashed ingest
process is replaced without losing or inventing anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.alerts.remote import PROCESS_NAME
from tests.factories import eventually, free_port, portal
from tests.helpers.receivers import HttpReceiver

CRISISFLOW = str(Path(sys.executable).with_name("crisisflow"))


def _env(db_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "CRISISFLOW_DATABASE_URL": db_url, "CRISISFLOW_LOG_JSON": "false",
            "CRISISFLOW_INGEST_RATE_LIMIT": "0", "CRISISFLOW_INGEST_PROCESS": "true", **extra}


def _key(db_url: str, role: str) -> dict[str, str]:
    done = subprocess.run([CRISISFLOW, "keys", "create", "--name", role, "--role", role,
                           "--json"], env=_env(db_url), capture_output=True, text=True,
                          check=True, timeout=60)
    key = json.loads(done.stdout.strip().splitlines()[-1])["key"]
    return {"Authorization": f"Bearer {key}"}


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
            except (OSError, IndexError, ValueError):
                continue
    return found


def _ingest_pid(serve: subprocess.Popen[bytes]) -> int | None:
    return next((p for p, name in _children(serve.pid).items()
                 if name == PROCESS_NAME[:15]), None)  # Linux keeps 15 characters


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    # A slow poll: only the ingest process's "events committed" signal can deliver promptly.
    with _serve(_env(db_url, CRISISFLOW_WORKER_POLL_SECONDS="10"), tmp_path) as served:
        yield served


@contextlib.contextmanager
def _serve(env: dict[str, str], tmp_path: Path
           ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    serve = subprocess.Popen([CRISISFLOW, "serve", "--port", str(port)], env=env,
                             stdout=(tmp_path / "serve.log").open("ab"),
                             stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        eventually(ready, 60, "crisisflow serve")
        yield serve, base
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            raise


@pytest.mark.parametrize("setting", [None, "false"])
def test_the_ingest_process_is_the_default_on_postgresql_only(
        db_url: str, tmp_path: Path, setting: str | None) -> None:
    env = _env(db_url)
    if setting is None:
        del env["CRISISFLOW_INGEST_PROCESS"]
    else:
        env["CRISISFLOW_INGEST_PROCESS"] = setting
    monitor = _key(db_url, "monitor")
    with _serve(env, tmp_path) as (serve, base):
        posted = httpx.post(base + "/api/v1/alerts", headers=monitor, timeout=30,
                            json=_alert("fp-default", "gia-dien"))
        assert posted.status_code == 202, posted.text
        expected = setting is None and db_url.startswith("postgresql")
        assert (_ingest_pid(serve) is not None) is expected


def _alert(fingerprint: str, topic: str) -> dict[str, Any]:
    return {"source": "social-listening", "title": f"Tin giả về {topic}", "severity": "high",
            "fingerprint": fingerprint, "labels": {"topic": topic, "agency": "MOH"}}


def test_serve_writes_alerts_in_its_ingest_process(
        served: tuple[subprocess.Popen[bytes], str], db_url: str, tmp_path: Path) -> None:
    serve, base = served
    monitor, admin = _key(db_url, "monitor"), _key(db_url, "admin")
    ingest = eventually(lambda: _ingest_pid(serve), 30, "the ingest process")
    with HttpReceiver() as receiver, httpx.Client(base_url=base, timeout=30) as http:
        sub = http.post("/api/v1/subscriptions", headers=admin, json={
            "agency": "MOH", "notifier": "webhook", "target": receiver.url,
            "events": ["incident.detected"], "scope": "all"})
        assert sub.status_code == 201, sub.text
        first = http.post("/api/v1/alerts", headers=monitor, json=_alert("fp-1", "hoc-phi"))
        assert first.status_code == 202, first.text
        opened = first.json()["results"][0]
        assert opened["deduplicated"] is False
        # The worker (10 s poll) hears of the new incident from the ingest process at once.
        started = time.monotonic()
        delivered = receiver.wait_for(1, timeout=5)
        assert time.monotonic() - started < 5
        assert delivered[0].json()["data"]["incident"]["id"] == opened["incident_id"]

        again = http.post("/api/v1/alerts", headers=monitor,
                          json=[_alert("fp-1", "hoc-phi"), _alert("fp-2", "hoc-phi")])
        assert again.status_code == 202
        assert [(r["incident_id"], r["deduplicated"]) for r in again.json()["results"]] == \
            [(opened["incident_id"], True), (opened["incident_id"], False)]
        bad = http.post("/api/v1/alerts", headers=monitor, json=[_alert("fp-3", "x"), {}])
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["loc"][0] == 1

        # The ingest process dies: it is started again, and in the meantime a request is
        # answered 503 problem+json or waits for it; nothing is stored twice or lost.
        os.kill(ingest, signal.SIGKILL)
        statuses = set()

        def accepted_again() -> bool:
            r = http.post("/api/v1/alerts", headers=monitor, json=_alert("fp-1", "hoc-phi"))
            statuses.add(r.status_code)
            if r.status_code == 503:
                assert r.headers["content-type"].startswith("application/problem+json")
                return False
            assert r.status_code == 202, r.text
            assert r.json()["results"][0]["incident_id"] == opened["incident_id"]
            return True

        eventually(accepted_again, 60, "alerts accepted after the restart")
        restarted = eventually(lambda: _ingest_pid(serve), 30, "the new ingest process")
        assert restarted != ingest
        assert statuses <= {202, 503}

        incident = http.get(f"/api/v1/incidents/{opened['incident_id']}", headers=admin).json()
        assert incident["alert_count"] == 4  # fp-1 three times, fp-2 once
        metrics = http.get("/metrics").text
        assert 'crisisflow_alerts_total{format="generic",outcome="deduplicated"}' in metrics
        counted = [line for line in metrics.splitlines()
                   if line.startswith("crisisflow_ingest_group_requests_count")]
        assert counted and float(counted[0].split()[-1]) >= 3

    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=60) == 0
    eventually(lambda: not Path(f"/proc/{restarted}").exists(), 30, "the ingest process to stop")


def test_an_unreachable_database_is_503_through_the_ingest_process(tmp_path: Path) -> None:
    from app.alerts.parsers import parse_generic
    from app.alerts.remote import IngestServer, RemoteWriter
    from app.core.config import Settings
    from app.core.errors import Unavailable

    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    path = str(tmp_path / "ingest.sock")
    woken: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(IngestServer(settings, path).run(stop))
        client = RemoteWriter(path, lambda: woken.append(True), lambda: woken.append(True),
                              settings.group_by, settings.raw_alert_max_bytes)
        with pytest.raises(Unavailable, match="database"):
            await client.submit(parse_generic(_alert("fp-1", "t")), "monitor", "k-1")
        stop.set()
        await asyncio.wait_for(server, 30)
        await client.stop()

    asyncio.run(main())
    assert not woken and not Path(path).exists()


def test_not_ready_until_the_ingest_process_accepts_alerts(db_url: str, tmp_path: Path) -> None:
    """A load balancer must not send alerts to an API process whose ingest process is not up
    yet (or not up again): /readyz is 503 until it accepts connections."""
    from fastapi.testclient import TestClient

    from app.alerts.remote import IngestServer
    from app.core.config import Settings
    from app.main import create_app

    path = str(tmp_path / "ingest.sock")
    settings = Settings(database_url=db_url, log_json=False, ingest_socket=path)
    with TestClient(create_app(settings)) as http:
        waiting = http.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["detail"] == "Alert ingestion is starting."

        stop = asyncio.Event()
        server = IngestServer(settings, path)

        async def start() -> None:
            asyncio.get_running_loop().create_task(server.run(stop))

        portal(http).call(start)
        eventually(lambda: http.get("/readyz").status_code == 200, 20, "readiness")
        portal(http).call(stop.set)


def test_ctrl_c_stops_serve_and_its_ingest_process_quietly(db_url: str, tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole process group. The ingest process waits for
    `serve` to stop it (after the API process, whose requests in flight still need it):
    leaving first, it was taken for a crash, logged as an error and started again."""
    port = free_port()
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([CRISISFLOW, "serve", "--port", str(port)], env=_env(db_url),
                             stdout=log.open("ab"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        ingest = eventually(lambda: _ingest_pid(serve), 60, "the ingest process")
        eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                   .status_code == 200, 60, "serve ready")
        posted = httpx.post(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=30,
                            headers=_key(db_url, "monitor"), json=_alert("fp-c", "gia-xang"))
        assert posted.status_code == 202, posted.text
        os.killpg(serve.pid, signal.SIGINT)
        assert serve.wait(timeout=60) == 0
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{ingest}").exists(), 30, "the ingest process to stop")
    text = log.read_text()
    levels = {line.split()[2] for line in text.splitlines() if line[:4].isdigit()}
    assert not levels & {"WARNING", "ERROR", "CRITICAL"} and "Traceback" not in text, text


@pytest.mark.parametrize("through", ["in-process writer", "ingest process"])
def test_a_long_payload_is_stored_cut_once_and_grouped_the_same_either_way(
        db_url: str, tmp_path: Path, through: str) -> None:
    """The API process prepares what it hands over (group key, stored payload text): the
    ingest process must store it as the in-process writer does, not cut it a second time."""
    import sqlalchemy as sa

    from app.alerts.parsers import parse_generic
    from app.alerts.remote import IngestServer, RemoteWriter
    from app.alerts.writer import IngestWriter
    from app.bootstrap import build_env, open_database
    from app.core.config import Settings

    settings = Settings(database_url=db_url, raw_alert_max_bytes=300)
    long_alert = {**_alert("fp-long", "gia-xang"), "description": "Bài đăng " * 100}
    path = str(tmp_path / "ingest.sock")

    async def main() -> list[Any]:
        stop = asyncio.Event()
        db = open_database(settings)
        server = None
        writer: IngestWriter | RemoteWriter
        if through == "ingest process":
            server = asyncio.create_task(IngestServer(settings, path).run(stop))
            writer = RemoteWriter(path, lambda: None, lambda: None, settings.group_by,
                                  settings.raw_alert_max_bytes)
        else:
            writer = IngestWriter(db, build_env(settings), settings.group_by,
                                  settings.raw_alert_max_bytes)
            writer.start()
        first, _ = await writer.submit(parse_generic(long_alert), "monitor", "k-1")
        # Another fingerprint with the same topic joins the incident by its group key.
        second, _ = await writer.submit(parse_generic(_alert("fp-other", "gia-xang")),
                                        "monitor", "k-1")
        assert second[0].incident_id == first[0].incident_id
        assert not second[0].deduplicated
        await writer.stop()
        if server is not None:
            stop.set()
            await asyncio.wait_for(server, 30)
        async with db.read() as session:
            rows = (await session.execute(sa.text(
                "SELECT fingerprint, raw, group_key FROM alert ORDER BY fingerprint"))).all()
        await db.dispose()
        return list(rows)

    (long_fp, raw, group), (other_fp, other_raw, other_group) = asyncio.run(main())
    assert (long_fp, other_fp) == ("fp-long", "fp-other")
    assert group == other_group == "topic=gia-xang"
    assert raw.endswith("…[truncated]") and raw.count("…[truncated]") == 1
    kept = raw.removesuffix("…[truncated]")
    assert 300 - 4 < len(kept.encode()) <= 300  # cut at a character boundary
    assert json.dumps(long_alert, ensure_ascii=False, separators=(",", ":")).startswith(kept)
    assert json.loads(other_raw) == _alert("fp-other", "gia-xang")
