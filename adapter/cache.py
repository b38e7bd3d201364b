"""A short TTL cache with request coalescing: concurrent askers of one key share one load.

The load runs as its own task, so an asker that gives up (its request deadline passed, its client went away)
neither cancels the load for the others nor loses the value for the next asker. Failures reach everyone
waiting but are never cached: the next request retries the source.
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
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}
        self._purged_at = clock()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> tuple[T, str]:
        """Return (value, how) where how is "hit", "coalesced" or "miss"."""
        entry = self._values.get(key)
        if entry is not None and self._clock() - entry[0] < self.ttl:
            return entry[1], "hit"
        task = self._inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), "coalesced"
        task = asyncio.ensure_future(self._load(key, load))
        self._inflight[key] = task
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task), "miss"

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await load()
            if self.ttl > 0:
                now = self._clock()
                # Expired values are dropped at least once per TTL, not only at max_entries: a value may be
                # large (a target's scrape), and one no longer asked for must not stay (issue 28: 1.4 GB).
                if len(self._values) >= self.max_entries or now - self._purged_at >= self.ttl:
                    self._evict()
                    self._purged_at = now
                self._values[key] = (now, value)
            return value
        finally:
            self._inflight.pop(key, None)

    def _evict(self) -> None:
        now = self._clock()
        for k in [k for k, (t, _) in self._values.items() if now - t >= self.ttl]:
            del self._values[k]
        while len(self._values) >= self.max_entries:
            self._values.pop(next(iter(self._values)))

    def clear(self) -> None:
        self._values.clear()


def _retrieve(task: asyncio.Task[object]) -> None:
    # Everyone may have stopped waiting; mark the exception seen so asyncio does not log it as lost.
    if not task.cancelled():
        task.exception()
