"""llm-d's two KEDA paths.

Saturation (llm-d-inference-scheduler `pkg/epp/framework/plugins/flowcontrol/saturationdetector/utilization/
README.md`): per endpoint max(queue / 5, kv_cache_usage / 0.8), pool saturation = the unweighted mean; KEDA
scales on it. Read here as a KEDA Prometheus trigger with `metricType: Value`, threshold 1 (the pool is
saturated): the HPA asks ceil(ready x saturation) outside its 10 % tolerance.

SLO (llm-d.ai docs, "slo-aware-keda"): s = max(p90 TTFT / TTFT target, p90 TPOT / TPOT target), NaN -> 0,
clamped at 2.0, `avg_over_time[45s]` of a recording rule evaluated every 15 s; KEDA `metricType: Value`,
threshold 1: the HPA asks ceil(ready x s). Histogram quantiles over a 1 m rate window.

Both: KEDA sets no behaviour, so the autoscaling/v2 defaults; Prometheus with a 15 s scrape.
(Summaries of both sources: shared/contracts.md, "llm-d, saturation path" and "llm-d, SLO path".)
"""

from __future__ import annotations

from toposcale.autoscale.cluster import ClusterView
from toposcale.demo.hpa import ExternalMetric, HPASpec

from .base import HPAPolicy, PolicyContext, Readings, milli

QUEUE_THRESHOLD = 5.0
KV_THRESHOLD = 0.8
SLO_CLAMP = 2.0
SLO_AVG_S = 45.0


def saturation(ctx: PolicyContext) -> HPAPolicy:
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(ExternalMetric("s0-prometheus", "", "Value", "1"),),
    )

    def read(t: float, view: ClusterView) -> Readings:
        snap = view.latest(t, prometheus=True)
        if snap is None or not snap.ready:
            return {"s0-prometheus": [0]}  # KEDA: empty result reads as 0
        per = [
            max(q / QUEUE_THRESHOLD, kv / KV_THRESHOLD) for q, kv in zip(snap.waiting, snap.kv, strict=True)
        ]
        return {"s0-prometheus": [milli(sum(per) / len(per))]}

    return HPAPolicy("llm-d-saturation", spec, read)


def slo(ctx: PolicyContext) -> HPAPolicy:
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(ExternalMetric("s0-prometheus", "", "Value", "1"),),
    )

    def read(t: float, view: ClusterView) -> Readings:
        vals = []
        for k in range(3):  # the recording rule at t, t-15, t-30: avg_over_time[45s]
            ttft, tpot = view.latency_p90(t, 60.0, lag_s=7.5 + 15.0 * k)
            if ttft is None or tpot is None:
                vals.append(0.0)  # NaN -> 0
                continue
            vals.append(min(SLO_CLAMP, max(ttft / ctx.ttft_slo_s, tpot / ctx.tpot_slo_s)))
        return {"s0-prometheus": [milli(sum(vals) / len(vals))]}

    return HPAPolicy("llm-d-slo", spec, read)
