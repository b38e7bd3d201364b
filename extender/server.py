"""The extender's HTTP service (aiohttp): filter, prioritize, explain, placeable, freeing, healthz, readyz,
metrics.

Paths are `ROUTES` (wire.py) under `--url-prefix`. A verb that carries a body is an `Admission`
(admission.py: body size and time, requests held, decision slots, metav1.Status refusals) around a method
here that parses the body (wire.py), calls one method of `Answers` (answers.py: node views, outcomes,
metrics) and answers. A bad node never fails the request: it is answered for (neutral score, reason).
Malformed input is a 400; every non-2xx answer, including aiohttp's own 404/405/413, is a metav1.Status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_runner import BaseSite
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from toposcale.core.status import status_middleware, status_response

from . import wire
from .admission import Admission, refusal
from .answers import Answers
from .metrics import ExtenderMetrics
from .pods import DEFAULT_RESOURCE
from .state import ClusterState

logger = logging.getLogger("toposcale.extender")

# A full v1.Node with its images list runs to ~20-40 KiB; 5,000 of them fit well under this.
DEFAULT_MAX_BODY = 256 * 1024 * 1024


@dataclass(slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8888
    url_prefix: str = ""
    resource: str = DEFAULT_RESOURCE
    max_body_bytes: int = DEFAULT_MAX_BODY
    body_timeout_s: float = 5.0
    max_inflight: int = 4
    queue_timeout_s: float = 2.0
    allocation_max_age_s: float = 900.0  # full-Node mode; the watch cache has its own (ClusterState)
    # Connection bounds (the kit's listener, toposcale/core/listener.py): a connection's first request's
    # headers must arrive within header_timeout_s of the accept, a later one's within header_timeout_s of its
    # first byte (else 408, or closed unanswered if nothing came), a keep-alive connection idle between
    # requests is closed after keepalive_timeout_s, and at max_connections the connection quiet longest among
    # those idle or still sending is closed for a new one (a new one is refused only when all are answered).
    header_timeout_s: float = 10.0
    max_connections: int = 1000
    keepalive_timeout_s: float = 10.0


def normalize_prefix(prefix: str) -> str:
    p = prefix.strip().rstrip("/")
    if p and not p.startswith("/"):
        p = "/" + p
    return p


class Extender:
    def __init__(
        self, config: ServerConfig, state: ClusterState | None = None, *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.prefix = normalize_prefix(config.url_prefix)
        self.meters = ExtenderMetrics(state)  # served by `metrics`
        self.registry = self.meters.registry
        self.admission = Admission(config, self.meters)
        self.answers = Answers(
            state, self.meters, resource=config.resource,
            allocation_max_age_s=config.allocation_max_age_s, wall=wall,
        )

    # ------------------------------------------------------------ app

    def routes(self) -> list[tuple[str, str, Any]]:
        admit = self.admission
        # Without the watch cache large bodies are decoded in a worker thread (the cache is the event
        # loop's alone): /healthz and other calls are answered meanwhile.
        standalone = self.state is None
        handlers = {
            "filter": admit("filter", self.filter, offload=standalone),
            "prioritize": admit("prioritize", self.prioritize, offload=standalone),
            "explain": admit("explain", self.explain_post, offload=standalone),
            "explain_get": self.explain_get,
            "placeable": admit("placeable", self.placeable, gate=self._placeable_closed),
            "freeing": admit("freeing", self.freeing, gate=self._freeing_closed),
            "healthz": self.healthz,
            "readyz": self.readyz,
            "metrics": self.metrics,
        }
        return [(method, self.prefix + path, handlers[verb]) for verb, (method, path) in wire.ROUTES.items()]

    async def listen(self) -> tuple[web.AppRunner, BaseSite]:
        """Serve on config.host:port with the connection bounds; the caller cleans up the runner."""
        from toposcale.core.listener import (  # the kit's bounded listener, shared with the adapter
            REQUEST_LOGGER,
            Limits,
            SecureSite,
        )

        cfg = self.config
        runner = web.AppRunner(
            self.app(), access_log=None, keepalive_timeout=cfg.keepalive_timeout_s, logger=REQUEST_LOGGER
        )
        await runner.setup()
        limits = Limits(header_timeout=cfg.header_timeout_s, max_connections=cfg.max_connections,
                        idle_timeout=cfg.keepalive_timeout_s)
        site = SecureSite(
            runner, cfg.host, cfg.port, ssl_context=None, limits=limits,
            on_cut=lambda why: self.meters.cut.labels(why).inc(),
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner, site

    def app(self) -> web.Application:
        # metav1.Status for every error answer, aiohttp's own 404/405/413 included; a handler's bug is a 500
        # naming the exception, and the service keeps serving
        errors = status_middleware(logger, internal_detail=True)
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[errors])
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        return app

    # ------------------------------------------------------------ admitted verbs: body in, answer out

    def filter(self, body: bytes) -> web.Response:
        return _json(self.answers.filter(wire.parse_args(body), body))

    def prioritize(self, body: bytes) -> web.Response:
        answer = self.answers.followup(body)  # the filter's own nodes, nothing changed: its work, unparsed
        if answer is None:
            answer = self.answers.prioritize(wire.parse_args(body))
        return _json(answer)

    def explain_post(self, body: bytes) -> web.Response:
        doc = self.answers.explain(wire.parse_args(body))
        return _json(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    def placeable(self, body: bytes) -> web.Response:
        """How many more pods like the posted template the cluster's GPUs take now (placeable.py)."""
        return _json(orjson.dumps(self.answers.placeable(wire.pod_template(body))))

    def freeing(self, body: bytes) -> web.Response:
        """What freeing each named pod's GPUs gives back on its node (ClusterState.freeing), for the
        adapter's scale-down victim ranking. Body: {"pods": ["namespace/name", ...]}."""
        return _json(orjson.dumps(self.answers.freeing(wire.freeing_pods(body))))

    def _placeable_closed(self) -> tuple[int, str, str] | None:
        state = self.state
        if state is None:
            why = "no cluster connection (--standalone): placeable replicas need the watch cache"
            return 404, "NotFound", why
        if not (state.synced and state.synced_unbound.is_set()):
            return (
                503, "ServiceUnavailable",
                "watch cache not synced yet: nodes, bound and Pending pods must be listed first",
            )
        return None

    def _freeing_closed(self) -> tuple[int, str, str] | None:
        state = self.state
        if state is None:
            return 404, "NotFound", "no cluster connection (--standalone): /freeing needs the watch cache"
        if not state.synced:
            return 503, "ServiceUnavailable", "watch cache not synced yet: nodes and pods must be listed"
        return None

    # ------------------------------------------------------------ other verbs

    async def explain_get(self, request: web.Request) -> web.StreamResponse:
        ref = request.query.get("pod", "")
        ns, _, name = ref.partition("/")
        if not ns or not name:
            return refusal(self.meters, "explain", 400, "BadRequest", "expected ?pod=<namespace>/<name>")
        if self.state is None:
            return refusal(
                self.meters, "explain", 404, "NotFound",
                "no cluster connection (--standalone): POST the ExtenderArgs to /explain instead",
            )
        try:
            pod = await asyncio.wait_for(self.state.read_pod(ns, name), 10)
        except Exception as exc:  # the apiserver failing is not the caller's fault, but say so
            return refusal(
                self.meters, "explain", 503, "ServiceUnavailable", f"could not read pod {ref}: {exc}"
            )
        if pod is None:
            return refusal(self.meters, "explain", 404, "NotFound", f"pod {ref} not found")
        args = wire.ExtenderArgs(pod=pod, nodes=None, node_names=sorted(self.state.names()))
        self.meters.requests.labels("explain", "200").inc()
        return _json(orjson.dumps(self.answers.explain(args), option=orjson.OPT_INDENT_2))

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness: the process answers. Readiness (the watch cache synced) is /readyz."""
        body: dict[str, Any] = {"status": "ok", "mode": "standalone" if self.state is None else "watch"}
        if self.state is not None:
            body["synced"] = self.state.synced
            body["nodes"] = len(self.state.base)
        return _json(orjson.dumps(body))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready once the Node and Pod caches have synced (always in --standalone): until then names-only
        answers would call every node uncached, so the Service must not send the scheduler here."""
        state = self.state
        if state is not None:
            missing = [
                what for what, event in (("nodes", state.synced_nodes), ("pods", state.synced_pods))
                if not event.is_set()
            ]
            if missing:
                return status_response(
                    503, "ServiceUnavailable",
                    f"watch cache not synced yet: {' and '.join(missing)} not listed from the apiserver",
                )
        mode = "standalone" if state is None else "watch"
        return _json(orjson.dumps({"status": "ready", "mode": mode}))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")
