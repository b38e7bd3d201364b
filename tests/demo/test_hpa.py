"""The HPA rule the demo's autoscaler applies, checked case by case against the controller's code
(kubernetes pkg/controller/podautoscaler: replica_calculator.go, horizontal.go)."""

from __future__ import annotations

import pytest

from toposcale.demo.hpa import (
    DEFAULT_SCALE_UP,
    ExternalMetric,
    HPAController,
    HPASpec,
    MetricError,
    Policy,
    Rules,
    milli_value,
    replicas_for_metric,
)

WAITING = ExternalMetric("vllm_requests_waiting", "app=vllm", "AverageValue", "4")
KV = ExternalMetric("vllm_kv_cache_usage", "app=vllm", "Value", "500m")


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("4", 4000),
        ("500m", 500),
        ("0.5", 500),
        ("1500m", 1500),
        ("2k", 2_000_000),
        ("1Ki", 1_024_000),
        ("1e3", 1_000_000),
        ("0", 0),
        ("1n", 1),
        ("0.0001", 1),
    ],
)
def test_milli_value_rounds_up_like_quantity_millivalue(text: str, milli: int) -> None:
    assert milli_value(text) == milli


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "5 m", "1Z"])
def test_milli_value_rejects_non_quantities(bad: str) -> None:
    with pytest.raises(MetricError):
        milli_value(bad)


def test_average_value_target_is_sum_over_target() -> None:
    # 3 replicas, 20 requests waiting in all, target 4 per replica -> ceil(20/4) = 5
    assert replicas_for_metric(WAITING, [12_000, 8_000], 3, 3, 0.1) == 5


def test_average_value_within_tolerance_keeps_replicas() -> None:
    # usage 12.9 vs 3 x 4 = 12 -> ratio 1.075, inside 10 %
    assert replicas_for_metric(WAITING, [12_900], 3, 3, 0.1) == 3
    assert replicas_for_metric(WAITING, [13_300], 3, 3, 0.1) == 4


def test_value_target_scales_ready_pods_by_ratio() -> None:
    # an average of 0.8 against a 0.5 target with 2 ready pods -> ceil(1.6 * 2) = 4
    assert replicas_for_metric(KV, [800], 3, 2, 0.1) == 4
    assert replicas_for_metric(KV, [530], 3, 2, 0.1) == 3  # within tolerance: current, not ready count


def test_average_value_divides_by_the_status_replica_count_not_the_spec() -> None:
    # horizontal.go computeStatusForExternalMetric passes statusReplicas to GetExternalPerPodMetricReplicas.
    # Spec just raised to 4, 2 pods exist: 8.5 waiting against 2 x 4 is ratio 1.06, inside 10 % -> the status
    # count, 2. Against the spec's 4 it would be 0.53 and propose ceil(8.5 / 4) = 3.
    assert replicas_for_metric(WAITING, [8_500], 4, 2, 0.1, status_replicas=2, pods=2) == 2
    assert replicas_for_metric(WAITING, [8_500], 4, 2, 0.1, status_replicas=4, pods=4) == 3
    # no pods yet (status 0): an infinite ratio, never within tolerance -> ceil(usage / target)
    assert replicas_for_metric(WAITING, [8_500], 1, 0, 0.1, status_replicas=0, pods=0) == 3


def test_value_target_with_pods_present_but_none_ready_proposes_zero_not_an_error() -> None:
    # replica_calculator.go getReadyPodsCount fails only when the selector lists no pod; pods that are all
    # still starting count 0 ready: ceil(ratio x 0) = 0.
    assert replicas_for_metric(KV, [800], 3, 0, 0.1, pods=3) == 0
    with pytest.raises(MetricError, match="no pods returned by selector"):
        replicas_for_metric(KV, [800], 3, 0, 0.1, pods=0)


def test_a_sync_with_every_pod_starting_still_scales_on_the_other_metric() -> None:
    hpa = HPAController(spec(metrics=(WAITING, KV)))
    d = hpa.reconcile(
        0, 2, 0, {"vllm_requests_waiting": [20_000], "vllm_kv_cache_usage": [900]}, status_replicas=2, pods=2
    )
    assert d.proposals["vllm_kv_cache_usage"] == 0  # a proposal, not FailedGetExternalMetric
    assert d.proposals["vllm_requests_waiting"] == 5
    assert d.reason != "FailedGetExternalMetric" and d.desired > 2


def test_value_target_zero_usage_scales_to_zero_proposal() -> None:
    assert replicas_for_metric(KV, [0], 3, 3, 0.1) == 0


def test_empty_list_is_an_error_not_zero() -> None:
    with pytest.raises(MetricError, match="no metrics returned"):
        replicas_for_metric(WAITING, [], 3, 3, 0.1)


def spec(**kw: object) -> HPASpec:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 10, "metrics": (WAITING,)}
    base.update(kw)
    return HPASpec(**base)  # type: ignore[arg-type]


def test_error_keeps_replicas_and_records_no_recommendation() -> None:
    hpa = HPAController(spec())
    d = hpa.reconcile(0, 3, 3, {"vllm_requests_waiting": MetricError("adapter: 503 source down")})
    assert (d.desired, d.reason) == (3, "FailedGetExternalMetric")
    assert "503 source down" in str(d.proposals["vllm_requests_waiting"])
    assert hpa.recommendations == []


def test_one_metric_failing_blocks_scale_down_but_not_scale_up() -> None:
    s = spec(metrics=(WAITING, KV), scale_down=Rules(0, (Policy("Percent", 100, 15),)))
    kv_down = MetricError("503")
    down = HPAController(s).reconcile(0, 4, 4, {"vllm_requests_waiting": [0], "vllm_kv_cache_usage": kv_down})
    assert (down.desired, down.reason) == (4, "FailedGetExternalMetric")
    up = HPAController(s).reconcile(
        0, 4, 4, {"vllm_requests_waiting": [40_000], "vllm_kv_cache_usage": kv_down}
    )
    assert up.desired == 8


def test_highest_proposal_across_metrics_wins() -> None:
    hpa = HPAController(spec(metrics=(WAITING, KV)))
    d = hpa.reconcile(0, 2, 2, {"vllm_requests_waiting": [0], "vllm_kv_cache_usage": [900]})
    assert d.proposals == {"vllm_requests_waiting": 0, "vllm_kv_cache_usage": 4}
    assert d.desired == 4


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    hpa = HPAController(spec(scale_down=Rules(60, (Policy("Percent", 100, 15),))))
    assert hpa.reconcile(0, 1, 1, {"vllm_requests_waiting": [20_000]}).desired == 5
    # load gone: the highest recommendation of the last 60 s (5) holds
    assert hpa.reconcile(15, 5, 5, {"vllm_requests_waiting": [0]}).desired == 5
    assert hpa.reconcile(45, 5, 5, {"vllm_requests_waiting": [0]}).desired == 5
    # the 5 recorded at t=0 leaves the window after 60 s
    d = hpa.reconcile(61, 5, 5, {"vllm_requests_waiting": [0]})
    assert d.desired == 1


def test_scale_up_rate_is_limited_by_policies() -> None:
    hpa = HPAController(spec(max_replicas=50))
    # default scale-up: max(+4 pods, +100 %) per 15 s; from 2 -> at most 6
    d = hpa.reconcile(0, 2, 2, {"vllm_requests_waiting": [200_000]})
    assert (d.desired, d.reason) == (6, "ScaleUpLimit")
    # 10 s later the period still counts the +4: period start 2 -> limit still 6
    d = hpa.reconcile(10, 6, 6, {"vllm_requests_waiting": [200_000]})
    assert d.desired == 6
    # after the 15 s period: 6 -> max(10, 12) = 12
    d = hpa.reconcile(16, 6, 6, {"vllm_requests_waiting": [200_000]})
    assert d.desired == 12


def test_scale_down_rate_policy_pods() -> None:
    s = spec(scale_down=Rules(0, (Policy("Pods", 1, 60),)))
    hpa = HPAController(s)
    assert hpa.reconcile(0, 5, 5, {"vllm_requests_waiting": [0]}).desired == 4
    assert hpa.reconcile(30, 4, 4, {"vllm_requests_waiting": [0]}).desired == 4  # 1 per 60 s used up
    assert hpa.reconcile(61, 4, 4, {"vllm_requests_waiting": [0]}).desired == 3


def test_min_and_max_replicas_bound_the_result() -> None:
    s = spec(min_replicas=2, max_replicas=3, scale_down=Rules(0, (Policy("Percent", 100, 15),)))
    assert HPAController(s).reconcile(0, 3, 3, {"vllm_requests_waiting": [400_000]}).desired == 3
    assert HPAController(s).reconcile(0, 3, 3, {"vllm_requests_waiting": [0]}).desired == 2
    assert HPAController(s).reconcile(0, 5, 5, {"vllm_requests_waiting": [0]}).reason == "TooManyReplicas"
    assert HPAController(s).reconcile(0, 1, 1, {}).desired == 2


def test_scale_up_stabilisation_window_takes_lowest_recent() -> None:
    s = spec(scale_up=Rules(30, DEFAULT_SCALE_UP.policies))
    hpa = HPAController(s)
    assert hpa.reconcile(0, 2, 2, {"vllm_requests_waiting": [8_000]}).desired == 2
    # a spike: lowest recent recommendation (2) holds for 30 s
    assert hpa.reconcile(15, 2, 2, {"vllm_requests_waiting": [40_000]}).desired == 2
    assert hpa.reconcile(31, 2, 2, {"vllm_requests_waiting": [40_000]}).desired == 6


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="minReplicas"):
        HPASpec(min_replicas=0, max_replicas=2, metrics=(WAITING,))
    with pytest.raises(ValueError, match="at least one metric"):
        HPASpec(min_replicas=1, max_replicas=2, metrics=())


@pytest.mark.parametrize("bad", ["1\nx", "1\n2", "\u0661\u0662", "1e\u0663"])
def test_milli_value_matches_the_whole_quantity_in_ascii_digits(bad: str) -> None:
    with pytest.raises(MetricError):
        milli_value(bad)


def test_tolerance_bounds_are_inclusive_as_in_kubernetes_1_37() -> None:
    # replica_calculator.go Tolerances.isWithin: (1 - down) <= ratio <= (1 + up). A ratio of exactly 1.1 (5.5
    # against 5 x 1) is within: keep 5 (abs(1 - 1.1) > 0.1 is True in float64 and would scale to 6).
    one = ExternalMetric("vllm_desired_replicas", "app=vllm", "AverageValue", "1")
    assert replicas_for_metric(one, [5_500], 5, 5, 0.1) == 5
    assert replicas_for_metric(one, [4_500], 5, 5, 0.1) == 5  # 0.9: the lower bound is inclusive too
    assert replicas_for_metric(one, [5_501], 5, 5, 0.1) == 6
    assert replicas_for_metric(KV, [550], 3, 3, 0.1) == 3  # Value targets: getUsageRatioReplicaCount
