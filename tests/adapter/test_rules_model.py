"""Rules validation and the pure aggregation logic (pods, vLLM engines and generations, GPUs, histograms)."""

from __future__ import annotations

import math

import pytest
from toposcale.adapter.errors import SourceUnavailable
from toposcale.adapter.model import PodSamples, Sample, aggregate, bucket_increase, histogram_quantile
from toposcale.adapter.rules import RulesError, load_rules, parse_rules


def test_default_rules_cover_the_issue_metrics() -> None:
    rules = load_rules().by_name()
    assert set(rules) == {"vllm_requests_waiting", "vllm_requests_running", "vllm_kv_cache_usage",
                          "vllm_time_to_first_token_p90", "gpu_utilization", "gpu_memory_used_ratio",
                          "vllm_desired_replicas"}
    assert rules["vllm_desired_replicas"].desired is not None  # algorithm settings checked at load
    assert rules["vllm_kv_cache_usage"].series == ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]
    assert rules["gpu_utilization"].gpu_owner is not None


@pytest.mark.parametrize(("text", "where", "why"), [
    ("rules: []", "rules", "at least 1"),
    ("rules: [{name: a, series: [x], aggregation: avg, bogus: 1}]", "rules.0.bogus", "Extra inputs"),
    ("rules: [{name: Bad, series: [x], aggregation: avg}]", "rules.0.name", "lowercase"),
    ("rules: [{name: a, series: ['not a series'], aggregation: avg}]", "rules.0.series", "metric name"),
    ("rules: [{name: a, series: [x], aggregation: ratio}]", "rules.0", "denominator"),
    ("rules: [{name: a, series: [x], aggregation: histogram_quantile}]", "rules.0", "quantile"),
    ("rules: [{name: a, series: [x], aggregation: sum, prometheus_query: 'sum(x)'}]", "rules.0",
     "{matchers}"),
    ("rules: [{name: a, series: [x], aggregation: sum}, {name: a, series: [y], aggregation: sum}]", "rules",
     "defined twice"),
    ("rules: [{name: a, series: [x], aggregation: sum, max_staleness_seconds: 0}]",
     "rules.0.max_staleness_seconds", "greater than 0"),
    ("rules: [{name: a, series: [x], aggregation: sum, gpu_owner: {exporters: 'a in ('}}]",
     "rules.0.gpu_owner.exporters", "label selector"),
    ("rules: {", "", "not valid YAML"),
])
def test_bad_rules_name_file_field_and_why(text: str, where: str, why: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(text, "my-rules.yaml")
    msg = str(err.value)
    assert msg.startswith("my-rules.yaml")
    assert where in msg and why in msg, msg


def test_missing_rules_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.yaml")


def s(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels, value)


def test_per_pod_average_before_averaging_pods() -> None:
    rule = load_rules().by_name()["vllm_kv_cache_usage"]
    pods = [
        # two engines, both generations exposed: the new name wins, engines averaged -> 0.6
        PodSamples("ml", "a", [s("vllm:kv_cache_usage_perc", 0.5, engine="0"),
                               s("vllm:kv_cache_usage_perc", 0.7, engine="1"),
                               s("vllm:gpu_cache_usage_perc", 0.0, engine="0")]),
        PodSamples("ml", "b", [s("vllm:gpu_cache_usage_perc", 0.2)]),  # V0 only
        PodSamples("ml", "c", []),  # exposes neither: not counted as 0
    ]
    assert aggregate(rule, pods) == pytest.approx(0.4)
    assert aggregate(rule, [PodSamples("ml", "c", [])]) is None


def test_ratio_and_zero_denominator() -> None:
    rule = load_rules().by_name()["gpu_memory_used_ratio"]
    pods = [PodSamples("ml", "a", [s("DCGM_FI_DEV_FB_USED", 30), s("DCGM_FI_DEV_FB_FREE", 70)])]
    assert aggregate(rule, pods) == pytest.approx(0.3)
    with pytest.raises(SourceUnavailable):
        aggregate(rule, [PodSamples("ml", "a", [s("DCGM_FI_DEV_FB_USED", 0), s("DCGM_FI_DEV_FB_FREE", 0)])])


def test_histogram_quantile_like_prometheus() -> None:
    inf = math.inf
    # 100 observations: 90 in (0.25, 0.5], 10 in (2.5, 5]
    buckets = {0.1: 0, 0.25: 0, 0.5: 90, 2.5: 90, 5.0: 100, inf: 100}
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.25 + 0.25 * 50 / 90)
    assert histogram_quantile(0.95, buckets) == pytest.approx(2.5 + 2.5 * 0.5)
    assert histogram_quantile(0.99, {1.0: 0, inf: 10}) == 1.0  # in the +Inf bucket: the last finite bound
    with pytest.raises(SourceUnavailable, match="no observations"):
        histogram_quantile(0.9, {1.0: 0, inf: 0})
    with pytest.raises(SourceUnavailable, match=r"\+Inf"):
        histogram_quantile(0.9, {1.0: 3, 2.0: 4})


def test_bucket_increase_handles_counter_reset() -> None:
    assert bucket_increase({1.0: 5, math.inf: 9}, {1.0: 2, math.inf: 3}) == {1.0: 3, math.inf: 6}
    assert bucket_increase({1.0: 1, math.inf: 1}, {1.0: 2, math.inf: 3}) == {1.0: 1, math.inf: 1}
