"""Application assembly: `build_app(...)` returns the aiohttp Application; `serve(...)` runs it.

Extra middlewares (authentication, authorization) run before the adapter's own error handling sees the
request;
`serve` takes an optional ssl.SSLContext. Both are the seams the security layer plugs into.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from toposcale.core.status import status_middleware

from .api import (
    METRICS_KEY,
    RULES_KEY,
    SOURCE_KEY,
    VALUES_KEY,
    ExternalMetricsAPI,
    add_routes,
    record_request,
)
from .custom import CustomMetricsAPI
from .metrics import AdapterMetrics
from .rules import RuleSet
from .sources.base import Source
from .values import MetricValues

logger = logging.getLogger("toposcale.adapter")
api_logger = logging.getLogger("toposcale.adapter.api")
MAX_REQUEST_BODY = 64 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # --max-request-header-bytes' default


def build_app(
    rules: RuleSet,
    source: Source,
    *,
    cache_ttl: float = 2.0,
    request_timeout: float = 10.0,
    max_inflight: int = 1024,
    middlewares: Sequence[Any] = (),
    metrics: AdapterMetrics | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> web.Application:
    """`max_header_bytes` is --max-request-header-bytes: the listener answers 431 above it
    (toposcale.core.listener), so aiohttp's own per-line and per-field caps must not be lower, or a long
    header the flag allows (a front-proxy's X-Remote-Group list, a large bearer token) would get aiohttp's
    plain-text 400 instead."""
    metrics = metrics or AdapterMetrics()
    if getattr(source, "on_error", False) is None:
        source.on_error = metrics.source_error  # type: ignore[attr-defined]
    if getattr(source, "on_coverage", False) is None:
        source.on_coverage = metrics.served.record_coverage  # type: ignore[attr-defined]
    app = web.Application(
        # metav1.Status for every failure (outermost, so authentication's and authorization's errors too),
        # request metrics, a log line for errors
        middlewares=[status_middleware(api_logger, on_answer=record_request(metrics)), *middlewares],
        client_max_size=MAX_REQUEST_BODY,
        # a header line is at least 4 bytes ("a:\r\n"): the count can never be what stops a request the byte
        # limit allows (aiohttp's default of 128 headers would)
        handler_args={"max_line_size": max_header_bytes, "max_field_size": max_header_bytes,
                      "max_headers": max(128, max_header_bytes // 4)},
    )
    values = MetricValues(
        rules,
        source,
        metrics,
        cache_ttl=cache_ttl,
        request_timeout=request_timeout,
        max_inflight=max_inflight,
    )
    app[RULES_KEY] = rules
    app[SOURCE_KEY] = source
    app[METRICS_KEY] = metrics
    app[VALUES_KEY] = values
    add_routes(app, ExternalMetricsAPI(values), CustomMetricsAPI(values))

    async def _close(app: web.Application) -> None:
        await source.close()

    app.on_cleanup.append(_close)
    return app


async def serve(
    app: web.Application,
    *,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    stop: asyncio.Event | None = None,
    limits: Any = None,
    on_cut: Any = None,
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set), then shut down cleanly. `limits`
    (toposcale.core.listener.Limits) bounds each connection: handshake and header deadlines, header size,
    count.
    `on_stop` runs first at shutdown, while the source is still open (the KEDA gRPC server stops there)."""
    # aiohttp's keep-alive timer closes a connection idle between requests (the listener's idle_timeout)
    from toposcale.core.listener import REQUEST_LOGGER

    keepalive = {"keepalive_timeout": limits.idle_timeout} if limits is not None else {}
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5, logger=REQUEST_LOGGER, **keepalive)
    await runner.setup()
    site: web.BaseSite
    if limits is not None:
        from toposcale.core.listener import SecureSite

        site = SecureSite(runner, host or None, port, ssl_context=ssl_context, limits=limits, on_cut=on_cut)
    else:
        site = web.TCPSite(runner, host=host or None, port=port, ssl_context=ssl_context)
    await site.start()
    # the port the sockets got: with --port 0 the kernel picks it, and the log is the only place to read it
    sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
    bound = sorted({s.getsockname()[1] for s in sockets}) or [port]
    logger.info(
        "adapter listening",
        extra={"address": host or "all interfaces", "port": bound[0], "tls": ssl_context is not None},
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        await stop.wait()
    finally:
        logger.info("adapter stopping")
        try:
            for hook in on_stop:
                await hook()
        finally:
            await runner.cleanup()
