"""The HPA controller's read of one External metric, over HTTP (what k8s.io/metrics' external_metrics client
and the controller's rest_metrics_client.go do): `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/
{metric}?labelSelector=...`, each item's value as a milli-value. A non-200 answer, an unreadable body or an
empty list is an error, never a number: the rule then keeps the replicas."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from .hpa import MetricError, milli_value

PREFIX = "unable to fetch metrics from external metrics API"


async def read_external_metric(
    http: aiohttp.ClientSession,
    base_url: str,
    namespace: str,
    name: str,
    selector: str,
    timeout_s: float = 5.0,
) -> list[int] | MetricError:
    url = (
        f"{base_url.rstrip('/')}/apis/external.metrics.k8s.io/v1beta1/namespaces/{quote(namespace)}/"
        f"{quote(name)}?labelSelector={quote(selector)}"
    )
    try:
        async with http.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s), headers={"Accept": "application/json"}
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                msg = body.get("message") if isinstance(body, dict) else None
                return MetricError(f"{PREFIX}: {msg or f'HTTP {resp.status}'}")
        if not isinstance(body, dict) or body.get("kind") != "ExternalMetricValueList":
            return MetricError(f"{PREFIX}: not an ExternalMetricValueList")
        items = body.get("items") or []
        if not items:  # rest_metrics_client.go: "no metrics returned from external metrics API"
            return MetricError("no metrics returned from external metrics API")
        return [milli_value(i["value"]) for i in items]
    except MetricError as exc:
        return MetricError(f"{PREFIX}: {exc}")
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        return MetricError(f"{PREFIX}: {type(exc).__name__}: {exc}")
