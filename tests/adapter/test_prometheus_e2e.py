"""Prometheus mode end to end with real parts: the Debian Prometheus (lab/peers/prometheus.py) scrapes in-
test exporters serving real vLLM and DCGM text; the adapter queries it; then Prometheus is stopped mid-
test."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from toposcale.adapter.rules import GpuOwner, Rule, RuleSet, load_rules
from toposcale.adapter.sources.prometheus import PrometheusSource

from lab.peers.exporters import DcgmExporter, Gpu, VllmExporter
from lab.peers.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob
from lab.procs import Child, http_ok
from toposcale.core.ports import free_port

from .conftest import LOCAL, TOPOSCALE

pytestmark = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK), reason="needs the Debian prometheus package"
)
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def value(body: dict) -> str:
    assert body["kind"] == "ExternalMetricValueList", body
    assert len(body["items"]) == 1, body
    return body["items"][0]["value"]


def milli(q: str) -> float:
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


async def test_prometheus_mode(serve_adapter, tmp_path: Path) -> None:
    a = VllmExporter(generation="v1", engines=2, waiting=[3, 4], running=[2, 2], kv_cache=[0.5, 0.7])
    b = VllmExporter(generation="v0", waiting=1, running=1, kv_cache=0.25)
    slow = VllmExporter(waiting=5)
    dcgm = DcgmExporter([
        Gpu(0, "ml", "vllm-a", util=80, fb_used=60000, fb_free=20000),
        Gpu(1, "ml", "vllm-a", util=60, fb_used=40000, fb_free=40000),
        Gpu(2, "ml", "vllm-b", util=10, fb_used=20000, fb_free=60000),
        Gpu(3, "", "", util=99),
    ])
    exporters = [a, b, slow, dcgm]
    for e in exporters:
        await e.start()
    a.observe_ttft(0.05, n=10)
    prom = PrometheusServer([
        ScrapeJob("vllm-a", [a.address], {"namespace": "ml", "pod": "vllm-a", "app": "vllm"}),
        ScrapeJob("vllm-b", [b.address], {"namespace": "ml", "pod": "vllm-b", "app": "vllm"}),
        ScrapeJob("slow", [slow.address], {"namespace": "ml", "pod": "slow-0", "app": "slow"},
                  scrape_interval="8s"),
        ScrapeJob("dcgm", [dcgm.address], {"namespace": "gpu-operator", "pod": "dcgm-x"}, honor_labels=True),
        # the same exporter without honor_labels: its namespace/pod become exported_namespace/exported_pod
        ScrapeJob("dcgm-plain", [dcgm.address], {"namespace": "gpu-operator", "pod": "dcgm-x"}),
    ])
    proc = None
    try:
        await asyncio.to_thread(prom.start)
        await asyncio.to_thread(prom.wait_scraped, ["vllm-a", "vllm-b", "dcgm"])
        a.observe_ttft(0.3, n=80)
        a.observe_ttft(3.0, n=10)
        scraped = a.scrapes
        for _ in range(100):  # until the new observations are in Prometheus
            if a.scrapes >= scraped + 2:
                break
            await asyncio.sleep(0.1)

        base_rules = load_rules()
        strict = Rule(name="slow_requests_waiting", series=["vllm:num_requests_waiting"], aggregation="sum",
                      max_staleness_seconds=2)
        exported = Rule(name="gpu_utilization_exported", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg",
                        per_pod="none", gpu_owner=GpuOwner(namespace_label="exported_namespace",
                                                           pod_label="exported_pod"))
        # a custom query that leaves one series per pod has no single value to serve
        per_pod = Rule(name="waiting_by_pod", series=["vllm:num_requests_waiting"], aggregation="sum",
                       prometheus_query="sum by (pod) (vllm:num_requests_waiting{{matchers}})")
        summed = per_pod.model_copy(update={
            "name": "waiting_summed", "prometheus_query": "sum(vllm:num_requests_waiting{{matchers}})"})
        rules = RuleSet(rules=[*base_rules.rules, strict, exported, per_pod, summed])
        source = PrometheusSource(prom.url, timeout=2)
        adapter = await serve_adapter(rules, source, cache_ttl=0.05)

        code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
        assert code == 200, body
        assert value(body) == "8"
        code, body = await adapter.metric("vllm_kv_cache_usage", selector="app=vllm")
        assert value(body) == "425m"  # vllm-a: mean(0.5, 0.7); vllm-b: only the old series name, 0.25
        code, body = await adapter.metric("gpu_utilization", selector="app=vllm")
        assert value(body) == "50"  # GPUs held by vllm-a and vllm-b; the idle GPU is excluded
        code, body = await adapter.metric("gpu_utilization_exported", selector="app=vllm")
        assert value(body) == "50"  # the same GPUs, found through exported_namespace/exported_pod
        code, body = await adapter.metric("gpu_memory_used_ratio", selector="pod=vllm-a")
        assert value(body) == "625m"  # 100000 / 160000
        code, body = await adapter.metric("vllm_time_to_first_token_p90", selector="app=vllm")
        assert code == 200, body
        own = await asyncio.to_thread(
            prom.query,
            'histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket'
            '{namespace="ml",app="vllm"}[300s])))',
        )
        # Same as Prometheus computes; rate() extrapolation moves with the evaluation time, hence 1%.
        ours, theirs = milli(value(body)), float(own[0]["value"][1])
        assert abs(ours - theirs) <= 0.01 * theirs, (ours, theirs)
        assert 2.5 < ours <= 5.0  # rank 81 of 90 new observations falls in the (2.5, 5] bucket
        assert body["items"][0]["window"] == 300
        code, body = await adapter.metric("waiting_by_pod", selector="app=vllm")
        assert (code, body["reason"]) == (503, "ServiceUnavailable"), body
        assert "returned 2 series for one value" in body["message"] and "pod='vllm-a'" in body["message"]
        code, body = await adapter.metric("waiting_by_pod", selector="pod=vllm-a")
        assert value(body) == "7"  # one pod, one series: served
        code, body = await adapter.metric("waiting_summed", selector="app=vllm")
        assert value(body) == "8"
        code, body = await adapter.metric("vllm_requests_waiting", selector="app=nothing")
        assert (code, body["items"]) == (200, [])
        code, body = await adapter.metric("vllm_requests_waiting", selector="app in (vllm")
        assert (code, body["reason"]) == (400, "BadRequest")

        # a series older than the rule's max_staleness_seconds is an error, not a value
        while True:
            age = await asyncio.to_thread(
                prom.query, 'time() - timestamp(vllm:num_requests_waiting{job="slow"})'
            )
            if age and float(age[0]["value"][1]) > 2.5:
                break
            await asyncio.sleep(0.2)
        code, body = await adapter.metric("slow_requests_waiting", selector="app=slow")
        assert (code, body["reason"]) == (503, "ServiceUnavailable"), body
        assert "old" in body["message"]

        # the acceptance command, as a user runs it
        port = free_port()
        proc = Child([str(TOPOSCALE), "adapter", "--prometheus-url", prom.url, "--port", str(port),
                      "--bind-address", "127.0.0.1", *LOCAL], tmp_path / "adapter.log").start()
        url = f"http://127.0.0.1:{port}{BASE}/namespaces/ml/vllm_requests_waiting?labelSelector=app%3Dvllm"
        await proc.until(lambda: asyncio.to_thread(http_ok, url), 30, "serving")
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200
            assert value(await r.json()) == "8"

        # Prometheus stopped mid-test: 503 ServiceUnavailable, never a made-up value
        await asyncio.to_thread(prom.stop)
        await asyncio.sleep(0.1)
        for metric in ("vllm_requests_waiting", "gpu_utilization"):
            code, body = await adapter.metric(metric, selector="app=vllm")
            assert code == 503, body
            assert body["kind"] == "Status" and body["reason"] == "ServiceUnavailable" and body["code"] == 503
            assert "Prometheus" in body["message"]
        code, text = await adapter.get("/readyz")
        assert code == 503
        code, text = await adapter.get("/metrics")
        assert 'toposcale_adapter_source_errors_total{kind="ConnectionError",source="prometheus"}' in text
    finally:
        if proc is not None:
            await proc.astop()
        await asyncio.to_thread(prom.stop)
        for e in exporters:
            await e.stop()
