"""Hostile clients on loopback for the availability tests: many connections held idle or fed a byte at a
time, and a probe that must keep being answered meanwhile, as the kubelet's and the aggregator's are.

    async with held_connections("127.0.0.1", port, 200, ssl=ctx) as conns:   # handshake done, nothing sent
        ...
    probes = await probe_during(attack(), lambda: get_status("/healthz"))
    assert probes.failed == 0 and probes.slowest_s < 1.0, probes

Counts and durations are small (a few hundred connections, a few seconds): what matters is that a client
arriving while the attack runs is answered, not the attack's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Probes:
    """What the probes saw while an attack ran: how many, how many failed (error, non-200 or slower than the
    bound) and the slowest answer (seconds, the event loop's blocking included)."""

    sent: int = 0
    failed: int = 0
    slowest_s: float = 0.0
    errors: list[str] = field(default_factory=list)


async def probe_during(
    attack: Coroutine[Any, Any, Any],
    probe: Callable[[], Awaitable[int]],
    *,
    bound_s: float = 1.0,
    every_s: float = 0.05,
) -> Probes:
    """Run `attack` to its end, calling `probe` (returns an HTTP status) one after another meanwhile.
    Each probe is timed by the wall clock from when it was due, so a blocked event loop (the server's, in
    this process) counts, whether it blocked during a probe or between two."""
    seen = Probes()
    task = asyncio.ensure_future(attack)
    try:
        due = time.monotonic()  # when the next probe is due: an event loop blocked past it counts as waiting
        while True:
            start = due
            try:
                status = await asyncio.wait_for(probe(), bound_s * 5)
                error = None if status == 200 else f"status {status}"
            except Exception as exc:  # a refused, reset or timed-out probe is what the attack must not cause
                error = f"{type(exc).__name__}: {exc}"
            took = time.monotonic() - start
            seen.sent += 1
            seen.slowest_s = max(seen.slowest_s, took)
            if error is None and took > bound_s:
                error = f"answered after {took:.2f}s"
            if error is not None:
                seen.failed += 1
                if len(seen.errors) < 5:
                    seen.errors.append(error)
            if task.done():
                break
            due = time.monotonic() + every_s
            await asyncio.sleep(every_s)
        await task  # the attack's own failure is the test's
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return seen


@contextlib.asynccontextmanager
async def held_connections(
    host: str,
    port: int,
    count: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    send: bytes = b"",
    batch: int = 20,
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """`count` connections (TLS handshake done when `ssl`), each having sent `send` (nothing: idle), opened
    `batch` at a time; closed on exit. A connection the server refuses or closes is kept as it is: that is
    the server's answer to the attack."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, count, batch):
            n = min(count, start + batch) - start
            opened = await asyncio.gather(
                *(asyncio.open_connection(host, port, ssl=ssl) for _ in range(n)), return_exceptions=True
            )
            for item in opened:
                if isinstance(item, BaseException):
                    continue  # refused or cut during the handshake: the server's answer, not the attacker's
                conns.append(item)
                if send:
                    item[1].write(send)
            await asyncio.sleep(0)  # let the probes in between batches
        yield conns
    finally:
        for _, writer in conns:
            writer.close()
        for _, writer in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
        conns.clear()  # the caller's name for the list holds no connection (nor its buffers) any more


async def closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    """True when the server closes the connection within `within_s` (whatever it sent first)."""
    try:
        async with asyncio.timeout(within_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, _ssl.SSLError):
        pass
    return True
