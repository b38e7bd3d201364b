"""HTTP routes: discovery, the metric GET, health, OpenAPI and /metrics.

Every error is a metav1.Status with the apiserver's code and reason. Each metric request is bounded in time
(`request_timeout`) and in concurrency (`max_inflight`, then 429); values are cached for `cache_ttl`
seconds with
request coalescing, so a hundred HPAs asking the same thing cost one source query.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import wire
from .cache import TTLCache
from .errors import AdapterError, BadRequest, NotFound, SourceUnavailable, TooManyRequests
from .metrics import AdapterMetrics
from .model import MetricValue, PodValue
from .quantity import QuantityError, check_hpa_range, served_value
from .rules import Rule, RuleSet
from .selectors import SelectorError, parse_selector
from .sources.base import Source

logger = logging.getLogger("toposcale.adapter.api")
# fullmatch everywhere: `re.match` with "^...$" takes "ml\n" (`$` matches before a trailing newline).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
BASE = f"/apis/{wire.GROUP_VERSION}"

RULES_KEY = web.AppKey("rules", RuleSet)
SOURCE_KEY = web.AppKey("source", object)
METRICS_KEY = web.AppKey("metrics", AdapterMetrics)
HANDLERS_KEY = web.AppKey("handlers", object)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def status_response(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    return json_response(wire.status(code, reason, message, details), status=code)


class Handlers:
    def __init__(
        self,
        rules: RuleSet,
        source: Source,
        metrics: AdapterMetrics,
        *,
        cache_ttl: float,
        request_timeout: float,
        max_inflight: int,
    ) -> None:
        self.rules = rules.by_name()
        self.rule_set = rules
        self.source = source
        self.metrics = metrics
        self.cache: TTLCache[list[MetricValue]] = TTLCache(cache_ttl)
        self.pod_cache: TTLCache[list[PodValue]] = TTLCache(cache_ttl)
        self.request_timeout = request_timeout
        self.max_inflight = max_inflight
        self.inflight = 0
        self._discovery = orjson.dumps(wire.api_resource_list(rules.rules))
        self._group = orjson.dumps(wire.api_group())
        self._groups = orjson.dumps(wire.api_group_list())
        self._ready_cache: TTLCache[str | None] = TTLCache(2.0)
        self.desired: Any = None  # vllm_desired_replicas rules' engine (adapter/desired.py)
        if any(r.aggregation == "vllm_desired_replicas" for r in rules.rules):
            from .desired import DesiredEngine

            self.desired = DesiredEngine(source, rules.rules)

    @staticmethod
    def _raw(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def apis(self, request: web.Request) -> web.Response:
        return self._raw(self._groups)

    async def api(self, request: web.Request) -> web.Response:
        return json_response(wire.api_versions())

    async def group(self, request: web.Request) -> web.Response:
        return self._raw(self._group)

    async def resources(self, request: web.Request) -> web.Response:
        return self._raw(self._discovery)

    async def metric(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["metric"]
        rule, values = await self.compute(namespace, name, request.query.get("labelSelector"))
        try:
            body = wire.metric_value_list(rule.name, values)
            served = float(sum(served_value(v.value) for v in values)) if values else None
        except QuantityError as exc:
            raise SourceUnavailable(f"{name}: {exc}") from exc
        if served is not None:  # an empty list is no value for the HPA: nothing to record
            self.metrics.served.record(rule.name, namespace, served, max(v.timestamp for v in values))
        return json_response(body)

    async def compute(
        self, namespace: str, name: str, label_selector: str | None
    ) -> tuple[Rule, list[MetricValue]]:
        """The rule and items for metric `name` over the pods `label_selector` picks in `namespace`: what
        every wire serves (this HTTP API and the KEDA gRPC scaler, adapter/keda), through one cache, one
        in-flight bound and one deadline. Raises AdapterError subclasses (400, 404, 429, 503)."""
        if self.inflight >= self.max_inflight:
            raise TooManyRequests(f"more than {self.max_inflight} metric requests in flight; try again")
        if len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace):
            raise BadRequest(f'invalid namespace "{namespace[:80]}": must be a DNS label (RFC 1123)')
        # Rule names are lowercase; the HPA passes metric.name as written, so match case-insensitively.
        rule = self.rules.get(name) or self.rules.get(name.lower())
        if rule is None:
            raise NotFound(
                f'external metric "{name[:100]}" not found '
                f"(this adapter serves: {', '.join(sorted(self.rules))})",
                {"name": name[:253], "group": wire.GROUP, "kind": name[:253]},
            )
        try:
            selector = parse_selector(label_selector)
        except SelectorError as exc:
            raise BadRequest(f"invalid labelSelector: {exc}") from exc
        reqs = tuple(sorted(selector.requirements, key=lambda r: (r.key, r.op, r.values)))
        key = (rule.name, namespace, reqs)
        values = await self._bounded(name, self.cache, key, lambda: self._load(rule, namespace, selector))
        for v in values:  # every wire serves what the HPA computes with: an int64 of milli-units
            try:
                check_hpa_range(v.value)
            except QuantityError as exc:
                raise SourceUnavailable(f"{name}: {exc}") from exc
        return rule, values

    async def _bounded(
        self, name: str, cache: TTLCache[Any], key: Any, load: Callable[[], Awaitable[Any]]
    ) -> Any:
        """`load` through `cache` (coalesced), within the in-flight bound and the request deadline."""
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            async with asyncio.timeout(self.request_timeout):
                values, how = await cache.get(key, load)
        except TimeoutError as exc:
            self.metrics.source_error(self.source.kind, "timeout")
            raise SourceUnavailable(
                f"{name}: no answer from the {self.source.kind} source within {self.request_timeout:g}s"
            ) from exc
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        self.metrics.cache.labels(how).inc()
        return values

    async def compute_pods(
        self, rule: Rule, namespace: str, label_selector: str | None, *, pod: str | None = None
    ) -> list[PodValue]:
        """Each selected pod's own value of `rule` (custom.metrics.k8s.io), or of the one pod `pod`: the same
        source, bounds and deadline as `compute`, its own cache (per-pod lists are another answer). A pod
        that could not be read is absent; all failing is a 503 (the source raises it)."""
        if self.inflight >= self.max_inflight:
            raise TooManyRequests(f"more than {self.max_inflight} metric requests in flight; try again")
        if len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace):
            raise BadRequest(f'invalid namespace "{namespace[:80]}": must be a DNS label (RFC 1123)')
        fetch_pods = getattr(self.source, "fetch_pods", None)
        if fetch_pods is None:
            raise NotFound(f"the {self.source.kind} source serves no per-pod values")
        if pod is not None:
            if len(pod) > 253 or not _POD_NAME.fullmatch(pod):
                raise BadRequest(f'invalid pod name "{pod[:80]}": must be a DNS subdomain (RFC 1123)')
            selector = parse_selector(None)
        else:
            try:
                selector = parse_selector(label_selector)
            except SelectorError as exc:
                raise BadRequest(f"invalid labelSelector: {exc}") from exc
        reqs = tuple(sorted(selector.requirements, key=lambda r: (r.key, r.op, r.values)))
        key = (rule.name, namespace, reqs, pod)
        values: list[PodValue] = await self._bounded(
            rule.name, self.pod_cache, key, lambda: fetch_pods(rule, namespace, selector, pod=pod)
        )
        for v in values:  # the HPA computes with int64 milli-units
            try:
                check_hpa_range(v.value)
            except QuantityError as exc:
                raise SourceUnavailable(f"{rule.name}: {v.namespace}/{v.pod}: {exc}") from exc
        return values

    async def object_selector(self, namespace: str, name: str) -> str | None:
        """The label selector of Deployment `name` (None: not found), from the source's pod finder."""
        if len(namespace) > 63 or not _NAMESPACE.fullmatch(namespace):
            raise BadRequest(f'invalid namespace "{namespace[:80]}": must be a DNS label (RFC 1123)')
        if len(name) > 253 or not _POD_NAME.fullmatch(name):
            raise BadRequest(f'invalid Deployment name "{name[:80]}": must be a DNS subdomain (RFC 1123)')
        resolve = getattr(self.source, "deployment_selector", None)
        if resolve is None:
            raise NotFound(f"the {self.source.kind} source cannot resolve Deployments")
        selector: str | None = await resolve(namespace, name)
        return selector

    async def _load(self, rule: Rule, namespace: str, selector: Any) -> list[MetricValue]:
        if rule.aggregation == "vllm_desired_replicas":
            values: list[MetricValue] = await self.desired.fetch(rule, namespace, selector)
            return values
        return await self.source.fetch(rule, namespace, selector)

    async def debug_desired(self, request: web.Request) -> web.Response:
        from .desired import debug_desired

        return json_response(await debug_desired(self, request.query))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        why, _ = await self._ready_cache.get("ready", self.source.ready)
        if why is not None:
            return web.Response(status=503, text=f"[-]source failed: {why}\nreadyz check failed\n")
        return web.Response(text="ok")

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_v2(self, request: web.Request) -> web.Response:
        return json_response(openapi_v2(list(self.rules)))

    async def openapi_v3(self, request: web.Request) -> web.Response:
        from . import custom

        return json_response(
            {
                "paths": {
                    f"apis/{gv}": {"serverRelativeURL": "/openapi/v3/apis/" + gv}
                    for gv in (wire.GROUP_VERSION, custom.GROUP_VERSION)
                }
            }
        )

    async def openapi_v3_custom(self, request: web.Request) -> web.Response:
        # the aggregator merges each group-version's document; the custom group's paths are not described
        info = {"title": "toposcale adapter", "version": "v1beta2"}
        return json_response({"openapi": "3.0.0", "info": info, "paths": {}, "components": {"schemas": {}}})

    async def openapi_v3_group(self, request: web.Request) -> web.Response:
        return json_response(openapi_v3(list(self.rules)))


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Status bodies for every failure, request metrics, and a log line for errors."""
    metrics = request.app[METRICS_KEY]
    start = time.perf_counter()
    route = _route_name(request)
    try:
        response = await handler(request)
    except AdapterError as exc:
        response = status_response(exc.code, exc.reason, str(exc), exc.details)
        level = logging.WARNING if exc.code >= 500 or exc.code == 429 else logging.INFO
        logger.log(
            level,
            "request failed",
            extra={
                "path": request.path[:200],
                "code": exc.code,
                "reason": exc.reason,
                "error": str(exc)[:500],
            },
        )
    except web.HTTPException as exc:
        if exc.status == 404:
            response = status_response(
                404,
                "NotFound",
                f"the server could not find the requested resource ({request.method} {request.path[:200]})",
            )
        elif exc.status == 405:
            response = status_response(405, "MethodNotAllowed", f"{request.method} is not supported here")
        elif exc.status >= 400:
            response = status_response(
                exc.status, "BadRequest" if exc.status < 500 else "InternalError", exc.reason or "error"
            )
        else:
            raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception("unexpected error", extra={"path": request.path[:200]})
        response = status_response(500, "InternalError", f"internal error: {type(exc).__name__}")
    metrics.requests.labels(route, str(response.status)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - start)
    return response


def add_routes(app: web.Application, handlers: Handlers) -> None:
    r = app.router
    r.add_get("/apis", handlers.apis)
    r.add_get("/apis/", handlers.apis)
    r.add_get("/api", handlers.api)
    r.add_get(f"/apis/{wire.GROUP}", handlers.group)
    r.add_get(BASE, handlers.resources)
    r.add_get(BASE + "/namespaces/{namespace}/{metric}", handlers.metric)
    for path in ("/healthz", "/livez"):
        r.add_get(path, handlers.healthz)
    r.add_get("/readyz", handlers.readyz)
    r.add_get("/metrics", handlers.metrics_page)
    r.add_get("/debug/desired", handlers.debug_desired)
    r.add_get("/openapi/v2", handlers.openapi_v2)
    r.add_get("/openapi/v3", handlers.openapi_v3)
    r.add_get(f"/openapi/v3/apis/{wire.GROUP_VERSION}", handlers.openapi_v3_group)
    from . import custom

    r.add_get(f"/openapi/v3/apis/{custom.GROUP_VERSION}", handlers.openapi_v3_custom)
    custom.add_routes(app, custom.CustomMetrics(handlers))


def _schemas() -> dict[str, Any]:
    return {
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "kind": {"type": "string"},
                "apiVersion": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {
                    "type": "array",
                    "items": {
                        "$ref": "#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1."
                        "ExternalMetricValue"
                    },
                },
            },
            "x-kubernetes-group-version-kind": [
                {"group": wire.GROUP, "kind": wire.KIND_LIST, "version": wire.VERSION}
            ],
        },
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue": {
            "type": "object",
            "required": ["metricName", "metricLabels", "timestamp", "value"],
            "properties": {
                "metricName": {"type": "string"},
                "metricLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "timestamp": {"type": "string", "format": "date-time"},
                "window": {"type": "integer", "format": "int64"},
                "value": {"type": "string"},
            },
        },
    }


def openapi_v2(metrics: list[str]) -> dict[str, Any]:
    ref = "#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList"
    paths = {
        f"{BASE}/namespaces/{{namespace}}/{m}": {
            "get": {
                "operationId": f"readNamespacedExternalMetric_{m}",
                "produces": ["application/json"],
                "parameters": [
                    {"name": "namespace", "in": "path", "required": True, "type": "string"},
                    {"name": "labelSelector", "in": "query", "type": "string"},
                ],
                "responses": {"200": {"description": "OK", "schema": {"$ref": ref}}},
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": {
                    "group": wire.GROUP,
                    "kind": wire.KIND_LIST,
                    "version": wire.VERSION,
                },
            }
        }
        for m in metrics
    }
    return {
        "swagger": "2.0",
        "info": {"title": "toposcale adapter", "version": wire.VERSION},
        "paths": paths,
        "definitions": _schemas(),
    }


def openapi_v3(metrics: list[str]) -> dict[str, Any]:
    doc = openapi_v2(metrics)
    schemas = orjson.loads(
        orjson.dumps(doc["definitions"]).replace(b"#/definitions/", b"#/components/schemas/")
    )
    paths = orjson.loads(orjson.dumps(doc["paths"]).replace(b"#/definitions/", b"#/components/schemas/"))
    for item in paths.values():
        get = item["get"]
        get.pop("produces", None)
        for p in get["parameters"]:
            p["schema"] = {"type": p.pop("type")}
        schema = get["responses"]["200"].pop("schema")
        get["responses"]["200"]["content"] = {"application/json": {"schema": schema}}
    return {"openapi": "3.0.0", "info": doc["info"], "paths": paths, "components": {"schemas": schemas}}
