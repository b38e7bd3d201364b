"""A bounded LRU cache whose entries expire, with one in-flight lookup per key (like singleflight).

Used for TokenReview answers (one TTL) and SubjectAccessReview answers (allow and deny TTLs differ).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ExpiringLRU(Generic[V]):
    def __init__(self, max_entries: int = 8192, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V, ttl: float) -> None:
        if ttl <= 0:
            self._data.pop(key, None)
            return
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]],
                          ttl_for: Callable[[V], float]) -> tuple[V, bool]:
        """The cached value, or `load()`'s (cached for `ttl_for(value)` seconds); errors are never cached.
        Concurrent callers for one key share a single `load()`. Returns (value, came_from_cache)."""
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached, True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        self.misses += 1
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await load()
        except asyncio.CancelledError:
            # the first caller went away: whoever waited on it gets a plain error, not a false cancellation
            fut.set_exception(RuntimeError("the shared lookup was cancelled"))
            fut.exception()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._inflight.pop(key, None)
        self.put(key, value, ttl_for(value))
        fut.set_result(value)
        return value, False
