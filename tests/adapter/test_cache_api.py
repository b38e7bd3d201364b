"""The cache (coalescing, TTL, failures not cached) and the HTTP surface: discovery documents, OpenAPI,
health, /metrics, request bounds (in-flight limit, per-request deadline), Status bodies for unknown paths
and methods."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from toposcale.adapter.cache import TTLCache
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter

BASE = "/apis/external.metrics.k8s.io/v1beta1"


async def test_concurrent_askers_share_one_load_and_failures_are_not_cached() -> None:
    now = [0.0]
    cache: TTLCache[int] = TTLCache(2.0, clock=lambda: now[0])
    calls = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    tasks = [asyncio.create_task(cache.get("k", load)) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1 and {v for v, _ in results} == {1}
    assert sorted(how for _, how in results).count("coalesced") == 99
    assert await cache.get("k", load) == (1, "hit")
    now[0] = 2.5  # expired
    assert await cache.get("k", load) == (2, "miss")

    async def boom() -> int:
        raise RuntimeError("source down")

    now[0] = 10
    with pytest.raises(RuntimeError):
        await cache.get("e", boom)
    assert await cache.get("e", load) == (3, "miss")


async def test_an_asker_giving_up_does_not_cancel_the_load() -> None:
    cache: TTLCache[str] = TTLCache(10.0)
    release = asyncio.Event()
    loads = 0

    async def slow() -> str:
        nonlocal loads
        loads += 1
        await release.wait()
        return "value"

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # the first request's deadline passes
            await cache.get("k", slow)
    waiter = asyncio.create_task(cache.get("k", slow))
    await asyncio.sleep(0)
    release.set()
    assert await waiter == ("value", "coalesced")  # the same load went on and answered the next asker
    assert await cache.get("k", slow) == ("value", "hit")
    assert loads == 1


@pytest.fixture
async def one_pod(rules, serve_adapter):
    async with VllmExporter(waiting=3, kv_cache=0.5) as e:
        source = ScrapeSource(StaticTargets([Target(e.url, "ml", "p0", {"namespace": "ml", "pod": "p0",
                                                                          "app": "vllm"})]), rules, ttl=0.0)
        adapter = await serve_adapter(rules, source, cache_ttl=5.0, max_inflight=2, request_timeout=0.5)
        yield adapter, e


async def test_a_hundred_hpas_cost_one_scrape(one_pod) -> None:
    adapter, exporter = one_pod
    results = await asyncio.gather(*(adapter.metric("vllm_requests_waiting", selector="app=vllm")
                                     for _ in range(100)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException) and r[0] == 200]
    assert ok and all(body["items"][0]["value"] == "3" for _, body in ok)
    assert exporter.scrapes == 1
    _, text = await adapter.get("/metrics")
    assert 'toposcale_adapter_cache_requests_total{result="miss"} 1.0' in text
    assert "toposcale_adapter_request_duration_seconds_bucket" in text
    assert 'toposcale_adapter_requests_total{code="200",route=' in text


async def test_inflight_limit_and_deadline(one_pod) -> None:
    adapter, exporter = one_pod
    exporter.mode = "hang"
    first = [asyncio.create_task(adapter.metric("vllm_requests_waiting", selector=f"app=vllm,!n{i}"))
             for i in range(2)]
    await asyncio.sleep(0.1)
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm,!n9")
    assert (code, body["reason"], body["code"]) == (429, "TooManyRequests", 429)
    for code, body in await asyncio.gather(*first):
        assert (code, body["reason"]) == (503, "ServiceUnavailable")
        assert "within 0.5s" in body["message"]
    exporter.mode = "ok"


async def test_discovery_documents(one_pod) -> None:
    adapter, _ = one_pod
    _, body = await adapter.get("/apis")
    assert body == {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
        "name": "external.metrics.k8s.io",
        "versions": [{"groupVersion": "external.metrics.k8s.io/v1beta1", "version": "v1beta1"}],
        "preferredVersion": {"groupVersion": "external.metrics.k8s.io/v1beta1", "version": "v1beta1"}}, {
        "name": "custom.metrics.k8s.io",
        "versions": [{"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"}],
        "preferredVersion": {"groupVersion": "custom.metrics.k8s.io/v1beta2", "version": "v1beta2"}}]}
    code, body = await adapter.get("/apis/external.metrics.k8s.io")
    assert body["kind"] == "APIGroup" and body["name"] == "external.metrics.k8s.io"
    code, body = await adapter.get(BASE)
    assert code == 200
    assert body["kind"] == "APIResourceList" and body["apiVersion"] == "v1"
    assert {"name": "vllm_requests_waiting", "singularName": "", "namespaced": True,
            "kind": "ExternalMetricValueList", "verbs": ["get"]} in body["resources"]


async def test_openapi_health_and_unknown_paths(one_pod) -> None:
    adapter, _ = one_pod
    code, doc = await adapter.get("/openapi/v2")
    assert code == 200 and doc["swagger"] == "2.0"
    assert f"{BASE}/namespaces/{{namespace}}/vllm_kv_cache_usage" in doc["paths"]
    code, doc = await adapter.get("/openapi/v3")
    assert "apis/external.metrics.k8s.io/v1beta1" in doc["paths"]
    code, doc = await adapter.get("/openapi/v3/apis/external.metrics.k8s.io/v1beta1")
    assert doc["openapi"].startswith("3.") and "components" in doc
    for path in ("/healthz", "/livez", "/readyz"):
        assert (await adapter.get(path)) == (200, "ok")
    code, body = await adapter.get("/nope")
    assert (code, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    async with aiohttp.ClientSession() as s, s.post(adapter.url + BASE + "/namespaces/ml/x") as r:
        body = await r.json()
        assert (r.status, body["reason"]) == (405, "MethodNotAllowed")
