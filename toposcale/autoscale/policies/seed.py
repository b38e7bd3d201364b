"""The seed article's recipes: KEDA on DCGM GPU utilisation (threshold 70), and an HPA on GPU memory used.

GPU utilisation: a KEDA ScaledObject with a Prometheus trigger on DCGM_FI_DEV_GPU_UTIL, threshold 70 ("set the
target value in the trigger to the GPU utilization percentage at which KEDA should add a pod (e.g., 70)"; the
recipe as summarised at https://mcp.waymark.network/r/d48f2a69-db83-48c6-b675-1b87d5ae77bf and
https://mcp.waymark.network/r/875dfc49-82d4-4a79-bd01-815ae4c930c5). KEDA makes an HPA with an AverageValue
target (its `metricType` default), which divides the query's value by the replica count; for the recipe's
intent (70 % per replica) the query must be the sum over replicas: `sum(avg by (pod) (DCGM_FI_DEV_GPU_UTIL))`
(an `avg(...)` query with AverageValue 70 could never ask for more than 2 replicas). Behaviour: KEDA
sets none, so the autoscaling/v2 defaults. Read through Prometheus (15 s scrape, the last sample).

GPU memory: the article's "scale on GPU memory usage" as an HPA on the adapter's `gpu_memory_used_ratio`
(DCGM FB_USED / (FB_USED + FB_FREE)), averaged, Value target 80 % (the keda-gpu-scaler `vllm-inference`
profile's memory target, https://keda-gpu-scaler.readthedocs.io/en/latest/configuration/). vLLM
allocates `gpu_memory_utilization` (0.9) of each GPU at start whatever the load (shared/contracts.md: "GPU
memory used does not follow load"), so the ratio sits at about 0.92 (plus the CUDA context) from the first
second: the HPA sees 115 % of target on every sync and scales to maxReplicas, where it stays.
"""

from __future__ import annotations

from toposcale.autoscale.cluster import ClusterView
from toposcale.demo.hpa import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, ExternalMetric, HPASpec, MetricError

from .base import HPAPolicy, PolicyContext, Readings, milli

VLLM_MEMORY_RATIO = 0.92  # gpu_memory_utilization 0.9 + the CUDA context and NCCL buffers outside it


def gpu_util(ctx: PolicyContext) -> HPAPolicy:
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(ExternalMetric("s0-prometheus", "", "AverageValue", "70"),),
        scale_up=DEFAULT_SCALE_UP,
        scale_down=DEFAULT_SCALE_DOWN,
    )

    def read(t: float, view: ClusterView) -> Readings:
        snap = view.latest(t, prometheus=True)
        # KEDA's Prometheus scaler: an empty result reads as 0 (ignoreNullValues defaults to true)
        value = sum(snap.util) if snap is not None else 0.0
        return {"s0-prometheus": [milli(value)]}

    return HPAPolicy("seed-gpu-util", spec, read)


def gpu_memory(ctx: PolicyContext) -> HPAPolicy:
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(ExternalMetric("gpu_memory_used_ratio", "app=vllm", "Value", "800m"),),
    )

    def read(t: float, view: ClusterView) -> Readings:
        snap = view.latest(t, prometheus=True)
        if snap is None or snap.ready == 0:
            raise MetricError("no GPU memory series for the selector")
        return {"gpu_memory_used_ratio": [milli(VLLM_MEMORY_RATIO)]}

    return HPAPolicy("seed-gpu-memory", spec, read)
