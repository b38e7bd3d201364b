"""JSON documents of external.metrics.k8s.io/v1beta1 (field names from k8s.io/metrics): the group's
discovery (APIGroup, APIResourceList) and ExternalMetricValueList."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..model import MetricValue
from ..quantity import format_quantity
from ..rules import Rule
from . import meta
from .meta import rfc3339

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
KIND_LIST = "ExternalMetricValueList"
BASE = f"/apis/{GROUP_VERSION}"  # the resources' path prefix


def api_group() -> dict[str, Any]:
    return meta.api_group(GROUP, VERSION)


def api_resource_list(rules: Iterable[Rule]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": r.name,
                "singularName": "",
                "namespaced": True,
                "kind": KIND_LIST,
                "verbs": ["get"],
            }
            for r in rules
        ],
    }


def metric_value_list(metric: str, values: Iterable[MetricValue]) -> dict[str, Any]:
    items = []
    for v in values:
        item: dict[str, Any] = {
            "metricName": metric,
            "metricLabels": dict(v.labels),
            "timestamp": rfc3339(v.timestamp),
        }
        if v.window_seconds is not None:
            item["window"] = int(v.window_seconds)
        item["value"] = format_quantity(v.value)
        items.append(item)
    return {"kind": KIND_LIST, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}
