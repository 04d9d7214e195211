"""A short-lived cache of authenticated keys: the hot ingest path should not read the key
table on every request. Revocation reaches every process within `ttl` seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from app.auth.service import Principal, hash_key


class KeyCache:
    def __init__(self, ttl: float = 2.0, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._items: dict[str, tuple[float, Principal]] = {}
        self._loading: dict[str, asyncio.Future[Principal | None]] = {}

    def _put(self, digest: str, principal: Principal) -> None:
        if len(self._items) >= self.max_size:
            self._items.clear()
        self._items[digest] = (time.monotonic() + self.ttl, principal)

    async def get_or_load(self, key: str,
                          load: Callable[[str], Awaitable[Principal | None]]
                          ) -> Principal | None:
        """The cached principal, or `load(key)`; concurrent misses for one key share one load,
        so an expiry under a storm costs one lookup, not one per waiting request."""
        digest = hash_key(key)
        hit = self._items.get(digest)
        if hit is not None and hit[0] >= time.monotonic():
            return hit[1]
        pending = self._loading.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            principal = await load(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited failure is not logged
            raise
        finally:
            del self._loading[digest]
        if principal is not None:
            self._put(digest, principal)
        future.set_result(principal)
        return principal

    def clear(self) -> None:
        self._items.clear()
