"""Direct-scrape mode end to end: in-test vLLM/DCGM exporters serving real exporter text, the adapter in
front, and the real kubectl as the client. No cluster: targets come from a static targets list (the
`--scrape-targets` mode); the Kubernetes pod-finding path is covered separately against the real
kube-apiserver (tests/adapter/test_kube_and_cli.py, test_missing_targets.py)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import DcgmExporter, Gpu, VllmExporter

from .conftest import kubectl, write_kubeconfig

BASE = "/apis/external.metrics.k8s.io/v1beta1"


def target(e: object, namespace: str, pod: str, **labels: str) -> Target:
    return Target(e.url, namespace, pod, {"namespace": namespace, "pod": pod, **labels})  # type: ignore[attr-defined]


@pytest.fixture
async def fleet():
    """Two vLLM pods of app=vllm in ml (one V1 with 2 engines, one V0), one other app, one DCGM exporter."""
    a = VllmExporter(generation="v1", engines=2, waiting=[3, 4], running=[2, 2], kv_cache=[0.5, 0.7])
    b = VllmExporter(generation="v0", waiting=1, running=1, kv_cache=0.25)
    other = VllmExporter(waiting=100, kv_cache=0.9)
    dcgm = DcgmExporter([
        Gpu(0, "ml", "vllm-a", util=80, fb_used=60000, fb_free=20000),
        Gpu(1, "ml", "vllm-a", util=60, fb_used=40000, fb_free=40000),
        Gpu(2, "ml", "vllm-b", util=10, fb_used=20000, fb_free=60000),
        Gpu(3, "", "", util=99, fb_used=1, fb_free=80000),  # idle GPU: not any selected pod's
    ])
    for e in (a, b, other, dcgm):
        await e.start()
    targets = [
        target(a, "ml", "vllm-a", app="vllm"),
        target(b, "ml", "vllm-b", app="vllm"),
        target(other, "ml", "chat-0", app="chat"),
        target(dcgm, "gpu-operator", "dcgm-x", **{"app.kubernetes.io/name": "dcgm-exporter"}),
    ]
    yield {"a": a, "b": b, "other": other, "dcgm": dcgm, "targets": targets}
    for e in (a, b, other, dcgm):
        await e.stop()


@pytest.fixture
async def adapter(fleet, rules, serve_adapter):
    source = ScrapeSource(StaticTargets(fleet["targets"]), rules, ttl=0.05, timeout=1.0)
    return await serve_adapter(rules, source, cache_ttl=0.05)


def value(body: dict) -> str:
    assert body["kind"] == "ExternalMetricValueList"
    assert body["apiVersion"] == "external.metrics.k8s.io/v1beta1"
    assert len(body["items"]) == 1
    return body["items"][0]["value"]


async def test_sums_over_pods_and_engines(adapter) -> None:
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert code == 200, body
    assert value(body) == "8"  # 3 + 4 (two engines of vllm-a) + 1 (vllm-b); chat-0 not selected
    item = body["items"][0]
    assert item["metricName"] == "vllm_requests_waiting"
    assert item["metricLabels"] == {}
    time.strptime(item["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert "window" not in item


async def test_metric_names_match_case_insensitively(adapter) -> None:
    code, body = await adapter.metric("VLLM_Requests_Waiting", selector="app=vllm")
    assert code == 200, body
    assert body["items"][0]["metricName"] == "vllm_requests_waiting"


async def test_kv_cache_averages_pods_across_vllm_generations(adapter) -> None:
    # vllm-a (new names, both exposed): mean of its engines 0.6; vllm-b (only the old name): 0.25
    code, body = await adapter.metric("vllm_kv_cache_usage", selector="app=vllm")
    assert code == 200, body
    assert value(body) == "425m"


async def test_selector_operators_pick_pods(adapter) -> None:
    cases = {
        "app in (vllm,chat)": "108",
        "app notin (chat)": "8",
        "app!=vllm": "100",
        "pod=vllm-b": "1",
        "app,!nonexistent": "108",
        "": "108",
    }
    for sel, want in cases.items():
        code, body = await adapter.metric("vllm_requests_waiting", selector=sel)
        assert code == 200, (sel, body)
        assert value(body) == want, sel


async def test_gpu_metrics_cover_only_the_selected_pods_gpus(adapter) -> None:
    code, body = await adapter.metric("gpu_utilization", selector="app=vllm")
    assert code == 200, body
    assert value(body) == "50"  # (80 + 60 + 10) / 3; the idle GPU 3 (99%) is nobody's
    code, body = await adapter.metric("gpu_utilization", selector="pod=vllm-a")
    assert value(body) == "70"
    code, body = await adapter.metric("gpu_memory_used_ratio", selector="app=vllm")
    assert value(body) == "500m"  # 120000 / 240000


async def test_ttft_p90_needs_an_increase_then_matches_the_histogram(adapter, fleet) -> None:
    code, body = await adapter.metric("vllm_time_to_first_token_p90", selector="app=vllm")
    assert code == 503, body  # one scrape has no window yet: an error, never 0
    assert body["reason"] == "ServiceUnavailable"
    fleet["a"].observe_ttft(0.3, n=90)
    fleet["a"].observe_ttft(3.0, n=10)
    await __import__("asyncio").sleep(0.1)
    code, body = await adapter.metric("vllm_time_to_first_token_p90", selector="app=vllm")
    assert code == 200, body
    # rank 90 of 100 lands at the top of the (0.25, 0.5] bucket
    assert value(body) == "500m"
    assert body["items"][0]["window"] >= 0


async def test_no_matching_pods_is_an_empty_list_not_zero(adapter) -> None:
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=nothing")
    assert code == 200
    assert body["items"] == []


async def test_bad_input_answers_status(adapter) -> None:
    for sel in ("app in (vllm", "app==", "=vllm", "app=vllm,,", "a b", "x>1", "Bad_Prefix.com/x=y"):
        code, body = await adapter.metric("vllm_requests_waiting", selector=sel)
        if sel == "app==":
            assert code == 200  # empty value is valid syntax (selects nothing here)
            continue
        assert code == 400, (sel, body)
        assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == 400
        assert body["reason"] == "BadRequest"
        assert "labelSelector" in body["message"]
    code, body = await adapter.metric("no_such_metric")
    assert (code, body["reason"], body["code"]) == (404, "NotFound", 404)
    assert "vllm_requests_waiting" in body["message"]  # says what exists
    assert body["details"] == {"name": "no_such_metric", "group": "external.metrics.k8s.io",
                               "kind": "no_such_metric"}
    code, body = await adapter.metric("vllm_requests_waiting", namespace="nowhere")
    assert (code, body["reason"]) == (404, "NotFound")
    assert 'namespace "nowhere" not found' in body["message"]
    code, body = await adapter.metric("vllm_requests_waiting", namespace="Not_A_Namespace")
    assert (code, body["reason"]) == (400, "BadRequest")
    code, body = await adapter.get(BASE + "/namespaces/ml")
    assert (code, body["kind"], body["code"]) == (404, "Status", 404)


async def test_one_hanging_or_garbage_target_does_not_fail_the_metric(adapter, fleet) -> None:
    # one of two pods failing is half the expected pods answering (the default min_answered_share): the sum
    # over vllm-a (7) is extrapolated to both pods, never served as the lower 7 (tests/adapter/
    # test_missing_targets.py)
    fleet["b"].mode = "hang"
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert code == 200, body
    assert value(body) == "14"
    fleet["b"].mode = "garbage"
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert (code, value(body)) == (200, "14")
    fleet["b"].mode = "huge"  # over the body size limit below
    adapter_source = adapter.app[__import__("toposcale.adapter.api", fromlist=["SOURCE_KEY"]).SOURCE_KEY]
    adapter_source.max_body_bytes = 1_000_000
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert (code, value(body)) == (200, "14")


async def test_all_targets_failing_is_503_with_reasons(adapter, fleet) -> None:
    fleet["a"].mode = "garbage"
    fleet["b"].mode = "hang"
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert code == 503, body
    assert body["reason"] == "ServiceUnavailable" and body["code"] == 503
    assert "not Prometheus text format" in body["message"] and "timed out" in body["message"]
    code, text = await adapter.get("/metrics")
    assert 'toposcale_adapter_source_errors_total{kind="target",source="scrape"}' in text
    fleet["a"].mode = fleet["b"].mode = "ok"
    code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
    assert code == 200  # failures are not cached


async def test_kubectl_discovery_and_metric(adapter, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kubeconfig", adapter.url)
    res = await kubectl(kc, "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kind"] == "APIResourceList" and doc["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    names = {r["name"] for r in doc["resources"]}
    assert {"vllm_requests_waiting", "vllm_kv_cache_usage", "gpu_utilization"} <= names
    assert all(r["namespaced"] and r["verbs"] == ["get"] and r["kind"] == "ExternalMetricValueList"
               for r in doc["resources"])
    res = await kubectl(kc, "get", "--raw",
                        f"{BASE}/namespaces/ml/vllm_requests_waiting?labelSelector=app%3Dvllm")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["items"][0]["value"] == "8"
    res = await kubectl(kc, "api-resources", "--api-group=external.metrics.k8s.io", "-o", "wide")
    assert res.returncode == 0, res.stderr
    assert "vllm_requests_waiting" in res.stdout and "ExternalMetricValueList" in res.stdout
    res = await kubectl(kc, "get", "--raw", f"{BASE}/namespaces/ml/nope")
    assert res.returncode != 0 and "NotFound" in res.stderr + res.stdout


class _Duplicating(VllmExporter):
    """vLLM text with one series printed twice (a broken exporter, or two registries merged)."""

    def render(self) -> str:
        text = super().render()
        line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_waiting{"))
        return text + line + "\n"


async def test_a_duplicated_series_fails_that_target_never_sums_twice(rules, serve_adapter) -> None:
    dup = _Duplicating(generation="v1", engines=1, waiting=3)
    good = VllmExporter(generation="v1", engines=1, waiting=5)
    async with dup, good:
        source = ScrapeSource(StaticTargets([target(dup, "ml", "dup", app="vllm"),
                                             target(good, "ml", "good", app="vllm")]), rules, ttl=0.0)
        adapter = await serve_adapter(rules, source, cache_ttl=0.0)
        code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
        assert code == 200, body
        assert value(body) not in ("11", "8")  # 3 twice plus 5, or its 3 taken once: it is malformed
        # Only the duplicating target: its scrape fails with a clear reason, a 503, not 6.
        source.finder.targets = [source.finder.targets[0]]
        code, body = await adapter.metric("vllm_requests_waiting", selector="app=vllm")
        assert (code, body["reason"]) == (503, "ServiceUnavailable"), body
        assert 'duplicate series vllm:num_requests_waiting{' in body["message"]
        assert "ml/dup" in body["message"]
        _, text = await adapter.get("/metrics")
        assert 'toposcale_adapter_source_errors_total{kind="duplicate-series",source="scrape"}' in text


def test_duplicate_series_are_found_whatever_the_label_order() -> None:
    from toposcale.adapter.sources.scrape import DuplicateSeries, parse_exposition

    text = 'm{a="1",b="2"} 3\nm{b="2",a="1"} 3\n'
    with pytest.raises(DuplicateSeries, match=re.escape('duplicate series m{a="1",b="2"}')):
        parse_exposition(text, {"m"})
    assert [s.value for s in parse_exposition('m{a="1"} 3\nm{a="2"} 3\n', {"m"})] == [3.0, 3.0]
    with pytest.raises(DuplicateSeries):  # anywhere in the exposition, not only in the series the rules read
        parse_exposition("other 1\nother 1\nm 3\n", {"m"})


def test_a_targets_file_listing_a_pod_twice_is_refused(tmp_path: Path) -> None:
    from toposcale.adapter.rules import RulesError
    from toposcale.adapter.sources.pods import load_targets

    first = {"url": "http://127.0.0.1:8/metrics", "labels": {"namespace": "ml", "pod": "a"}}
    path = tmp_path / "targets.yaml"
    second = {"url": "http://127.0.0.1:9/metrics", "labels": {"namespace": "ml", "pod": "a"}}
    path.write_text(json.dumps([first, second]))
    with pytest.raises(RulesError, match="1: pod ml/a is listed twice"):
        load_targets(path)
    path.write_text(json.dumps([first]))
    assert len(load_targets(path)) == 1
