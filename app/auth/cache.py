"""A short-lived cache of authenticated keys: the hot ingest path should not read the key
table on every request. Revocation reaches every process within `ttl` seconds."""

from __future__ import annotations

import time

from app.auth.service import Principal, hash_key


class KeyCache:
    def __init__(self, ttl: float = 2.0, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._items: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        hit = self._items.get(hash_key(key))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, principal: Principal) -> None:
        if len(self._items) >= self.max_size:
            self._items.clear()
        self._items[hash_key(key)] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._items.clear()
