"""The HPA shipped in deploy/examples/qwen/hpa.yaml, as written there: External vllm_requests_waiting
AverageValue 4 and vllm_kv_cache_usage Value 750m (average over the pods), scale-up without a window
(Pods 2 or Percent 100 per 60 s, selectPolicy Max), scale-down after a 600 s window, one pod per 300 s
(selectPolicy Min).
The adapter in scrape mode reads the pods at the HPA's sync (no Prometheus delay)."""

from __future__ import annotations

from toposcale.autoscale.cluster import ClusterView
from toposcale.demo.hpa import ExternalMetric, HPASpec, MetricError, Policy, Rules

from .base import HPAPolicy, PolicyContext, Readings, milli

SCALE_UP = Rules(0, (Policy("Pods", 2, 60), Policy("Percent", 100, 60)), "Max")
SCALE_DOWN = Rules(600, (Policy("Pods", 1, 300),), "Min")


def make(ctx: PolicyContext) -> HPAPolicy:
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(
            ExternalMetric("vllm_requests_waiting", "app=vllm", "AverageValue", "4"),
            ExternalMetric("vllm_kv_cache_usage", "app=vllm", "Value", "750m"),
        ),
        scale_up=SCALE_UP,
        scale_down=SCALE_DOWN,
    )

    def read(t: float, view: ClusterView) -> Readings:
        snap = view.latest(t, prometheus=False)
        if snap is None or snap.ready == 0:
            raise MetricError("no pod to scrape for app=vllm")
        return {
            "vllm_requests_waiting": [milli(sum(snap.waiting))],
            "vllm_kv_cache_usage": [milli(sum(snap.kv) / len(snap.kv))],
        }

    return HPAPolicy("toposcale-example", spec, read)
