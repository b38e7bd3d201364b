"""The OpenAPI documents the aggregator merges (kube-apiserver reads /openapi/v2 and /openapi/v3 of every
APIService): external.metrics.k8s.io's paths, one per rule, and its ExternalMetricValueList schema; the custom
group's paths are not described."""

from __future__ import annotations

from typing import Any

import orjson

from . import custom, external


def v3_index() -> dict[str, Any]:
    """/openapi/v3: where each group-version's document is."""
    return {
        "paths": {
            f"apis/{gv}": {"serverRelativeURL": "/openapi/v3/apis/" + gv}
            for gv in (external.GROUP_VERSION, custom.GROUP_VERSION)
        }
    }


def custom_v3() -> dict[str, Any]:
    """custom.metrics.k8s.io's document: no paths described."""
    info = {"title": "toposcale adapter", "version": custom.VERSION}
    return {"openapi": "3.0.0", "info": info, "paths": {}, "components": {"schemas": {}}}


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
                {"group": external.GROUP, "kind": external.KIND_LIST, "version": external.VERSION}
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
        f"{external.BASE}/namespaces/{{namespace}}/{m}": {
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
                    "group": external.GROUP,
                    "kind": external.KIND_LIST,
                    "version": external.VERSION,
                },
            }
        }
        for m in metrics
    }
    return {
        "swagger": "2.0",
        "info": {"title": "toposcale adapter", "version": external.VERSION},
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
