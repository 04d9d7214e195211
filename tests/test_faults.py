"""PostgreSQL outage under load, against a private PostgreSQL the test creates (initdb into a
temporary folder, its own port, pg_ctl to stop and start it), never the shared cluster."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.core.config import Settings
from app.core.migrate import upgrade
from tests.conftest import REQUIRE_PG
from tests.factories import free_port, live_server

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


class PrivatePostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cf-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.bin = Path(BIN[-1])

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/crisisflow"

    def create_db(self) -> None:
        dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE crisisflow")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not BIN:
        if REQUIRE_PG or os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing")
        pytest.skip("PostgreSQL server binaries are missing")
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        pg.create_db()
        yield pg
    finally:
        pg.cleanup()


class Load:
    """Posts one new alert at a time until stopped; remembers every 202 and every status."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.accepted: list[str] = []
        self.statuses: dict[int, int] = {}
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._http = httpx.Client(base_url=base, headers=headers, timeout=30)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            body = {"source": "fault-test", "title": f"Cảnh báo {n}",
                    "fingerprint": f"fp-{uuid.uuid4().hex}"}
            try:
                resp = self._http.post("/api/v1/alerts", json=body)
            except httpx.HTTPError:
                self.statuses[-1] = self.statuses.get(-1, 0) + 1
                time.sleep(0.05)
                continue
            self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 202:
                self.accepted.append(resp.json()["results"][0]["alert_id"])
            elif not resp.headers.get("content-type", "").startswith("application/problem+json"):
                self.bad.append(resp.text[:200])
            if resp.status_code >= 500:
                time.sleep(0.05)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._http.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_postgres_outage_is_503_and_recovers_without_losing_accepted_alerts(
        private_pg: PrivatePostgres) -> None:
    from app.main import create_app

    upgrade(private_pg.url)
    settings = Settings(database_url=private_pg.url, log_json=False, access_log=False,
                        ingest_rate_limit=0)
    app = create_app(settings, run_worker=True)
    with live_server(app) as base:
        key = _monitor_key(private_pg.url)
        headers = {"Authorization": f"Bearer {key}"}
        load = Load(base, headers).start()
        with httpx.Client(base_url=base, timeout=10) as http:
            wait_for(lambda: len(load.accepted) >= 50, 30, "alerts before the outage")
            private_pg.stop()
            before = load.statuses.get(503, 0)
            wait_for(lambda: load.statuses.get(503, 0) > before + 5, 30, "503s during outage")
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"].startswith("application/problem+json")
            assert http.get("/healthz").status_code == 200
            private_pg.start()
            wait_for(lambda: http.get("/readyz").status_code == 200, 60, "readiness again")
            after = len(load.accepted)
            wait_for(lambda: len(load.accepted) >= after + 50, 60, "alerts after the outage")
        load.stop()
    assert 500 not in load.statuses, load.statuses
    assert load.bad == []
    stored = _stored_alert_ids(private_pg.url)
    missing = set(load.accepted) - stored
    print(f"\nstatuses {load.statuses}; {len(load.accepted)} accepted, {len(missing)} missing")
    assert not missing


def _monitor_key(url: str) -> str:
    import asyncio

    from app.auth.models import ApiKeyCreate, Role
    from app.auth.service import create_key
    from app.bootstrap import open_database

    async def run() -> str:
        db = open_database(Settings(database_url=url), pool_size=1)
        try:
            async with db.transaction() as session:
                return (await create_key(session, ApiKeyCreate(name="m", role=Role.monitor))).key
        finally:
            await db.dispose()

    return asyncio.run(run())


def _stored_alert_ids(url: str) -> set[str]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM alert").fetchall()}


def test_a_database_restart_between_requests_fails_none_of_them(
        private_pg: PrivatePostgres) -> None:
    """Pooled connections are not pinged at every use, yet none that a restart ended is used:
    the first requests after the restart, reads and ingestion alike, are answered."""
    from app.main import create_app

    upgrade(private_pg.url)
    settings = Settings(database_url=private_pg.url, log_json=False, access_log=False,
                        ingest_rate_limit=0)
    app = create_app(settings, run_worker=False)
    headers = {"Authorization": f"Bearer {_monitor_key(private_pg.url)}"}
    with live_server(app) as base, httpx.Client(base_url=base, headers=headers,
                                                timeout=30) as http:
        def ingest(n: int) -> int:
            body = [{"source": "restart-test", "title": f"Cảnh báo {n}.{i}",
                     "fingerprint": f"fp-{n}-{i}"} for i in range(3)]
            return http.post("/api/v1/alerts", json=body).status_code

        # Several connections in the pool, each used and returned.
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(ingest, range(16))) == {202}
        private_pg.stop()
        private_pg.start()
        assert [ingest(100 + n) for n in range(5)] == [202] * 5
        assert http.get("/readyz").status_code == 200
    assert len(_stored_alert_ids(private_pg.url)) == 3 * 21
