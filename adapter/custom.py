"""custom.metrics.k8s.io/v1beta2: per-pod values (the HPA's `type: Pods`) and Deployment values
(`type: Object`), served by the same process, from the same rules, sources and caches as
external.metrics.k8s.io.

Wire types are k8s.io/metrics/pkg/apis/custom_metrics/v1beta2 (MetricValueList; MetricValue with
describedObject ObjectReference, metric MetricIdentifier{name, selector?}, timestamp, windowSeconds?, value),
and the paths are those k8s.io/metrics/pkg/client/custom_metrics asks: `namespaces/{ns}/pods/*/{metric}`
(?labelSelector), `namespaces/{ns}/pods/{name}/{metric}` and
`namespaces/{ns}/deployments.apps/{name}/{metric}` (GroupResource.String() of the object's
kind); both single-object forms answer a list of exactly one item.

A pod whose metrics could not be read is absent from the list, never 0: the HPA then applies its own
missing-pod rules (0 on scale-up, the target on scale-down). Every selected pod failing, or the source down,
is a 503. A Deployment's value is the external API's value over the Deployment's selector (the rule's
aggregation: a sum for vllm_requests_waiting, extrapolated over pods that failed exactly as there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .errors import BadRequest, NotFound
from .model import MetricValue, PodValue
from .quantity import format_quantity
from .rules import Rule
from .selectors import SelectorError, parse_selector
from .wire import rfc3339

if TYPE_CHECKING:
    from .api import Handlers

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
GROUP_VERSION = f"{GROUP}/{VERSION}"
KIND_LIST = "MetricValueList"
BASE = f"/apis/{GROUP_VERSION}"
# object resources (as the HPA's client spells them) -> (kind, apiVersion) of describedObject
OBJECTS = {"deployments.apps": ("Deployment", "apps/v1")}


def group_version_for_discovery() -> dict[str, str]:
    return {"groupVersion": GROUP_VERSION, "version": VERSION}


def api_group() -> dict[str, Any]:
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [group_version_for_discovery()],
        "preferredVersion": group_version_for_discovery(),
    }


def api_resource_list(rules: Iterable[Rule]) -> dict[str, Any]:
    """As custom-metrics-apiserver lists them: `<resource>/<metric>` per resource a metric is offered for."""
    resources = []
    for r in rules:
        for resource in ("pods", *OBJECTS):
            resources.append(
                {
                    "name": f"{resource}/{r.name}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": KIND_LIST,
                    "verbs": ["get"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": resources,
    }


def metric_value(
    metric: str,
    kind: str,
    api_version: str,
    namespace: str,
    name: str,
    value: float,
    timestamp: float,
    window_seconds: int | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "describedObject": {"kind": kind, "namespace": namespace, "name": name, "apiVersion": api_version},
        "metric": {"name": metric},
        "timestamp": rfc3339(timestamp),
    }
    if window_seconds is not None:
        item["windowSeconds"] = int(window_seconds)
    item["value"] = format_quantity(value)
    return item


def metric_value_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": KIND_LIST, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}


def pod_items(metric: str, values: Iterable[PodValue]) -> list[dict[str, Any]]:
    return [
        metric_value(metric, "Pod", "v1", v.namespace, v.pod, v.value, v.timestamp, v.window_seconds)
        for v in values
    ]


def metric_not_found(metric: str, resource: str, name: str) -> NotFound:
    """custom-metrics-apiserver's NewMetricNotFoundForError."""
    return NotFound(
        f"the server could not find the metric {metric} for {resource} {name}",
        {"name": name, "group": GROUP, "kind": resource},
    )


class CustomMetrics:
    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers
        # getattr: route listings (tests/deploy) pass a stand-in whose every attribute is a handler
        rules: Iterable[Rule] = getattr(handlers.rule_set, "rules", ())
        self.rules = {r.name: r for r in rules if r.offered_per_pod}
        self._discovery = orjson.dumps(api_resource_list(self.rules.values()))
        self._group = orjson.dumps(api_group())

    def _rule(self, name: str) -> Rule:
        rule = self.rules.get(name) or self.rules.get(name.lower())
        if rule is None:
            raise NotFound(
                f'custom metric "{name[:100]}" not found (offered per pod: {", ".join(sorted(self.rules))})',
                {"name": name[:253], "group": GROUP, "kind": name[:253]},
            )
        return rule

    @staticmethod
    def _no_metric_labels(request: web.Request) -> None:
        text = request.query.get("metricLabelSelector")
        try:
            chosen = parse_selector(text)
        except SelectorError as exc:
            raise BadRequest(f"invalid metricLabelSelector: {exc}") from exc
        if not chosen.empty():
            raise BadRequest("metricLabelSelector: toposcale's per-pod metrics carry no labels to select on")

    async def group(self, request: web.Request) -> web.Response:
        return web.Response(body=self._group, content_type="application/json")

    async def resources(self, request: web.Request) -> web.Response:
        return web.Response(body=self._discovery, content_type="application/json")

    async def pods(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        rule = self._rule(request.match_info["metric"])
        self._no_metric_labels(request)
        if name == "*":
            values = await self.h.compute_pods(rule, namespace, request.query.get("labelSelector"))
        else:
            values = await self.h.compute_pods(rule, namespace, None, pod=name)
            values = [v for v in values if v.pod == name]
            if not values:
                raise metric_not_found(rule.name, "pods", name)
        return _answer(rule.name, pod_items(rule.name, values))

    async def object(self, request: web.Request) -> web.Response:
        namespace, resource = request.match_info["namespace"], request.match_info["resource"]
        name = request.match_info["name"]
        if resource not in OBJECTS:
            raise NotFound(
                f'resource "{resource[:100]}" has no custom metrics here (served: pods, {", ".join(OBJECTS)})'
            )
        rule = self._rule(request.match_info["metric"])
        self._no_metric_labels(request)
        kind, api_version = OBJECTS[resource]
        selector = await self.h.object_selector(namespace, name)
        if selector is None:
            raise NotFound(
                f'{resource} "{name[:253]}" not found',
                {"name": name[:253], "group": "apps", "kind": "deployments"},
            )
        _, values = await self.h.compute(namespace, rule.name, selector)
        if not values:
            raise metric_not_found(rule.name, resource, name)
        v: MetricValue = values[0]
        item = metric_value(
            rule.name, kind, api_version, namespace, name, v.value, v.timestamp, v.window_seconds
        )
        return _answer(rule.name, [item])


def _answer(metric: str, items: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=orjson.dumps(metric_value_list(items)), content_type="application/json")


def add_routes(app: web.Application, custom: CustomMetrics) -> None:
    r = app.router
    r.add_get(f"/apis/{GROUP}", custom.group)
    r.add_get(BASE, custom.resources)
    r.add_get(BASE + "/namespaces/{namespace}/pods/{name}/{metric}", custom.pods)
    r.add_get(BASE + "/namespaces/{namespace}/{resource}/{name}/{metric}", custom.object)
