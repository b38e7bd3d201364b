"""custom.metrics.k8s.io/v1beta2: per-pod values (the HPA's `type: Pods`) and Deployment values
(`type: Object`), served by the same process, from the same rules, sources and caches as
external.metrics.k8s.io (the value service, values.py; the documents are wire/custom.py).

The paths are those k8s.io/metrics/pkg/client/custom_metrics asks: `namespaces/{ns}/pods/*/{metric}`
(?labelSelector), `namespaces/{ns}/pods/{name}/{metric}` and
`namespaces/{ns}/deployments.apps/{name}/{metric}` (GroupResource.String() of the object's
kind); both single-object forms answer a list of exactly one item.

A pod whose metrics could not be read is absent from the list, never 0: the HPA then applies its own
missing-pod rules (0 on scale-up, the target on scale-down). Every selected pod failing, or the source down,
is a 503. A Deployment's value is the external API's value over the Deployment's selector (the rule's
aggregation: a sum for vllm_requests_waiting, extrapolated over pods that failed exactly as there).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import BadRequest, NotFound
from .model import MetricValue
from .rules import Rule
from .selectors import SelectorError, parse_selector
from .values import MetricValues
from .wire.custom import (
    BASE,
    GROUP,
    OBJECTS,
    api_group,
    api_resource_list,
    metric_value,
    metric_value_list,
    pod_items,
)


def metric_not_found(metric: str, resource: str, name: str) -> NotFound:
    """custom-metrics-apiserver's NewMetricNotFoundForError."""
    return NotFound(
        f"the server could not find the metric {metric} for {resource} {name}",
        {"name": name, "group": GROUP, "kind": resource},
    )


class CustomMetricsAPI:
    def __init__(self, values: MetricValues) -> None:
        self.values = values
        self.rules = {r.name: r for r in values.rule_set.rules if r.offered_per_pod}
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
            values = await self.values.compute_pods(rule, namespace, request.query.get("labelSelector"))
        else:
            values = await self.values.compute_pods(rule, namespace, None, pod=name)
            values = [v for v in values if v.pod == name]
            if not values:
                raise metric_not_found(rule.name, "pods", name)
        return _answer(pod_items(rule.name, values))

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
        selector = await self.values.object_selector(namespace, name)
        if selector is None:
            raise NotFound(
                f'{resource} "{name[:253]}" not found',
                {"name": name[:253], "group": "apps", "kind": "deployments"},
            )
        _, values = await self.values.compute(namespace, rule.name, selector)
        if not values:
            raise metric_not_found(rule.name, resource, name)
        v: MetricValue = values[0]
        item = metric_value(
            rule.name, kind, api_version, namespace, name, v.value, v.timestamp, v.window_seconds
        )
        return _answer([item])


def _answer(items: list[dict[str, Any]]) -> web.Response:
    return web.Response(body=orjson.dumps(metric_value_list(items)), content_type="application/json")


def add_routes(app: web.Application, custom: CustomMetricsAPI) -> None:
    r = app.router
    r.add_get(f"/apis/{GROUP}", custom.group)
    r.add_get(BASE, custom.resources)
    r.add_get(BASE + "/namespaces/{namespace}/pods/{name}/{metric}", custom.pods)
    r.add_get(BASE + "/namespaces/{namespace}/{resource}/{name}/{metric}", custom.object)
