"""toposcale: the HPA on `vllm_desired_replicas` (toposcale/autoscale/desired.py), as documented there:
External, AverageValue "1", scale-up without a window (autoscaling/v2 default policies), scale-down window 0
(the hysteresis is in the metric). The adapter reads the pods directly at the sync;
rates over the last 30 s."""

from __future__ import annotations

from toposcale.autoscale.cluster import ClusterView
from toposcale.autoscale.desired import DesiredConfig, DesiredError, DesiredState, Observation, decide
from toposcale.demo.hpa import DEFAULT_SCALE_UP, ExternalMetric, HPASpec, MetricError, Policy, Rules

from .base import HPAPolicy, PolicyContext, Readings, milli

RATE_WINDOW_S = 30.0
SCALE_DOWN = Rules(0, (Policy("Percent", 100, 15),))


def make(ctx: PolicyContext) -> HPAPolicy:
    cfg = DesiredConfig(
        ttft_slo_s=ctx.ttft_slo_s,
        tpot_slo_s=ctx.tpot_slo_s,
        cold_start_s=ctx.cold_start_s,
        prior=ctx.capacity,
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
    )
    state = DesiredState()
    spec = HPASpec(
        min_replicas=max(1, ctx.min_replicas),
        max_replicas=ctx.max_replicas,
        metrics=(ExternalMetric("vllm_desired_replicas", "app=vllm", "AverageValue", "1"),),
        scale_up=DEFAULT_SCALE_UP,
        scale_down=SCALE_DOWN,
    )
    policy = HPAPolicy("toposcale", spec, lambda t, v: {})
    policy.last = None  # type: ignore[attr-defined]

    def read(t: float, view: ClusterView) -> Readings:
        snaps = view.snapshots(t, RATE_WINDOW_S + 1, prometheus=False)
        if len(snaps) < 2:
            raise MetricError("a rate needs two scrapes")
        a, b = snaps[0], snaps[-1]
        span = b.t - a.t
        prompt = (b.prompt_tokens_total - a.prompt_tokens_total) / span if span > 0 else 0.0
        gen = (b.generation_tokens_total - a.generation_tokens_total) / span if span > 0 else 0.0
        adm = b.requests_admitted_total
        mean_prompt = b.prompt_tokens_admitted_total / adm if adm else None
        waiting = sum(b.waiting)
        ttft, tpot = view.latency_p90(t, 60.0)
        obs = Observation(
            t=t,
            ready_replicas=b.ready,
            starting_replicas=b.starting + b.pending,
            prompt_tokens_rate=prompt,
            generation_tokens_rate=gen,
            waiting_requests=float(waiting),
            mean_prompt_tokens=(b.waiting_prompt_tokens / (waiting + b.front_door))
            if waiting + b.front_door
            else mean_prompt,
            running_requests=float(sum(b.running)),
            ttft_p90_s=ttft,
            tpot_p90_s=tpot,
            front_door_pending=float(b.front_door),
        )
        try:
            d = decide(cfg, state, obs)
        except DesiredError as exc:
            raise MetricError(str(exc)) from None
        policy.last = d  # type: ignore[attr-defined]
        return {"vllm_desired_replicas": [milli(d.replicas)]}

    policy.read = read
    return policy
