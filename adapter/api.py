"""HTTP routes of external.metrics.k8s.io and the server's own: discovery, the metric GET, health, OpenAPI,
/debug/desired and /metrics; `add_routes` also mounts the custom metrics API (custom.py).

Values come from the value service (values.py: validation, cache, in-flight bound, deadline); documents from
adapter/wire; every error is a metav1.Status with the apiserver's code and reason (the kit's error
middleware, toposcale.core.status, which `server.build_app` installs).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import custom
from .cache import TTLCache
from .errors import SourceUnavailable
from .metrics import AdapterMetrics
from .quantity import QuantityError, served_value
from .rules import RuleSet
from .values import MetricValues
from .wire import custom as custom_wire
from .wire import discovery, external, openapi

RULES_KEY = web.AppKey("rules", RuleSet)
SOURCE_KEY = web.AppKey("source", object)
METRICS_KEY = web.AppKey("metrics", AdapterMetrics)
VALUES_KEY = web.AppKey("values", MetricValues)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class ExternalMetricsAPI:
    """The external.metrics.k8s.io handlers and the server's own routes, over one `MetricValues`."""

    def __init__(self, values: MetricValues) -> None:
        self.values = values
        self.metrics = values.metrics
        self._discovery = orjson.dumps(external.api_resource_list(values.rule_set.rules))
        self._group = orjson.dumps(external.api_group())
        self._groups = orjson.dumps(discovery.api_group_list())
        self._ready_cache: TTLCache[str | None] = TTLCache(2.0)

    @staticmethod
    def _raw(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def apis(self, request: web.Request) -> web.Response:
        return self._raw(self._groups)

    async def api(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_versions())

    async def group(self, request: web.Request) -> web.Response:
        return self._raw(self._group)

    async def resources(self, request: web.Request) -> web.Response:
        return self._raw(self._discovery)

    async def metric(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["metric"]
        rule, values = await self.values.compute(namespace, name, request.query.get("labelSelector"))
        try:
            body = external.metric_value_list(rule.name, values)
            served = float(sum(served_value(v.value) for v in values)) if values else None
        except QuantityError as exc:
            raise SourceUnavailable(f"{name}: {exc}") from exc
        if served is not None:  # an empty list is no value for the HPA: nothing to record
            self.metrics.served.record(rule.name, namespace, served, max(v.timestamp for v in values))
        return json_response(body)

    async def debug_desired(self, request: web.Request) -> web.Response:
        from .desired import debug_desired

        return json_response(await debug_desired(self.values.desired, self.values.compute, request.query))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        why, _ = await self._ready_cache.get("ready", self.values.source.ready)
        if why is not None:
            return web.Response(status=503, text=f"[-]source failed: {why}\nreadyz check failed\n")
        return web.Response(text="ok")

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_v2(self, request: web.Request) -> web.Response:
        return json_response(openapi.openapi_v2(list(self.values.rules)))

    async def openapi_v3(self, request: web.Request) -> web.Response:
        return json_response(openapi.v3_index())

    async def openapi_v3_custom(self, request: web.Request) -> web.Response:
        # the aggregator merges each group-version's document; the custom group's paths are not described
        return json_response(openapi.custom_v3())

    async def openapi_v3_group(self, request: web.Request) -> web.Response:
        return json_response(openapi.openapi_v3(list(self.values.rules)))


def record_request(metrics: AdapterMetrics) -> Any:
    """The error middleware's `on_answer`: request count and latency per route."""

    def on_answer(request: web.Request, response: web.StreamResponse, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.requests.labels(route, str(response.status)).inc()
        metrics.latency.labels(route).observe(seconds)

    return on_answer


def add_routes(app: web.Application, api: ExternalMetricsAPI, custom_api: custom.CustomMetricsAPI) -> None:
    r = app.router
    r.add_get("/apis", api.apis)
    r.add_get("/apis/", api.apis)
    r.add_get("/api", api.api)
    r.add_get(f"/apis/{external.GROUP}", api.group)
    r.add_get(external.BASE, api.resources)
    r.add_get(external.BASE + "/namespaces/{namespace}/{metric}", api.metric)
    for path in ("/healthz", "/livez"):
        r.add_get(path, api.healthz)
    r.add_get("/readyz", api.readyz)
    r.add_get("/metrics", api.metrics_page)
    r.add_get("/debug/desired", api.debug_desired)
    r.add_get("/openapi/v2", api.openapi_v2)
    r.add_get("/openapi/v3", api.openapi_v3)
    r.add_get(f"/openapi/v3/apis/{external.GROUP_VERSION}", api.openapi_v3_group)
    r.add_get(f"/openapi/v3/apis/{custom_wire.GROUP_VERSION}", api.openapi_v3_custom)
    custom.add_routes(app, custom_api)
