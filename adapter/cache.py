"""A short TTL cache with request coalescing: concurrent askers of one key share one load.

Failures are shared by the askers already waiting but never cached, so the next request retries the source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class TTLCache(Generic[T]):
    def __init__(self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._values: dict[Hashable, tuple[float, T]] = {}
        self._inflight: dict[Hashable, asyncio.Future[T]] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> tuple[T, str]:
        """Return (value, how) where how is "hit", "coalesced" or "miss"."""
        now = self._clock()
        entry = self._values.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            self.hits += 1
            return entry[1], "hit"
        pending = self._inflight.get(key)
        if pending is not None:
            self.coalesced += 1
            return await asyncio.shield(pending), "coalesced"
        self.misses += 1
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await load()
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody else may be waiting
            raise
        else:
            fut.set_result(value)
            if self.ttl > 0:
                if len(self._values) >= self.max_entries:
                    self._evict(now)
                self._values[key] = (self._clock(), value)
            return value, "miss"
        finally:
            self._inflight.pop(key, None)

    def _evict(self, now: float) -> None:
        for k in [k for k, (t, _) in self._values.items() if now - t >= self.ttl]:
            del self._values[k]
        while len(self._values) >= self.max_entries:
            self._values.pop(next(iter(self._values)))

    def clear(self) -> None:
        self._values.clear()
