"""Every dashboard query, run against the real Prometheus scraping real exporters and toposcale's services,
returns data: no panel on a misspelled metric or label, no variable that offers nothing.

See live_stack.py for what runs (vLLM both generations, DCGM exporter, kube-state-metrics, adapter, extender,
agent). Kubernetes itself is not involved: the services run without a cluster connection here.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.peers.live_stack import LiveStack

from .conftest import (
    ALL_DASHBOARDS,
    ALL_QUERIES,
    Query,
    label_values_args,
    queries,
    query_variables,
    substitute,
)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/prometheus").exists(),
                                reason="needs the Debian prometheus package (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    live = LiveStack(tmp_path_factory.mktemp("dashboards-live")).start()
    try:
        # rate() over counters needs a few scrapes of them moving; wait for the slowest family to show
        eventually(live, "histogram_quantile(0.5, sum by (le) "
                         "(rate(toposcale_extender_decision_seconds_bucket[1m])))")
        yield live
    finally:
        live.stop()


def finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def eventually(live: LiveStack, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The query's result once it has a finite value (Prometheus needs a few scrapes), else the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = live.query(promql)
        if finite(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.parametrize("query", ALL_QUERIES, ids=[f"{q.dashboard}:{q.where}" for q in ALL_QUERIES])
def test_query_returns_data(stack: LiveStack, query: Query) -> None:
    promql = substitute(query.expr)
    result = eventually(stack, promql)
    assert result, f"{query.where}: no series for {promql}"
    assert finite(result), f"{query.where}: only NaN for {promql}: {result}"


@pytest.mark.parametrize("name", sorted(ALL_DASHBOARDS))
def test_each_variable_offers_values_and_a_selection_still_shows_data(stack: LiveStack, name: str) -> None:
    dash = ALL_DASHBOARDS[name]
    chosen: dict[str, str] = {}
    for var in query_variables(dash):
        selector, label = label_values_args(var["query"]["query"])
        # label_values(selector, label) is the distinct values of `label` on the series `selector` matches
        values = sorted({s[label] for s in stack.series(substitute(selector, chosen)) if label in s})
        assert values, f"variable {var['name']} offers nothing: {var['query']['query']}"
        chosen[var["name"]] = values[0]
    for q in queries(dash):
        promql = substitute(q.expr, chosen)
        assert eventually(stack, promql), f"{q.where}: no series with {chosen}: {promql}"


def test_old_vllm_generation_fills_the_same_panels(stack: LiveStack) -> None:
    # vLLM 0.6 pods (llm-legacy) only have the V0 names: the KV-cache and inter-token panels must show them
    legacy = [q for q in queries(ALL_DASHBOARDS["llm-serving"])
              if "vllm:gpu_cache_usage_perc" in q.expr or "vllm:time_per_output_token_seconds" in q.expr]
    assert legacy
    for q in legacy:
        result = eventually(stack, substitute(q.expr, {"namespace": "llm-legacy"}))
        assert finite(result), f"{q.where}: nothing for a V0 server"


def test_a_server_exposing_both_kv_names_is_counted_once(stack: LiveStack) -> None:
    # vLLM 0.10 exports kv_cache_usage_perc and the deprecated gpu_cache_usage_perc: one series per pod, with
    # the engines of qwen-0 averaged (0.5, 0.7) and qwen-1 as is
    [panel] = [p for p in ALL_DASHBOARDS["llm-serving"]["panels"] if p["title"] == "KV cache usage"]
    result = stack.query(substitute(panel["targets"][0]["expr"], {"namespace": "llm"}))
    by_pod = {r["metric"]["pod"]: round(float(r["value"][1]), 4) for r in result}
    assert by_pod == {"qwen-0": 0.6, "qwen-1": 0.9}


def adapter_answer(stack: LiveStack, metric: str) -> str:
    url = (f"http://127.0.0.1:{stack.adapter_port}/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/"
           f"{metric}?labelSelector=app%3Dqwen")
    with urllib.request.urlopen(url, timeout=5) as r:
        [item] = json.load(r)["items"]
    return item["value"]


def test_what_the_hpa_reads_is_what_the_adapter_answered(stack: LiveStack) -> None:
    # the "what the HPA reads" panels show the adapter's record of its latest answers, not a recomputation:
    # qwen-0 waits 3 + 1 (two engines), qwen-1 5, and qwen-9 is dead: an expected pod that did not answer,
    # so the sum over the two that did (9) is scaled to the three expected, 13.5 (adapter/README.md, "Pods
    # that do not answer"); KV is a mean, unscaled: (0.5+0.7)/2 and 0.9 -> 0.75
    panels = {p["title"]: p for p in ALL_DASHBOARDS["autoscaling-placement"]["panels"]}
    # two replicas export a last answer; the one asked only at start (live_stack.py) holds an older 11
    raw = stack.query('toposcale_adapter_served_value{metric="vllm_requests_waiting"}')
    assert sorted(float(r["value"][1]) for r in raw) == [11.0, 13.5]
    for title, metric, answer, want in [
        ("vllm_requests_waiting vs the HPA's threshold", "vllm_requests_waiting", "13500m", 13.5),
        ("vllm_kv_cache_usage vs the HPA's threshold", "vllm_kv_cache_usage", "750m", 0.75),
    ]:
        assert adapter_answer(stack, metric) == answer
        result = stack.query(substitute(panels[title]["targets"][0]["expr"], {"namespace": "llm"}))
        assert [(r["metric"], float(r["value"][1])) for r in result] == [({"namespace": "llm"}, want)]
    # the metric's namespace survived the scrape (honorLabels), not the adapter's own "toposcale"
    assert stack.query(substitute(panels["vllm_kv_cache_usage vs the HPA's threshold"]["targets"][0]["expr"],
                                  {"namespace": "toposcale"})) == []
    ages = stack.query(substitute(panels["Age of the values served"]["targets"][0]["expr"]))
    assert {r["metric"]["metric"] for r in ages} == {"vllm_requests_waiting", "vllm_kv_cache_usage",
                                                     "vllm_desired_replicas"}
    assert all(0 <= float(r["value"][1]) < 60 for r in ages), ages
    # two of the three expected pods answered (qwen-9 is dead); the lowest share over the replicas is drawn
    shares = stack.query(substitute(panels["Targets answered / expected"]["targets"][0]["expr"]))
    by_metric = {(r["metric"]["metric"], r["metric"]["namespace"]): float(r["value"][1]) for r in shares}
    assert by_metric[("vllm_requests_waiting", "llm")] == pytest.approx(2 / 3), shares


def test_hpa_thresholds_are_the_example_hpas_targets(stack: LiveStack) -> None:
    # kube-state-metrics (fixture: the deploy/examples/qwen HPA) exports the queue target as AverageValue 4,
    # drawn times the current replicas (2), and the KV-cache target 750m as the float 0.75, drawn as is
    panels = {p["title"]: p for p in ALL_DASHBOARDS["autoscaling-placement"]["panels"]}
    for title, want in [("vllm_requests_waiting vs the HPA's threshold", 8.0),
                        ("vllm_kv_cache_usage vs the HPA's threshold", 0.75)]:
        [threshold] = [t for t in panels[title]["targets"] if "spec_target_metric" in t["expr"]]
        assert threshold["legendFormat"].startswith("scale-out above")
        result = stack.query(substitute(threshold["expr"], {"namespace": "llm"}))
        assert [(r["metric"], float(r["value"][1])) for r in result] == [({"namespace": "llm"}, want)], title
        # an HPA in another namespace draws no line here
        assert stack.query(substitute(threshold["expr"], {"namespace": "llm-legacy"})) == []


def test_agent_panels_group_by_node(stack: LiveStack) -> None:
    [gpus] = [p for p in ALL_DASHBOARDS["autoscaling-placement"]["panels"]
              if p["title"] == "Node agents: GPUs seen"]
    result = eventually(stack, substitute(gpus["targets"][0]["expr"], {"node": "gpu-node-a"}))
    # the agent read the HGX H100 topology (8 GPUs); `node` is the label the PodMonitor's relabeling adds
    assert [(r["metric"], float(r["value"][1])) for r in result] == [({"node": "gpu-node-a"}, 8.0)]


def test_the_check_catches_a_misspelled_metric_or_label(stack: LiveStack) -> None:
    # guards the tests above against a Prometheus that answers anything
    assert stack.query(substitute("sum(vllm:num_request_waiting{namespace=~\"$namespace\"})")) == []
    assert stack.query('DCGM_FI_DEV_GPU_UTIL{hostname="gpu-node-a"}') == []
    assert stack.query('DCGM_FI_DEV_GPU_UTIL{Hostname="gpu-node-a"}')


def test_traffic_reached_the_services(stack: LiveStack) -> None:
    assert stack.traffic_errors == []


def test_room_for_the_next_replica_counts_gpus_no_pod_holds(stack: LiveStack) -> None:
    # gpu-node-a: 8 GPUs, qwen-0 holds 0-3 -> 4 free: one node fits a 4-GPU replica, none an 8-GPU one
    dash = ALL_DASHBOARDS["gpu-fleet"]
    free = next(p for p in dash["panels"] if p["title"] == "Free GPUs per node")
    fits = next(p for p in dash["panels"] if p["title"] == "Nodes with $replica_gpus free GPUs")
    result = stack.query(substitute(free["targets"][0]["expr"]))
    assert {r["metric"]["Hostname"]: float(r["value"][1]) for r in result} == {"gpu-node-a": 4.0}
    def nodes_that_fit(k: str) -> float:
        return float(stack.query(substitute(fits["targets"][0]["expr"], {"replica_gpus": k}))[0]["value"][1])

    assert nodes_that_fit("4") == 1.0
    assert nodes_that_fit("8") == 0.0
