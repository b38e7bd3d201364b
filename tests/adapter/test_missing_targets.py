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
import uuid

import pytest
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.model import Coverage, check_coverage, extrapolate
from toposcale.adapter.rules import GpuOwner, Rule, RulesError, RuleSet, ScrapeSpec, parse_rules
from toposcale.adapter.sources.pods import KubePods, StaticTargets, Target
from toposcale.adapter.sources.prometheus import PrometheusSource
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import DcgmExporter, Exporter, Gpu, VllmExporter
from tests.harness.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob
from tests.harness.real_kube import RealKube
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
        "spec": {"containers": [{"name": "c", "image": "x"}], "schedulerName": "nobody",
                 **({"nodeName": node} if node else {})},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


async def test_kubernetes_expects_running_and_ready_pods(serve_adapter, kube_cluster) -> None:
    # The session's real kube-apiserver, with namespaces and Nodes of the test's own.
    tag = uuid.uuid4().hex[:6]
    ml, gpu_ns = f"ml-{tag}", f"gpu-{tag}"
    node = {n: f"node-{n}-{tag}" for n in "abc"}
    real = RealKube(kube_cluster)
    # one exporter per loopback address on one port: the rule's port reaches each pod's own
    a = VllmExporter(waiting=3, host="127.0.0.1")
    await a.start()
    b = VllmExporter(waiting=5, host="127.0.0.2", port=a.port)
    unready = VllmExporter(waiting=100, host="127.0.0.3", port=a.port)
    dcgm_a = DcgmExporter([Gpu(0, ml, "vllm-a", util=80)], host="127.0.0.1")
    await dcgm_a.start()
    dcgm_b = DcgmExporter([Gpu(0, ml, "vllm-b", util=20)], host="127.0.0.2", port=dcgm_a.port)
    dcgm_c = DcgmExporter([], host="127.0.0.3", port=dcgm_a.port)  # a node without selected pods
    async with b, unready, dcgm_b, dcgm_c:
        try:
            for ns in (ml, gpu_ns):
                real.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            for n in node.values():
                real.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
            real.add(pod("vllm-a", ml, {"app": "vllm", "name": "a"}, "127.0.0.1", node=node["a"]))
            real.add(pod("vllm-b", ml, {"app": "vllm"}, "127.0.0.2", node=node["b"]))
            real.add(pod("vllm-c", ml, {"app": "vllm"}, "127.0.0.3", node=node["c"], ready=False))
            dcgm = {"app.kubernetes.io/name": "dcgm-exporter"}
            for i, n in enumerate("abc"):
                real.add(pod(f"dcgm-{n}", gpu_ns, dcgm, f"127.0.0.{i + 1}", node=node[n]))
            spec = ScrapeSpec(port=a.port)
            owner = GpuOwner(port=dcgm_a.port)
            rules = RuleSet(rules=[
                Rule(name="waiting", series=["vllm:num_requests_waiting"], aggregation="sum", scrape=spec),
                Rule(name="waiting_strict", series=["vllm:num_requests_waiting"], aggregation="sum",
                     scrape=spec, on_missing="error"),
                Rule(name="gpu", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
                     gpu_owner=owner, on_missing="error"),
            ])
            api = await kube.api_client(str(kube_cluster.admin_kubeconfig))
            pods = KubePods(api, ttl=0.0)
            source = ScrapeSource(pods, rules, ttl=0.0, timeout=0.5)
            adapter = await serve_adapter(rules, source, cache_ttl=0.0)
            code, body = await adapter.metric("waiting", namespace=ml, selector="app=vllm")
            assert (code, value(body)) == (200, "8")  # the pod that is not Ready is neither read nor expected
            assert unready.scrapes == 0
            b.mode = "error"
            code, body = await adapter.metric("waiting", namespace=ml, selector="app=vllm")
            assert (code, value(body)) == (200, "6")
            code, _, msg = status(*await adapter.metric("waiting_strict", namespace=ml, selector="app=vllm"))
            assert code == 503 and f"{ml}/vllm-b (http://127.0.0.2:" in msg and "vllm-c" not in msg
            text = await _metrics_text(adapter)
            assert f'toposcale_adapter_targets_expected{{metric="waiting",namespace="{ml}"}} 2.0' in text
            # GPU rule: the exporters on node-a and node-b are expected; node-c's failing is nobody's loss
            dcgm_c.mode = "error"
            code, body = await adapter.metric("gpu", namespace=ml, selector="app=vllm")
            assert (code, value(body)) == (200, "50"), body
            assert f'toposcale_adapter_targets_expected{{metric="gpu",namespace="{ml}"}} 2.0' in \
                await _metrics_text(adapter)
            dcgm_b.mode = "error"
            code, _, msg = status(*await adapter.metric("gpu", namespace=ml, selector="app=vllm"))
            assert code == 503 and f"{gpu_ns}/dcgm-b" in msg and "dcgm-c" not in msg
            code, body = await adapter.metric("gpu", namespace=ml, selector="name=a")  # node-a only
            assert (code, value(body)) == (200, "80")
            await pods.close()
        finally:
            await a.stop()
            await dcgm_a.stop()
            real.cleanup()


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
            # A queue below 0 (issue 28): a broken exporter, refused as in scrape mode, never served as -5
            # (the query's `negative` part, read by the real Prometheus).
            c.waiting = -5
            for _ in range(100):
                if await asyncio.to_thread(prom.query, 'vllm:num_requests_waiting{job="c"} < 0'):
                    break
                await asyncio.sleep(0.1)
            code, reason, msg = status(*await adapter.metric("waiting", selector="app=other"))
            assert code == 503 and "ml/c: a series is -5, below 0" in msg, msg
        finally:
            await asyncio.to_thread(prom.stop)


# --- series no target exposes ----------------------------------------------------------------------------

TYPO = Rule(name="typo", series=["vllm:num_requests_waitin"], aggregation="sum")
KV_V1 = Rule(name="kv_v1", series=["vllm:kv_cache_usage_perc"], aggregation="avg")  # V1's name only
KV_V1_SUM = KV_V1.model_copy(update={"name": "kv_v1_sum", "aggregation": "sum"})
KV_V1_STRICT = KV_V1.model_copy(update={"name": "kv_v1_strict", "on_missing": "error"})
TTFT = Rule(name="ttft_p90", series=["vllm:time_to_first_token_seconds"], aggregation="histogram_quantile",
            quantile=0.9, window_seconds=60)
ABSENT_RULES = RuleSet(rules=[TYPO, KV_V1, KV_V1_SUM, KV_V1_STRICT, TTFT])


async def test_a_series_no_target_exposes_is_a_503_naming_it_logged_once(serve_adapter, caplog) -> None:
    # It used to answer 200 `items: []`, which cannot be told from "the selector matched no pods".
    a, b = VllmExporter(waiting=3), VllmExporter(waiting=5)
    async with a, b:
        source = ScrapeSource(StaticTargets([target(a, "a"), target(b, "b")]), ABSENT_RULES, ttl=0.0)
        adapter = await serve_adapter(ABSENT_RULES, source, cache_ttl=0.0)
        for _ in range(3):
            code, reason, msg = status(*await adapter.metric("typo", selector="app=vllm"))
            assert (code, reason) == (503, "ServiceUnavailable")
            assert msg == "typo: none of the 2 targets that answered exposes vllm:num_requests_waitin: the " \
                "series is absent"
        logged = [r for r in caplog.records if r.getMessage() == "no target exposes the rule's series"]
        assert len(logged) == 1 and logged[0].metric == "typo"
        code, body = await adapter.metric("typo", selector="app=nothing")  # no pod selected: still empty
        assert (code, body["items"]) == (200, [])
        _, doc = await adapter.get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ml/pods/*/typo"
                                   "?labelSelector=app%3Dvllm")
        assert doc["code"] == 503, doc
        assert "none of the 2 targets that answered exposes vllm:num_requests_waitin" in doc["message"]


async def test_a_pod_without_any_of_the_rules_series_counts_as_missing(serve_adapter) -> None:
    # A V0 pod under a rule naming only V1's series used to drop out of the average silently.
    a = VllmExporter(waiting=3, kv_cache=0.2)
    b = VllmExporter(generation="v0", waiting=5, kv_cache=0.6)
    async with a, b:
        source = ScrapeSource(StaticTargets([target(a, "a"), target(b, "b")]), ABSENT_RULES, ttl=0.0)
        adapter = await serve_adapter(ABSENT_RULES, source, cache_ttl=0.0)
        code, reason, msg = status(*await adapter.metric("kv_v1_strict", selector="app=vllm"))
        assert (code, reason) == (503, "ServiceUnavailable")
        assert msg == f"kv_v1_strict: 1 of 2 targets failed (on_missing: error): ml/b ({b.url}): exposes " \
            "none of vllm:kv_cache_usage_perc"
        assert value((await adapter.metric("kv_v1_sum", selector="app=vllm"))[1]) == "400m"  # 0.2 x 2/1
        assert value((await adapter.metric("kv_v1", selector="app=vllm"))[1]) == "200m"
        text = await _metrics_text(adapter)
        assert 'toposcale_adapter_targets_answered{metric="kv_v1",namespace="ml"} 1.0' in text
        assert 'toposcale_adapter_targets_expected{metric="kv_v1",namespace="ml"} 2.0' in text


async def test_a_quantile_over_targets_without_the_histogram_says_the_series_is_absent(serve_adapter) -> None:
    # V0 pods export no TTFT histogram: it used to say "the first was just taken, ask again" forever.
    a, b = VllmExporter(generation="v0"), VllmExporter(generation="v0")
    now = [1000.0]
    async with a, b:
        source = ScrapeSource(StaticTargets([target(a, "a"), target(b, "b")]), ABSENT_RULES, ttl=0.0,
                              clock=lambda: now[0])
        adapter = await serve_adapter(ABSENT_RULES, source, cache_ttl=0.0)
        for _ in range(3):
            code, _, msg = status(*await adapter.metric("ttft_p90", selector="app=vllm"))
            assert code == 503 and "just taken" not in msg
            assert msg == "ttft_p90: none of the 2 targets that answered exposes " \
                "vllm:time_to_first_token_seconds_bucket: the series is absent"
            now[0] += 10


async def test_a_quantile_without_observations_names_the_metric(serve_adapter) -> None:
    a = VllmExporter()  # V1: the histogram is there, with no observations
    now = [1000.0]
    async with a:
        source = ScrapeSource(StaticTargets([target(a, "a")]), ABSENT_RULES, ttl=0.0, clock=lambda: now[0])
        adapter = await serve_adapter(ABSENT_RULES, source, cache_ttl=0.0)
        code, _, msg = status(*await adapter.metric("ttft_p90", selector="app=vllm"))
        assert code == 503 and "just taken" in msg  # true here: one scrape, no window yet
        now[0] += 10
        code, _, msg = status(*await adapter.metric("ttft_p90", selector="app=vllm"))
        assert (code, msg) == (503, "ttft_p90: no observations in the window: the quantile is undefined")


class TextExporter(Exporter):
    """Serves `text` as it is: here, kube-state-metrics' `kube_pod_info` lines."""

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.text = text

    def render(self) -> str:
        return self.text


def pod_info(*pods: str) -> str:
    return "".join(f'kube_pod_info{{namespace="ml",pod="{p}",node="n"}} 1\n' for p in pods)


async def _until(prom: PrometheusServer, promql: str) -> None:
    for _ in range(200):
        if await asyncio.to_thread(prom.query, promql):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Prometheus never answered {promql}")


async def test_prometheus_expects_the_pods_that_exist_now(serve_adapter, kube_cluster, deployed) -> None:
    # After a scale-in the deleted pods' `up == 0` stays in Prometheus for two scrape intervals (here: for
    # good, their static targets stay): they were counted as expected but down ("only 2 of 6 targets
    # answered"), or extrapolated over. The pods that exist now come from the Kubernetes API when the
    # adapter has it, else from kube-state-metrics' kube_pod_info where Prometheus has it. On the way, a V0
    # pod under a V1-only rule and a series no pod exports, as in scrape mode.
    a = VllmExporter(waiting=3, kv_cache=0.2)
    b = VllmExporter(generation="v0", waiting=5, kv_cache=0.6)
    d = VllmExporter(waiting=9, kv_cache=0.4)
    ksm = TextExporter(pod_info("a", "b", "d"))
    rules = RuleSet(rules=[SUM, STRICT, TYPO, KV_V1_STRICT])
    real = RealKube(kube_cluster)
    async with a, b, d, ksm:
        jobs = [ScrapeJob(n, [e.address], {"namespace": "ml", "pod": n, "app": "vllm"})
                for n, e in (("a", a), ("b", b), ("d", d))]
        prom = PrometheusServer([*jobs, ScrapeJob("ksm", [ksm.address], honor_labels=True)],
                                scrape_interval="500ms")
        try:
            await asyncio.to_thread(prom.start)
            await asyncio.to_thread(prom.wait_scraped, ["a", "b", "d", "ksm"])
            await _until(prom, 'kube_pod_info{pod="d"}')
            adapter = await serve_adapter(rules, PrometheusSource(prom.url, timeout=2), cache_ttl=0.0)
            code, body = await adapter.metric("waiting_strict", selector="app=vllm")
            assert (code, value(body)) == (200, "17")
            code, _, msg = status(*await adapter.metric("typo", selector="app=vllm"))
            assert (code, msg) == (503, "typo: none of the 3 targets that answered exposes "
                                        "vllm:num_requests_waitin: the series is absent")
            _, doc = await adapter.get("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ml/pods/*/typo"
                                       "?labelSelector=app%3Dvllm")
            assert doc["code"] == 503 and "the series is absent" in doc["message"], doc
            code, _, msg = status(*await adapter.metric("kv_v1_strict", selector="app=vllm"))
            assert code == 503
            assert msg == "kv_v1_strict: 1 of 3 targets failed (on_missing: error): ml/b: exposes none of " \
                "vllm:kv_cache_usage_perc"

            await d.stop()  # the ReplicaSet deleted d: its target fails until it leaves discovery
            await _until(prom, 'up{job="d"} == 0')
            # The real API server lists a and b (d is gone), read with the adapter's own ServiceAccount and
            # RBAC; kube-state-metrics has not been scraped since
            real.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}})
            for name in ("a", "b"):
                p = pod(name, "ml", {"app": "vllm"}, "127.0.0.1")
                p["spec"]["schedulerName"] = "nobody"  # no scheduler binds it: the Pod stays as written
                real.add(p)
            api = await kube.api_client(str(deployed.kubeconfigs["toposcale-adapter"]))
            pods = KubePods(api, ttl=0.0)
            with_kube = await serve_adapter(rules, PrometheusSource(prom.url, timeout=2, pods=pods),
                                            cache_ttl=0.0)
            code, body = await with_kube.metric("waiting_strict", selector="app=vllm")
            assert (code, value(body)) == (200, "8"), body  # a and b; not "1 of 3 failed"
            code, body = await with_kube.metric("waiting", selector="app=vllm")
            assert (code, value(body)) == (200, "8")  # not extrapolated to 12 over a pod that is gone
            # without Kubernetes: kube-state-metrics still lists d, so d is expected and down
            code, _, msg = status(*await adapter.metric("waiting_strict", selector="app=vllm"))
            assert code == 503 and "ml/d: Prometheus cannot scrape it (up == 0)" in msg
            ksm.text = pod_info("a", "b")  # its next scrape: d's kube_pod_info goes stale at once
            await _until(prom, 'absent(kube_pod_info{pod="d"})')
            code, body = await adapter.metric("waiting_strict", selector="app=vllm")
            assert (code, value(body)) == (200, "8"), body
            text = await _metrics_text(adapter)
            assert 'toposcale_adapter_targets_expected{metric="waiting_strict",namespace="ml"} 2.0' in text
        finally:
            await asyncio.to_thread(prom.stop)
            real.cleanup()
