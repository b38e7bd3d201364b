"""An expected target whose metrics cannot be read never pulls a value down (issue 19, item 5).

Before: two pods answering 3 and 5, one failing, served 3 with a 200, and the HPA scaled down exactly when a
pod was too loaded to answer. Now per rule `on_missing: extrapolate` (the default: a sum over the pods that
answered scaled to the expected pods; averages, max, ratios and quantiles as they are) or `error` (503 naming
the failed target), and below `min_answered_share` (rule, else --min-answered-share, default 0.5) of the
expected targets answering a 503 naming the failed ones. Scrape mode over a targets file, the Kubernetes mode
(only Running and Ready pods are expected; a GPU rule expects the exporters on the selected pods' nodes), and
Prometheus mode (the pods' `up` series), with answered/expected in /metrics."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.model import Coverage, check_coverage, extrapolate
from toposcale.adapter.rules import GpuOwner, Rule, RulesError, RuleSet, ScrapeSpec, parse_rules
from toposcale.adapter.sources.pods import KubePods, StaticTargets, Target
from toposcale.adapter.sources.prometheus import PrometheusSource
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import DcgmExporter, Gpu, VllmExporter
from tests.harness.kube_standin import KubeStandIn
from tests.harness.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob
from toposcale import kube

SUM = Rule(name="waiting", series=["vllm:num_requests_waiting"], aggregation="sum")
STRICT = SUM.model_copy(update={"name": "waiting_strict", "on_missing": "error"})
LENIENT = SUM.model_copy(update={"name": "waiting_lenient", "min_answered_share": 0.3})
KV = Rule(name="kv", series=["vllm:kv_cache_usage_perc"], aggregation="avg", per_pod="avg")
MAX = Rule(name="waiting_max", series=["vllm:num_requests_waiting"], aggregation="max")
RATIO = Rule(name="waiting_share", series=["vllm:num_requests_waiting"], aggregation="ratio",
             denominator=["vllm:num_requests_waiting", "vllm:num_requests_running"])
RULES = RuleSet(rules=[SUM, STRICT, LENIENT, KV, MAX, RATIO])


def value(body: dict) -> str:
    assert body["kind"] == "ExternalMetricValueList", body
    assert len(body["items"]) == 1, body
    return body["items"][0]["value"]


def target(e: VllmExporter, pod: str) -> Target:
    return Target(e.url, "ml", pod, {"namespace": "ml", "pod": pod, "app": "vllm"})


def status(code: int, body: dict) -> tuple[int, str, str]:
    assert body["kind"] == "Status", body
    return code, body["reason"], body["message"]


async def _metrics_text(adapter) -> str:
    _, text = await adapter.get("/metrics")
    return text


# --- the rule, pure --------------------------------------------------------------------------------------


def test_check_and_extrapolate_pure() -> None:
    two = Coverage(2, ("ml/b (u): HTTP 500",))
    check_coverage(SUM, two)  # 1 of 2 is the default 50%: served
    assert extrapolate(SUM, 3.0, two) == 6.0
    assert extrapolate(KV, 0.4, two) == 0.4 and extrapolate(MAX, 3.0, two) == 3.0
    assert extrapolate(RATIO, 0.25, two) == 0.25
    with pytest.raises(Exception, match=r"1 of 2 targets failed \(on_missing: error\): ml/b"):
        check_coverage(STRICT, two)
    three = Coverage(3, ("ml/b (u): HTTP 500", "ml/c (u): timed out after 3s"))
    with pytest.raises(Exception, match=r"only 1 of 3 targets answered, below min_answered_share 0.5: "
                                        r"ml/b .*; ml/c "):
        check_coverage(SUM, three)
    check_coverage(LENIENT, three)  # 1/3 >= 0.3
    check_coverage(SUM, three, default_share=0.2)  # the CLI default for rules without their own
    with pytest.raises(Exception, match="all 3 targets failed"):
        check_coverage(LENIENT, Coverage(3, ("a", "b", "c")), default_share=0.0)
    many = Coverage(20, tuple(f"ml/p{i} (u): HTTP 500" for i in range(20)))
    with pytest.raises(Exception, match=r"ml/p4 \(u\): HTTP 500; and 15 more$"):
        check_coverage(SUM, many)
    check_coverage(STRICT, Coverage(2))  # nothing failed


def test_rules_fields_are_validated() -> None:
    text = "rules:\n- {name: w, series: [x], aggregation: sum, on_missing: %s, min_answered_share: %s}\n"
    rule = parse_rules(text % ("error", "0.75")).rules[0]
    assert (rule.on_missing, rule.min_answered_share) == ("error", 0.75)
    assert parse_rules("rules:\n- {name: w, series: [x], aggregation: sum}\n").rules[0].on_missing == \
        "extrapolate"
    with pytest.raises(RulesError, match="on_missing"):
        parse_rules(text % ("ignore", "0.5"))
    for bad in ("1.5", "-0.1", ".nan"):
        with pytest.raises(RulesError, match="min_answered_share"):
            parse_rules(text % ("error", bad))


# --- --scrape-targets mode -------------------------------------------------------------------------------


async def test_a_failing_target_never_lowers_the_sum(serve_adapter) -> None:
    a = VllmExporter(waiting=3, running=1, kv_cache=0.2)
    b = VllmExporter(waiting=5, running=3, kv_cache=0.6)
    async with a, b:
        metrics = AdapterMetrics()
        source = ScrapeSource(StaticTargets([target(a, "a"), target(b, "b")]), RULES, ttl=0.0, timeout=0.5)
        adapter = await serve_adapter(RULES, source, cache_ttl=0.0, metrics=metrics)
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert (code, value(body)) == (200, "8")
        b.mode = "error"
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert code == 200, body
        assert value(body) != "3"  # the bug: the failing pod counted as 0
        assert value(body) == "6"  # a's 3 over the one pod that answered, scaled to the two expected
        assert value((await adapter.metric("kv", selector="app=vllm"))[1]) == "200m"  # average: a's own
        assert value((await adapter.metric("waiting_max", selector="app=vllm"))[1]) == "3"
        assert value((await adapter.metric("waiting_share", selector="app=vllm"))[1]) == "750m"  # 3 / 4
        code, reason, msg = status(*await adapter.metric("waiting_strict", selector="app=vllm"))
        assert (code, reason) == (503, "ServiceUnavailable")
        assert "1 of 2 targets failed (on_missing: error)" in msg and f"ml/b ({b.url}): HTTP 500" in msg
        assert "ml/a" not in msg
        text = await _metrics_text(adapter)
        assert 'toposcale_adapter_targets_answered{metric="waiting_strict",namespace="ml"} 1.0' in text
        assert 'toposcale_adapter_targets_expected{metric="waiting_strict",namespace="ml"} 2.0' in text
        # the 503 records no served value; the extrapolated 200 does
        assert 'toposcale_adapter_served_value{metric="waiting",namespace="ml"} 6.0' in text
        assert 'served_value{metric="waiting_strict"' not in text
        b.mode = "ok"
        code, body = await adapter.metric("waiting_strict", selector="app=vllm")
        assert (code, value(body)) == (200, "8")
        text = await _metrics_text(adapter)
        assert 'toposcale_adapter_targets_answered{metric="waiting_strict",namespace="ml"} 2.0' in text


async def test_below_the_answered_share_is_a_503_naming_the_failed_targets(serve_adapter) -> None:
    exporters = [VllmExporter(waiting=w) for w in (2, 4, 6)]
    for e in exporters:
        await e.start()
    try:
        targets = [target(e, f"p{i}") for i, e in enumerate(exporters)]
        source = ScrapeSource(StaticTargets(targets), RULES, ttl=0.0, timeout=0.3)
        adapter = await serve_adapter(RULES, source, cache_ttl=0.0)
        exporters[2].mode = "garbage"  # one of three: 2/3 answered, above 50%
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert (code, value(body)) == (200, "9")  # (2 + 4) * 3/2
        exporters[1].mode = "hang"  # two of three: 1/3 answered, below 50%
        code, reason, msg = status(*await adapter.metric("waiting", selector="app=vllm"))
        assert (code, reason) == (503, "ServiceUnavailable")
        assert "only 1 of 3 targets answered, below min_answered_share 0.5" in msg
        assert "ml/p1" in msg and "timed out" in msg and "ml/p2" in msg and "not Prometheus text" in msg
        code, body = await adapter.metric("waiting_lenient", selector="app=vllm")  # its own share 0.3
        assert (code, value(body)) == (200, "6")  # 2 * 3/1
        text = await _metrics_text(adapter)
        assert 'toposcale_adapter_targets_answered{metric="waiting",namespace="ml"} 1.0' in text
        assert 'toposcale_adapter_targets_expected{metric="waiting",namespace="ml"} 3.0' in text
        # the adapter-wide default (--min-answered-share) for rules without their own
        source.min_answered_share = 0.25
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert (code, value(body)) == (200, "6")
        for e in exporters:
            e.mode = "error"
        code, reason, msg = status(*await adapter.metric("waiting_lenient", selector="app=vllm"))
        assert code == 503 and "all 3 targets failed" in msg
    finally:
        for e in exporters:
            await e.stop()


async def test_gpu_rules_count_exporters(serve_adapter) -> None:
    dcgm_a = DcgmExporter([Gpu(0, "ml", "a", util=80), Gpu(1, "ml", "a", util=40)])
    dcgm_b = DcgmExporter([Gpu(0, "ml", "b", util=10)])
    async with dcgm_a, dcgm_b:
        exporter_labels = {"app.kubernetes.io/name": "dcgm-exporter"}
        targets = [
            Target("http://127.0.0.1:1/metrics", "ml", "a", {"namespace": "ml", "pod": "a", "app": "vllm"}),
            Target("http://127.0.0.1:1/metrics", "ml", "b", {"namespace": "ml", "pod": "b", "app": "vllm"}),
            Target(dcgm_a.url, "gpu", "dcgm-a", {"namespace": "gpu", "pod": "dcgm-a", **exporter_labels}),
            Target(dcgm_b.url, "gpu", "dcgm-b", {"namespace": "gpu", "pod": "dcgm-b", **exporter_labels}),
        ]
        util = Rule(name="gpu", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
                    gpu_owner=GpuOwner())
        util_sum = util.model_copy(update={"name": "gpu_sum", "aggregation": "sum"})
        rules = RuleSet(rules=[util, util_sum])
        source = ScrapeSource(StaticTargets(targets), rules, ttl=0.0)
        adapter = await serve_adapter(rules, source, cache_ttl=0.0)
        assert value((await adapter.metric("gpu", selector="app=vllm"))[1]) == "43333m"
        assert value((await adapter.metric("gpu_sum", selector="app=vllm"))[1]) == "130"
        dcgm_b.mode = "error"
        assert value((await adapter.metric("gpu", selector="app=vllm"))[1]) == "60"  # a's GPUs' mean
        assert value((await adapter.metric("gpu_sum", selector="app=vllm"))[1]) == "240"  # 120 * 2/1
        text = await _metrics_text(adapter)
        assert 'toposcale_adapter_targets_answered{metric="gpu",namespace="ml"} 1.0' in text
        assert 'toposcale_adapter_targets_expected{metric="gpu",namespace="ml"} 2.0' in text


# --- Kubernetes mode -------------------------------------------------------------------------------------


def pod(name: str, ns: str, labels: dict[str, str], ip: str, *, ready: bool = True,
        node: str | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}], **({"nodeName": node} if node else {})},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def test_kubernetes_expects_running_and_ready_pods(serve_adapter, tmp_path: Path) -> None:
    # one exporter per loopback address on one port: the rule's port reaches each pod's own
    a = VllmExporter(waiting=3, host="127.0.0.1")
    await a.start()
    b = VllmExporter(waiting=5, host="127.0.0.2", port=a.port)
    unready = VllmExporter(waiting=100, host="127.0.0.3", port=a.port)
    dcgm_a = DcgmExporter([Gpu(0, "ml", "vllm-a", util=80)], host="127.0.0.1")
    await dcgm_a.start()
    dcgm_b = DcgmExporter([Gpu(0, "ml", "vllm-b", util=20)], host="127.0.0.2", port=dcgm_a.port)
    dcgm_c = DcgmExporter([], host="127.0.0.3", port=dcgm_a.port)  # a node without selected pods
    async with b, unready, dcgm_b, dcgm_c, KubeStandIn() as k:
        try:
            k.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"},
                   "status": {"phase": "Active"}})
            k.add(pod("vllm-a", "ml", {"app": "vllm", "name": "a"}, "127.0.0.1", node="node-a"))
            k.add(pod("vllm-b", "ml", {"app": "vllm"}, "127.0.0.2", node="node-b"))
            k.add(pod("vllm-c", "ml", {"app": "vllm"}, "127.0.0.3", node="node-c", ready=False))
            dcgm = {"app.kubernetes.io/name": "dcgm-exporter"}
            for i, n in enumerate("abc"):
                k.add(pod(f"dcgm-{n}", "gpu", dcgm, f"127.0.0.{i + 1}", node=f"node-{n}"))
            spec = ScrapeSpec(port=a.port)
            owner = GpuOwner(port=dcgm_a.port)
            rules = RuleSet(rules=[
                Rule(name="waiting", series=["vllm:num_requests_waiting"], aggregation="sum", scrape=spec),
                Rule(name="waiting_strict", series=["vllm:num_requests_waiting"], aggregation="sum",
                     scrape=spec, on_missing="error"),
                Rule(name="gpu", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
                     gpu_owner=owner, on_missing="error"),
            ])
            api = await kube.api_client(k.write_kubeconfig(tmp_path / "kubeconfig"))
            source = ScrapeSource(KubePods(api, ttl=0.0), rules, ttl=0.0, timeout=0.5)
            adapter = await serve_adapter(rules, source, cache_ttl=0.0)
            code, body = await adapter.metric("waiting", selector="app=vllm")
            assert (code, value(body)) == (200, "8")  # the pod that is not Ready is neither read nor expected
            assert unready.scrapes == 0
            b.mode = "error"
            code, body = await adapter.metric("waiting", selector="app=vllm")
            assert (code, value(body)) == (200, "6")
            code, _, msg = status(*await adapter.metric("waiting_strict", selector="app=vllm"))
            assert code == 503 and "ml/vllm-b (http://127.0.0.2:" in msg and "vllm-c" not in msg
            text = await _metrics_text(adapter)
            assert 'toposcale_adapter_targets_expected{metric="waiting",namespace="ml"} 2.0' in text
            # GPU rule: the exporters on node-a and node-b are expected; node-c's failing is nobody's loss
            dcgm_c.mode = "error"
            code, body = await adapter.metric("gpu", selector="app=vllm")
            assert (code, value(body)) == (200, "50"), body
            assert 'toposcale_adapter_targets_expected{metric="gpu",namespace="ml"} 2.0' in \
                await _metrics_text(adapter)
            dcgm_b.mode = "error"
            code, _, msg = status(*await adapter.metric("gpu", selector="app=vllm"))
            assert code == 503 and "gpu/dcgm-b" in msg and "dcgm-c" not in msg
            code, body = await adapter.metric("gpu", selector="name=a")  # only node-a's exporter
            assert (code, value(body)) == (200, "80")
        finally:
            await a.stop()
            await dcgm_a.stop()


# --- Prometheus mode -------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason="needs the Debian prometheus package")
async def test_prometheus_reads_the_pods_up_series(serve_adapter) -> None:
    a = VllmExporter(waiting=3, running=1, kv_cache=0.2)
    b = VllmExporter(waiting=5, running=3, kv_cache=0.6)
    c = VllmExporter(waiting=7)
    async with a, b, c:
        prom = PrometheusServer([
            ScrapeJob("a", [a.address], {"namespace": "ml", "pod": "a", "app": "vllm"}),
            ScrapeJob("b", [b.address], {"namespace": "ml", "pod": "b", "app": "vllm"}),
            ScrapeJob("c", [c.address], {"namespace": "ml", "pod": "c", "app": "other"}),
        ], scrape_interval="500ms")
        try:
            await asyncio.to_thread(prom.start)
            await asyncio.to_thread(prom.wait_scraped, ["a", "b", "c"])
            metrics = AdapterMetrics()
            source = PrometheusSource(prom.url, timeout=2)
            adapter = await serve_adapter(RULES, source, cache_ttl=0.0, metrics=metrics)
            code, body = await adapter.metric("waiting", selector="app=vllm")
            assert (code, value(body)) == (200, "8")
            text = await _metrics_text(adapter)
            assert 'toposcale_adapter_targets_answered{metric="waiting",namespace="ml"} 2.0' in text
            assert 'toposcale_adapter_targets_expected{metric="waiting",namespace="ml"} 2.0' in text
            b.mode = "error"
            for _ in range(100):  # until Prometheus has failed a scrape of b (its series then go stale)
                if await asyncio.to_thread(prom.query, 'up{job="b"} == 0'):
                    break
                await asyncio.sleep(0.1)
            code, body = await adapter.metric("waiting", selector="app=vllm")
            assert code == 200, body
            assert value(body) == "6"  # not 3
            assert value((await adapter.metric("kv", selector="app=vllm"))[1]) == "200m"
            assert value((await adapter.metric("waiting_share", selector="app=vllm"))[1]) == "750m"
            code, reason, msg = status(*await adapter.metric("waiting_strict", selector="app=vllm"))
            assert (code, reason) == (503, "ServiceUnavailable")
            assert "1 of 2 targets failed (on_missing: error): ml/b: Prometheus cannot scrape it" in msg
            text = await _metrics_text(adapter)
            assert 'toposcale_adapter_targets_answered{metric="waiting",namespace="ml"} 1.0' in text
            code, body = await adapter.metric("waiting", selector="app in (vllm,other)")
            assert (code, value(body)) == (200, "15")  # (3 + 7) * 3/2
            a.mode = "error"  # every selected pod down: before, no series and an empty 200; now a 503
            for _ in range(100):
                if await asyncio.to_thread(prom.query, 'up{job="a"} == 0'):
                    break
                await asyncio.sleep(0.1)
            code, reason, msg = status(*await adapter.metric("waiting", selector="app=vllm"))
            assert code == 503 and "all 2 targets failed" in msg and "ml/a" in msg and "ml/b" in msg
        finally:
            await asyncio.to_thread(prom.stop)
