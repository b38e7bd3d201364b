"""JSON documents of external.metrics.k8s.io/v1beta1 and metav1 (field names from k8s.io/metrics and
k8s.io/apimachinery types.go): discovery, ExternalMetricValueList, Status."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .model import MetricValue
from .quantity import format_quantity
from .rules import Rule

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
KIND_LIST = "ExternalMetricValueList"


def rfc3339(ts: float) -> str:
    # metav1.Time marshals to RFC3339 with second precision, UTC.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


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


def api_group_list() -> dict[str, Any]:
    """Both groups this server serves: external.metrics.k8s.io and custom.metrics.k8s.io (adapter.custom)."""
    from . import custom

    groups = []
    for group in (api_group(), custom.api_group()):
        del group["kind"], group["apiVersion"]
        groups.append(group)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions() -> dict[str, Any]:
    # /api: the legacy core group; this server serves none of it (kubectl still asks).
    return {"kind": "APIVersions", "versions": [], "serverAddressByClientCIDRs": None}


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
