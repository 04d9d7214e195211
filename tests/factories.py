"""Small helpers shared by the API tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from anyio.from_thread import BlockingPortal
from fastapi.testclient import TestClient

T = TypeVar("T")
PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers["content-type"]
    body: dict[str, Any] = resp.json()
    assert body["type"] == type_, body
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert "Traceback" not in resp.text
    return body


def open_incident(client: Any, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"title": "Tin giả về chính sách bảo hiểm xã hội", **fields}
    resp = client.post("/api/v1/incidents", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


def fire(client: Any, headers: dict[str, str], incident_id: str, trigger: str,
         expect: int | None = 200, **payload: Any) -> httpx.Response:
    resp: httpx.Response = client.post(f"/api/v1/incidents/{incident_id}/transitions",
                                       json={"trigger": trigger, **payload}, headers=headers)
    if expect is not None:
        assert resp.status_code == expect, resp.text
    return resp


# Values typed Any: mypy checks a `**` splat into `fire` against `expect: int | None` too, which
# the inferred `str` values would fail.
ASSESS: dict[str, Any] = {"severity": "medium", "category": "fake_news",
                          "summary": "Đánh giá ban đầu"}
RESPONSE: dict[str, Any] = {"channel": "press_release",
                            "statement": "Thông tin chính thức: tin trên là sai.",
                            "spokesperson": "Người phát ngôn Bộ Y tế"}
PROPOSAL: dict[str, Any] = {"lead_agency": "MOH", "members": ["MIC", "MPS"],
                            "mandate": "Xử lý tin giả",
                            "rationale": "Lan truyền nhanh trên mạng xã hội"}


def portal(client: TestClient) -> BlockingPortal:
    """The portal onto the app's event loop; it exists only inside `with TestClient(...)`."""
    assert client.portal is not None, "the TestClient is not running"
    return client.portal


def db_call(client: TestClient, fn: Callable[[Any], Any]) -> Any:
    """Run `fn(session)` in a read session of the app's own database, on the app's loop."""
    async def run() -> Any:
        async with client.app.state.db.read() as session:  # type: ignore[attr-defined]
            return await fn(session)

    return portal(client).call(run)


def eventually(probe: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
