"""JSON documents of custom.metrics.k8s.io/v1beta2 (k8s.io/metrics/pkg/apis/custom_metrics/v1beta2): the
group's discovery (APIGroup; APIResourceList as custom-metrics-apiserver lists it) and MetricValueList
(MetricValue with describedObject ObjectReference, metric MetricIdentifier{name, selector?}, timestamp,
windowSeconds?, value)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..model import PodValue
from ..quantity import format_quantity
from ..rules import Rule
from . import meta
from .meta import rfc3339

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
GROUP_VERSION = f"{GROUP}/{VERSION}"
KIND_LIST = "MetricValueList"
BASE = f"/apis/{GROUP_VERSION}"  # the resources' path prefix
# object resources (as the HPA's client spells them) -> (kind, apiVersion) of describedObject
OBJECTS = {"deployments.apps": ("Deployment", "apps/v1")}


def api_group() -> dict[str, Any]:
    return meta.api_group(GROUP, VERSION)


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
