"""The adapter's /metrics shows the values it answered: `toposcale_adapter_served_value{metric, namespace}`
(the number the HPA reads from the answer) and `toposcale_adapter_served_timestamp_seconds`, recorded only
for successful, non-empty answers, with at most N namespaces kept (the least recently served one goes, all
its series with it).

Real parts: the in-process adapter over loopback HTTP, the direct-scrape source reading the harness vLLM
exporters (real vLLM text); /metrics is read with prometheus-client's text parser. No Kubernetes is needed:
the scrape source uses a static target list.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter
from lab.peers.prometheus import free_port
from lab.procs import Child, http_ok

from .conftest import LOCAL, TOPOSCALE

Series = dict[tuple[str, str], float]


def pod(exporter: VllmExporter, namespace: str, name: str) -> Target:
    return Target(exporter.url, namespace, name, {"namespace": namespace, "pod": name, "app": "vllm"})


async def served(adapter: Any) -> tuple[Series, Series, float]:
    """(value by (metric, namespace), timestamp by (metric, namespace), namespaces evicted so far)."""
    code, text = await adapter.get("/metrics")
    assert code == 200
    values: Series = {}
    stamps: Series = {}
    evicted = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.labels.get("metric", ""), s.labels.get("namespace", ""))
            if s.name == "toposcale_adapter_served_value":
                values[key] = s.value
            elif s.name == "toposcale_adapter_served_timestamp_seconds":
                stamps[key] = s.value
            elif s.name == "toposcale_adapter_served_namespaces_evicted_total":
                evicted = s.value
    return values, stamps, evicted


def quantity_number(text: str) -> float:
    """The few canonical forms these tests meet ("8", "123m")."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


async def test_the_value_answered_is_on_metrics_as_the_hpa_reads_it(rules, serve_adapter) -> None:
    async with VllmExporter(waiting=3, kv_cache=0.12345) as a, VllmExporter(waiting=5, kv_cache=0.5) as b:
        source = ScrapeSource(StaticTargets([pod(a, "llm", "qwen-0"), pod(b, "llm", "qwen-1")]), rules, ttl=0)
        adapter = await serve_adapter(rules, source, cache_ttl=0)
        before = time.time()
        code, body = await adapter.metric("vllm_requests_waiting", "llm", "app=vllm")
        assert code == 200 and [i["value"] for i in body["items"]] == ["8"]
        code, kv = await adapter.metric("vllm_kv_cache_usage", "llm", "pod=qwen-0")
        assert code == 200 and len(kv["items"]) == 1
        # 0.12345 in whole milli-units, as the Quantity carries it (tests/adapter/test_quantity.py: which way)
        answered = quantity_number(kv["items"][0]["value"])
        assert answered != 0.12345 and abs(answered - 0.12345) < 0.001
        after = time.time()
        values, stamps, _ = await served(adapter)
        # the gauge holds the number in the answer (what the HPA reads), not the raw 0.12345
        assert values == {("vllm_requests_waiting", "llm"): 8.0, ("vllm_kv_cache_usage", "llm"): answered}
        for key in values:
            assert before - 1 <= stamps[key] <= after + 1


async def test_metric_name_label_is_the_rule_name_whatever_case_was_asked(rules, serve_adapter) -> None:
    async with VllmExporter(waiting=2) as a:
        source = ScrapeSource(StaticTargets([pod(a, "llm", "qwen-0")]), rules, ttl=0)
        adapter = await serve_adapter(rules, source, cache_ttl=0)
        assert (await adapter.metric("VLLM_Requests_Waiting", "llm"))[0] == 200
        values, _, _ = await served(adapter)
        assert values == {("vllm_requests_waiting", "llm"): 2.0}


async def test_failed_and_empty_answers_record_nothing(rules, serve_adapter) -> None:
    async with VllmExporter(waiting=4) as a, VllmExporter(waiting=1) as down:
        source = ScrapeSource(StaticTargets([pod(a, "llm", "qwen-0"), pod(down, "other", "x-0")]), rules,
                              ttl=0)
        adapter = await serve_adapter(rules, source, cache_ttl=0)
        assert (await adapter.metric("vllm_requests_waiting", "llm"))[0] == 200
        _, stamps_before, _ = await served(adapter)

        a.mode = "error"  # the only pod fails: 503, and the last good value stays as it was
        down.mode = "error"
        code, body = await adapter.metric("vllm_requests_waiting", "llm")
        assert code == 503 and body["reason"] == "ServiceUnavailable"
        assert (await adapter.metric("vllm_requests_waiting", "other"))[0] == 503
        # unknown metric, bad selector, unknown namespace, selector matching no pod (200, items: [])
        assert (await adapter.metric("no_such_metric", "llm"))[0] == 404
        assert (await adapter.metric("vllm_requests_running", "llm", "app in (vllm"))[0] == 400
        assert (await adapter.metric("vllm_requests_running", "nowhere"))[0] == 404
        a.mode = "ok"
        code, body = await adapter.metric("vllm_requests_running", "llm", "app=nothing")
        assert code == 200 and body["items"] == []

        values, stamps, _ = await served(adapter)
        assert values == {("vllm_requests_waiting", "llm"): 4.0}
        assert stamps == stamps_before


async def test_only_the_most_recently_served_namespaces_keep_series(rules, serve_adapter) -> None:
    async with VllmExporter(waiting=1, running=2) as e:
        namespaces = ["ns-a", "ns-b", "ns-c", "ns-d"]
        source = ScrapeSource(StaticTargets([pod(e, ns, "p") for ns in namespaces]), rules, ttl=0)
        adapter = await serve_adapter(rules, source, cache_ttl=0, metrics=AdapterMetrics(served_namespaces=2))

        async def ask(ns: str, *metrics: str) -> None:
            for m in metrics:
                assert (await adapter.metric(m, ns))[0] == 200

        await ask("ns-a", "vllm_requests_waiting", "vllm_requests_running")
        await ask("ns-b", "vllm_requests_waiting")
        await ask("ns-a", "vllm_requests_waiting")  # ns-a is now the most recent, ns-b the oldest
        await ask("ns-c", "vllm_requests_running")
        values, stamps, evicted = await served(adapter)
        assert set(values) == set(stamps) == {
            ("vllm_requests_waiting", "ns-a"), ("vllm_requests_running", "ns-a"),
            ("vllm_requests_running", "ns-c"),
        }
        assert evicted == 1
        await ask("ns-d", "vllm_requests_waiting")  # pushes out ns-a, both of its series
        values, _, evicted = await served(adapter)
        assert set(values) == {("vllm_requests_running", "ns-c"), ("vllm_requests_waiting", "ns-d")}
        assert evicted == 2


def test_the_namespace_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AdapterMetrics(served_namespaces=0)
    res = subprocess.run([str(TOPOSCALE), "adapter", *LOCAL, "--scrape-targets", "/dev/null",
                          "--served-value-namespaces", "0", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--served-value-namespaces 0: must be at least 1" in res.stderr


async def test_the_adapter_process_bounds_namespaces_by_its_flag(tmp_path: Path) -> None:
    async with VllmExporter(waiting=3) as e:
        targets = tmp_path / "targets.yaml"
        targets.write_text(yaml.safe_dump([{"url": e.url, "labels": {"namespace": ns, "pod": "p"}}
                                           for ns in ("ns-a", "ns-b")]))
        port = free_port()
        argv = [str(TOPOSCALE), "adapter", *LOCAL, "--scrape-targets", str(targets), "--port", str(port),
                "--served-value-namespaces", "1"]
        base = f"http://127.0.0.1:{port}"
        async with Child(argv, tmp_path / "adapter.log") as proc:
            await proc.until(lambda: asyncio.to_thread(http_ok, base + "/healthz"), 15, "listening")
            async with aiohttp.ClientSession() as http:
                for ns in ("ns-a", "ns-b"):
                    path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/vllm_requests_waiting"
                    async with http.get(base + path) as r:
                        assert r.status == 200, await r.text()
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
    served = [line for line in text.splitlines() if line.startswith("toposcale_adapter_served_value")]
    assert served == ['toposcale_adapter_served_value{metric="vllm_requests_waiting",namespace="ns-b"} 3.0']


@pytest.mark.parametrize(("waiting", "code", "want"), [
    # (a queue below 0, -1e300 included, is a broken target: test_hostile_exporters)
    (1e300, 503, "1e+300"), (9.3e15, 503, "9300000000000000.0"),
    (9.2e15, 200, "9200T"), (1e15, 200, "1P"),
])
async def test_values_beyond_the_hpas_int64_milli_values_are_503(
    rules, serve_adapter, waiting: float, code: int, want: str
) -> None:
    # The HPA reads Quantity.MilliValue(), an int64: a 300-digit Quantity comes out wrapped or 0 there.
    async with VllmExporter(generation="v1", engines=1, waiting=waiting) as e:
        target = Target(e.url, "ml", "p0", {"namespace": "ml", "pod": "p0", "app": "vllm"})
        adapter = await serve_adapter(rules, ScrapeSource(StaticTargets([target]), rules, ttl=0.0))
        got, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
        _, text = await adapter.get("/metrics")
    assert got == code, body
    if code == 503:
        assert (body["kind"], body["reason"]) == ("Status", "ServiceUnavailable")
        assert f"value {want} is beyond what the HPA can read" in body["message"]
        assert "toposcale_adapter_served_value{" not in text  # nothing served, nothing recorded
    else:
        assert body["items"][0]["value"] == want
