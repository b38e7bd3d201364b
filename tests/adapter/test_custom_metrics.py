"""custom.metrics.k8s.io/v1beta2 (issue 16): discovery, the per-pod list, one pod, a Deployment, errors.

Each field is checked against k8s.io/metrics/pkg/apis/custom_metrics/v1beta2 (MetricValueList, MetricValue:
describedObject, metric{name}, timestamp, windowSeconds omitted for gauges, value). A pod whose scrape fails
is absent from the list (never 0); every pod failing is a 503 Status. Scrape mode over real HTTP exporters,
and Prometheus mode against the real Prometheus."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from toposcale.adapter.rules import Rule, RulesError, RuleSet, load_rules, parse_rules
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.prometheus import PrometheusSource
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter
from lab.peers.prometheus import PrometheusServer, ScrapeJob

BASE = "/apis/custom.metrics.k8s.io/v1beta2"
RULES = load_rules()
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def target(e: VllmExporter, pod: str, app: str = "vllm") -> Target:
    return Target(e.url, "ml", pod, {"app": app})


class WithDeployments(StaticTargets):
    """A targets file does not know Deployments; this finder names one (selector app=vllm)."""

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        return "app=vllm" if (namespace, name) == ("ml", "vllm") else None


def pods_of(body: dict) -> dict[str, str]:
    assert body["kind"] == "MetricValueList" and body["apiVersion"] == "custom.metrics.k8s.io/v1beta2", body
    assert body["metadata"] == {}
    return {i["describedObject"]["name"]: i["value"] for i in body["items"]}


def check_status(code: int, body: dict, want: int, reason: str) -> str:
    assert code == want, body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure", body
    assert body["code"] == want and body["reason"] == reason, body
    return body["message"]


def test_which_rules_are_offered_per_pod() -> None:
    assert [r.name for r in RULES.rules if r.offered_per_pod] == [
        "vllm_requests_waiting",
        "vllm_requests_running",
        "vllm_kv_cache_usage",
    ]
    off = Rule(name="w", series=["a"], aggregation="sum", per_pod_metric=False)
    assert not off.offered_per_pod
    with pytest.raises(RulesError, match=r"per_pod_metric.*needs a workload rule"):
        parse_rules(
            "rules: [{name: q, series: [h], aggregation: histogram_quantile, quantile: 0.9, "
            "window_seconds: 60, per_pod_metric: true}]"
        )


async def test_discovery_lists_pods_and_deployments_per_metric(serve_adapter) -> None:
    adapter = await serve_adapter(RULES, ScrapeSource(StaticTargets([]), RULES))
    code, body = await adapter.get(BASE)
    assert code == 200
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == "custom.metrics.k8s.io/v1beta2"
    assert body["resources"][0] == {
        "name": "pods/vllm_requests_waiting",
        "singularName": "",
        "namespaced": True,
        "kind": "MetricValueList",
        "verbs": ["get"],
    }
    names = [r["name"] for r in body["resources"]]
    assert "deployments.apps/vllm_kv_cache_usage" in names and len(names) == 6
    assert not any("gpu" in n or "p90" in n for n in names)
    code, groups = await adapter.get("/apis")
    assert [g["name"] for g in groups["groups"]] == ["external.metrics.k8s.io", "custom.metrics.k8s.io"]
    code, group = await adapter.get("/apis/custom.metrics.k8s.io")
    assert group["preferredVersion"] == {
        "groupVersion": "custom.metrics.k8s.io/v1beta2",
        "version": "v1beta2",
    }


async def test_one_item_per_pod_and_a_failing_pod_is_absent(serve_adapter) -> None:
    a = VllmExporter(waiting=3, running=1, kv_cache=0.25)
    b = VllmExporter(waiting=5, running=3, kv_cache=0.5)
    c = VllmExporter(waiting=7)
    async with a, b, c:
        finder = WithDeployments([target(a, "vllm-a"), target(b, "vllm-b"), target(c, "other", app="x")])
        adapter = await serve_adapter(RULES, ScrapeSource(finder, RULES, ttl=0.0, timeout=0.5), cache_ttl=0.0)
        before = time.time()
        code, body = await adapter.get(
            BASE + "/namespaces/ml/pods/*/vllm_requests_waiting", labelSelector="app=vllm"
        )
        assert code == 200, body
        assert pods_of(body) == {"vllm-a": "3", "vllm-b": "5"}
        item = body["items"][0]
        assert set(item) == {"describedObject", "metric", "timestamp", "value"}  # no windowSeconds: a gauge
        assert item["describedObject"] == {
            "kind": "Pod",
            "namespace": "ml",
            "name": "vllm-a",
            "apiVersion": "v1",
        }
        assert item["metric"] == {"name": "vllm_requests_waiting"}
        assert _RFC3339.fullmatch(item["timestamp"])
        ts = time.mktime(time.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert before - 1 <= ts <= time.time() + 1
        code, body = await adapter.get(
            BASE + "/namespaces/ml/pods/*/vllm_kv_cache_usage", labelSelector="app=vllm"
        )
        assert pods_of(body) == {"vllm-a": "250m", "vllm-b": "500m"}
        # one pod by name: a list of exactly one item (what the HPA's client requires)
        code, body = await adapter.get(BASE + "/namespaces/ml/pods/vllm-b/vllm_requests_running")
        assert (code, pods_of(body)) == (200, {"vllm-b": "3"})
        # a Deployment: the rule's aggregation over its pods (a sum here)
        code, body = await adapter.get(BASE + "/namespaces/ml/deployments.apps/vllm/vllm_requests_waiting")
        assert code == 200, body
        assert body["items"][0]["describedObject"] == {
            "kind": "Deployment",
            "namespace": "ml",
            "name": "vllm",
            "apiVersion": "apps/v1",
        }
        assert body["items"][0]["value"] == "8"
        code, body = await adapter.get(BASE + "/namespaces/ml/deployments.apps/vllm/vllm_kv_cache_usage")
        assert body["items"][0]["value"] == "375m"  # an average rule averages

        b.mode = "error"  # b's scrape fails: absent, not 0
        code, body = await adapter.get(
            BASE + "/namespaces/ml/pods/*/vllm_requests_waiting", labelSelector="app=vllm"
        )
        assert (code, pods_of(body)) == (200, {"vllm-a": "3"})
        code, body = await adapter.get(BASE + "/namespaces/ml/pods/vllm-b/vllm_requests_waiting")
        msg = check_status(code, body, 503, "ServiceUnavailable")
        assert "all 1 selected pods failed" in msg and "ml/vllm-b" in msg and "HTTP 500" in msg
        # the Deployment's sum: a's 3 extrapolated over the two pods, as the external API serves it
        code, body = await adapter.get(BASE + "/namespaces/ml/deployments.apps/vllm/vllm_requests_waiting")
        assert body["items"][0]["value"] == "6"
        a.mode = "error"
        code, body = await adapter.get(
            BASE + "/namespaces/ml/pods/*/vllm_requests_waiting", labelSelector="app=vllm"
        )
        msg = check_status(code, body, 503, "ServiceUnavailable")
        assert "all 2 selected pods failed" in msg and "ml/vllm-a" in msg and "ml/vllm-b" in msg


async def test_errors_are_status_bodies(serve_adapter) -> None:
    a = VllmExporter(waiting=3)
    async with a:
        finder = WithDeployments([target(a, "vllm-a")])
        adapter = await serve_adapter(RULES, ScrapeSource(finder, RULES, ttl=0.0), cache_ttl=0.0)

        async def get(path: str, **q: str) -> tuple[int, dict]:
            return await adapter.get(BASE + path, **q)

        msg = check_status(*await get("/namespaces/ml/pods/nope/vllm_requests_waiting"), 404, "NotFound")
        assert msg == "the server could not find the metric vllm_requests_waiting for pods nope"
        msg = check_status(*await get("/namespaces/ml/pods/*/gpu_utilization"), 404, "NotFound")
        assert "offered per pod: vllm_kv_cache_usage, vllm_requests_running, vllm_requests_waiting" in msg
        msg = check_status(
            *await get("/namespaces/ml/pods/*/vllm_requests_waiting", labelSelector="app in ("),
            400,
            "BadRequest",
        )
        assert msg.startswith("invalid labelSelector")
        msg = check_status(
            *await get("/namespaces/ml/pods/*/vllm_requests_waiting", metricLabelSelector="engine=0"),
            400,
            "BadRequest",
        )
        assert "metricLabelSelector" in msg
        msg = check_status(
            *await get("/namespaces/ml/statefulsets.apps/x/vllm_requests_waiting"), 404, "NotFound"
        )
        assert 'resource "statefulsets.apps"' in msg
        msg = check_status(
            *await get("/namespaces/ml/deployments.apps/gone/vllm_requests_waiting"), 404, "NotFound"
        )
        assert msg == 'deployments.apps "gone" not found'
        check_status(*await get("/namespaces/ML/pods/*/vllm_requests_waiting"), 400, "BadRequest")
        check_status(*await get("/namespaces/ml/pods/Bad_Name/vllm_requests_waiting"), 400, "BadRequest")
        # nothing selected is an empty list (the HPA reports it), not a made-up item
        code, body = await get("/namespaces/ml/pods/*/vllm_requests_waiting", labelSelector="app=none")
        assert (code, pods_of(body)) == (200, {})
        check_status(*await get("/namespaces/nons/pods/*/vllm_requests_waiting"), 404, "NotFound")
        plain = ScrapeSource(StaticTargets([target(a, "vllm-a")]), RULES)
        other = await serve_adapter(RULES, plain)
        code, body = await other.get(BASE + "/namespaces/ml/deployments.apps/vllm/vllm_requests_waiting")
        assert "Deployments need pods from Kubernetes" in check_status(code, body, 404, "NotFound")


async def test_prometheus_per_pod_query(serve_adapter) -> None:
    a = VllmExporter(waiting=3, kv_cache=0.25)
    b = VllmExporter(waiting=5, kv_cache=0.5)
    async with a, b:
        prom = PrometheusServer(
            [
                ScrapeJob("a", [a.address], {"namespace": "ml", "pod": "vllm-a", "app": "vllm"}),
                ScrapeJob("b", [b.address], {"namespace": "ml", "pod": "vllm-b", "app": "vllm"}),
            ],
            scrape_interval="500ms",
        )
        try:
            await asyncio.to_thread(prom.start)
            await asyncio.to_thread(prom.wait_scraped, ["a", "b"])
            rules = RuleSet(rules=RULES.rules)
            adapter = await serve_adapter(rules, PrometheusSource(prom.url, timeout=2), cache_ttl=0.0)
            path = BASE + "/namespaces/ml/pods/*/vllm_requests_waiting"
            code, body = await adapter.get(path, labelSelector="app=vllm")
            assert (code, pods_of(body)) == (200, {"vllm-a": "3", "vllm-b": "5"})
            assert body["items"][0]["describedObject"]["kind"] == "Pod"
            code, body = await adapter.get(BASE + "/namespaces/ml/pods/vllm-b/vllm_kv_cache_usage")
            assert (code, pods_of(body)) == (200, {"vllm-b": "500m"})
            b.mode = "error"
            for _ in range(100):
                if await asyncio.to_thread(prom.query, 'up{job="b"} == 0'):
                    break
                await asyncio.sleep(0.1)
            code, body = await adapter.get(path, labelSelector="app=vllm")
            assert (code, pods_of(body)) == (200, {"vllm-a": "3"})  # b absent, not 0
            a.mode = "error"
            for _ in range(100):
                if await asyncio.to_thread(prom.query, 'up{job="a"} == 0'):
                    break
                await asyncio.sleep(0.1)
            code, body = await adapter.get(path, labelSelector="app=vllm")
            assert "cannot scrape any of the 2 selected pods" in check_status(
                code, body, 503, "ServiceUnavailable"
            )
        finally:
            await asyncio.to_thread(prom.stop)
