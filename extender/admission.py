"""Admission: the bounds every body-carrying call passes before the extender judges it, as a wrapper around
the verb (`Admission(verb, work)` is the aiohttp handler of `work(body) -> Response`).

In order: how many requests are held at once (`max_pending`: being received, waiting or answered; beyond it
429 TooManyRequests with Retry-After, as kube-apiserver's max-in-flight filter answers); the body, bounded
in size (`max_body_bytes`: 413) and in time to receive it (`body_timeout_s`: 408), read before a slot is
taken, so slow or stalled uploads cannot hold the slots the scheduler's calls need; then a decision slot
(`max_inflight`; after `queue_timeout_s` of waiting: 429). A slot is held until the answer has been handed
to the socket: a client that does not read a large (full-Node echo) answer holds it, and its memory, until
then. `work` raising WireError is a 400, anything else a 500 (a bug: logged, the service keeps serving).

Every refusal is a metav1.Status JSON body, counted and logged in one line; so are aiohttp's own error
answers (404, 405, 413, ...: toposcale.core.status's middleware, installed by the server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from toposcale.core.status import status_response

from . import wire
from .metrics import ExtenderMetrics

if TYPE_CHECKING:
    from .server import ServerConfig

logger = logging.getLogger("toposcale.extender")

# Bodies are read before a slot is taken; this many per slot may be held at once (memory: at most
# max_pending x max_body_bytes of bodies), generous enough that a few stalled uploads starve nothing.
PENDING_PER_SLOT = 4
OFFLOAD_BYTES = 1024 * 1024  # --standalone bodies larger than this are answered in a worker thread

Work = Callable[[bytes], web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Why a verb is closed before admission (code, metav1 reason, message), or None when it is open.
Gate = Callable[[], tuple[int, str, str] | None]


class BadRequest(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def refusal(
    metrics: ExtenderMetrics,
    verb: str,
    code: int,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A verb's non-2xx answer: a metav1.Status, counted by verb and code, logged in one line."""
    metrics.requests.labels(verb, str(code)).inc()
    logger.warning("bad request", extra={"verb": verb, "code": code, "reason": reason, "error": message})
    return status_response(code, reason, message, headers=headers)


class Admission:
    """The bounds of one service (its `ServerConfig`), shared by every admitted verb."""

    def __init__(self, config: ServerConfig, metrics: ExtenderMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.slots = asyncio.Semaphore(config.max_inflight)  # decisions computed and answered at once
        self.max_pending = PENDING_PER_SLOT * config.max_inflight
        self.pending = 0  # requests being received, waiting for a slot or answered

    def __call__(self, verb: str, work: Work, *, offload: bool = False, gate: Gate | None = None) -> Handler:
        """The handler that admits a request, then answers it with `work(body)`. `gate`: why the verb is
        closed now (checked first, nothing read); `offload`: bodies over OFFLOAD_BYTES are answered in a
        worker thread (only where `work` touches no state of the event loop's)."""

        async def admitted(request: web.Request) -> web.StreamResponse:
            if gate is not None:
                closed = gate()
                if closed is not None:
                    return refusal(self.metrics, verb, *closed)
            return await self.admit(verb, request, work, offload)

        admitted.__name__ = admitted.__qualname__ = f"admitted_{verb}"
        return admitted

    async def admit(self, verb: str, request: web.Request, work: Work, offload: bool) -> web.StreamResponse:
        if self.pending >= self.max_pending:
            return refusal(
                self.metrics,
                verb,
                429,
                "TooManyRequests",
                f"extender busy: {self.pending} requests being received or answered, retry",
                {"Retry-After": "1"},
            )
        self.pending += 1
        try:
            # The body first (bounded in size and time), outside the slots: a stalled upload holds no slot.
            try:
                body = await self._body(request)
            except BadRequest as exc:
                return refusal(self.metrics, verb, exc.code, exc.reason, exc.message)
            start = time.perf_counter()
            if not await self._slot():
                return refusal(
                    self.metrics,
                    verb,
                    429,
                    "TooManyRequests",
                    f"extender busy: {self.config.max_inflight} requests in flight, retry",
                    {"Retry-After": "1"},
                )
            try:
                return await self._answer(verb, request, work, body, start, offload)
            finally:
                self.slots.release()
        finally:
            self.pending -= 1

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(
                413,
                "RequestEntityTooLarge",
                f"body of {request.content_length} bytes exceeds the limit of {limit}",
            )
        try:
            async with asyncio.timeout(self.config.body_timeout_s):  # no extra task, unlike wait_for
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(
                413, "RequestEntityTooLarge", f"body exceeds the limit of {limit} bytes"
            ) from None
        except TimeoutError:
            raise BadRequest(
                408, "Timeout", f"request body not received within {self.config.body_timeout_s:g}s"
            ) from None
        except ConnectionError:  # the caller closed mid-upload: nobody reads the answer, one log line
            raise BadRequest(400, "BadRequest", "connection closed before the body was received") from None

    async def _slot(self) -> bool:
        """Take a decision slot, waiting at most queue_timeout_s; False when none came free."""
        if self.slots.locked():
            try:
                async with asyncio.timeout(self.config.queue_timeout_s):
                    await self.slots.acquire()
            except TimeoutError:
                return False
        else:
            await self.slots.acquire()  # free: returns at once, without a timer
        return True

    async def _answer(
        self, verb: str, request: web.Request, work: Work, body: bytes, start: float, offload: bool
    ) -> web.StreamResponse:
        try:
            if offload and len(body) > OFFLOAD_BYTES:
                # Full Node objects from any client: decoding and validating their annotations runs in a
                # worker thread, so /healthz and other calls are answered meanwhile.
                resp = await asyncio.to_thread(work, body)
            else:
                resp = work(body)
        except wire.WireError as exc:
            return refusal(self.metrics, verb, 400, "BadRequest", str(exc))
        except Exception as exc:  # a bug, not the caller's fault: say so, keep serving
            logger.exception("internal error", extra={"verb": verb})
            return refusal(self.metrics, verb, 500, "InternalError", f"{type(exc).__name__}: {exc}")
        self.metrics.latency.labels(verb).observe(time.perf_counter() - start)
        self.metrics.requests.labels(verb, "200").inc()
        # Hand the answer to the socket under the slot: a client not reading a large answer holds it.
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError as exc:  # the caller went away (e.g. its httpTimeout passed): not ours
            logger.info("caller left before the answer was sent", extra={"verb": verb, "error": str(exc)})
        return resp
