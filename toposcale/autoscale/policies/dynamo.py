"""NVIDIA Dynamo planner, throughput mode (docs.nvidia.com/dynamo/latest/design-docs/component-design/
planner-design, "Throughput-Based Scaling"; defaults in components/planner, v1.7; shared/contracts.md): every
`adjustment_interval` (180 s) it reads the last interval's request count, mean ISL and OSL from Prometheus,
predicts the next interval's load and sets replicas = ceil(predicted load / profiled per-replica
capacity at the TTFT/ITL SLO), directly on the deployment (its connector, no HPA).

Predictor implemented: `constant` (the next interval's load is the last interval's). Not implemented: the
ARIMA, Prophet and Kalman predictors, the correction factors, and the 5 s load-based mode.
Capacity: the same profile prior toposcale uses (prefill tokens/s at the chunk budget, decode tokens/s
at the SLO batch), without headroom: Dynamo sizes to the profiled throughput at the SLO.
"""

from __future__ import annotations

import math

from toposcale.autoscale.cluster import ClusterView

from .base import PolicyContext

ADJUSTMENT_INTERVAL_S = 180.0


class DynamoThroughput:
    name = "dynamo-throughput"
    interval_s = ADJUSTMENT_INTERVAL_S

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.current: int | None = None

    def decide(self, t: float, view: ClusterView) -> int:
        snaps = view.snapshots(t, ADJUSTMENT_INTERVAL_S, prometheus=True)
        if len(snaps) < 2:
            return view.spec_replicas
        a, b = snaps[0], snaps[-1]
        span = b.t - a.t
        # The frontend's counters: requests arrived, their mean ISL; OSL from the requests that finished.
        n = b.requests_admitted_total - a.requests_admitted_total
        done = b.requests_finished_total - a.requests_finished_total
        if n <= 0:
            return max(1, self.ctx.min_replicas)
        isl = (b.prompt_tokens_admitted_total - a.prompt_tokens_admitted_total) / n
        osl = (b.output_tokens_finished_total - a.output_tokens_finished_total) / done if done else isl / 5
        rate = n / span  # constant predictor: the next interval's request rate is the last one's
        load = self.ctx.capacity.busy(rate * isl, rate * osl, isl)
        want = max(1, self.ctx.min_replicas, math.ceil(load - 1e-9))
        return min(self.ctx.max_replicas, want)


def throughput(ctx: PolicyContext) -> DynamoThroughput:
    return DynamoThroughput(ctx)
