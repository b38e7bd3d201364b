"""toposcale's own scaling signal, `vllm_desired_replicas`: how many replicas the demand needs (pure).

Used by the adapter (the `desired_replicas` rule kind, per selector) and by the autoscaling benchmark
(`toposcale simulate autoscale`, policy `toposcale`), so what is benchmarked is what is served.

The algorithm, each observation (every HPA sync, 15 s):
1. Demand in replica-equivalents, from tokens, not percent: a replica's busy share is
   prompt_rate / prompt_capacity + generation_rate / generation_capacity (prefill and decode time-share one
   engine). Prefill-heavy traffic that leaves the KV cache low still counts (llm-d-autoscaling #662).
2. Capacity per replica at the SLO: the profile's figures (the prior) times a factor `kappa` learned online
   from the replicas' own histograms: when TTFT or TPOT p90 (p99 where given) missed its target while the
   replicas were less busy than the prior says they can be, kappa is divided by how far it missed (at most
   halved per observation): a queueing limit, such as long prompts blocking the ones behind them, is found in
   a few syncs. While targets are met it recovers slowly toward the prior (RECOVER_RATE), and above it only
   when targets were met at a higher load than the prior calls full. Capacity is judged only in a steady
   state (STEADY_S with no replica starting and the ready count unchanged): a miss while replicas start is
   the cold start's, not a capacity the replicas lack. No offline benchmark beyond the prior.
3. Headroom for the cold start: Holt's linear trend (double exponential smoothing) on the demand, projected
   over the cold-start horizon; scale-up uses the larger of now and the projection.
4. Backlog: waiting requests x mean prompt tokens, as prefill work that must be done within the horizon a
   new replica needs (cold start + the TTFT target), so a queue of 12k-token prompts weighs what it costs.
5. desired = ceil((demand + backlog) / TARGET_UTILISATION); scale-down only when the desired count has
   stayed lower for `scale_down_window_s` (hysteresis: the output is the window's maximum), and not while
   TTFT or TPOT p90 is above half its target (SCALE_DOWN_MARGIN; at most two windows in a row).
6. Zero replicas: no pod to read; the demand comes from `front_door_pending` (the gateway's or router's
   pending requests) or, without one, `decide` raises DesiredError (the HPA holds), never answers 0.

The HPA that uses it (benchmarked): `type: External`, metric `vllm_desired_replicas`, `target.type:
AverageValue`, `averageValue: "1"` (the HPA then proposes exactly the metric's value:
ceil(value / 1)), behavior scaleUp: stabilizationWindowSeconds 0, policies Percent 100 / Pods 4 per 15 s
(the autoscaling/v2 default), scaleDown: stabilizationWindowSeconds 0 (the hysteresis is in the metric).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toposcale.serving.profile import Profile

# The tuning constants, few and named; each says why. None is fitted to a trace.
TARGET_UTILISATION = 0.8  # busy share a replica is run at: queueing delay stays a fraction of a step
HOLT_ALPHA = 0.5  # level smoothing per 15 s observation: half-life of about one sync
HOLT_BETA = 0.2  # trend smoothing: a trend must persist ~5 syncs (75 s) to count fully
LEARN_RATE = 0.1  # kappa moves this share of the way toward what an observation shows
# (No upward probing on latency margins: latency is a cliff, flat until saturation, so a comfortable p90
# says nothing about how far the cliff is; probing on it overloaded replicas in the benchmark.)
KAPPA_BOUNDS = (0.05, 2.0)  # the learned correction stays within these (20x below the prior at most)
MAX_CUT = 2.0  # one observation at most halves the learned capacity
RECOVER_RATE = 0.005  # per observation met, kappa regains this share of the way back to the prior (half-life
# about 35 minutes at a 15 s sync: a queueing limit found by a cut is a property of the traffic mix, and a
# faster recovery (0.02, 9 minutes) gave it back within one scale-down window, so the count oscillated:
# cut, scale up, recover, scale down, miss, cut again)
STEADY_S = 60.0  # capacity is judged only after this long with no replica starting and the ready count
# unchanged: the latency histograms' window (the rule's 60 s), so a miss caused by a cold start (a burst
# served by too few replicas while more start) is not taken for a capacity the replicas lack
DECODE_STEP_SHARE = 0.5  # the share of the TPOT target a pure decode step may take at the capacity batch
# (the rest is left to the prefill chunks vLLM mixes into the same steps)
REF_CONTEXT = 2048  # context (tokens) at which the prior's capacity is read when none is observed
SCALE_DOWN_MARGIN = 0.5  # no scale-down while a p90 is above this share of its target: taking one replica
# of n away raises each survivor's load by n/(n-1), and latency is a cliff (see above): a p90 already past
# half its target leaves no room to find out. Mooncake on the H100 (long prompts: the count that meets the
# target is far above what the token rates say) scaled down 15 times an hour without it, 10 of them undone
# within 5 minutes (seed 1; with it 11 and 7); seeds 1-3: 91.3 % -> 93.6 % of requests in SLO. Traffic
# whose p90 stays low is not affected.
SCALE_DOWN_HOLD_WINDOWS = 2  # ... for at most this many scale-down windows in a row: a p90 that stays above
# half its target whatever the count (prompts too long for the target even alone) must not pin the count


class DesiredError(Exception):
    """No honest answer: an input is missing or stale (the adapter answers an error; the HPA holds)."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one replica sustains at the SLO: prefill tokens/s if it only prefilled, generated tokens/s if it
    only decoded. Its busy share is prompt_rate / prompt_tokens_s + generation_rate / generation_tokens_s."""

    prompt_tokens_s: float
    generation_tokens_s: float
    # Extra prefill seconds per prompt token per token of context before it (attention over the cached part
    # of the prompt): a 12k-token prompt costs more per token than a 1k one. 0: prompt_tokens_s is flat.
    prompt_context_s: float = 0.0
    # The mean prompt length prompt_tokens_s was measured at when prompt_context_s is 0 (informational).
    ref_prompt_tokens: float = 0.0

    def __post_init__(self) -> None:
        if not (self.prompt_tokens_s > 0 and self.generation_tokens_s > 0):
            raise ValueError("capacity must be positive")
        if self.prompt_context_s < 0:
            raise ValueError("prompt_context_s must be >= 0")

    def prompt_capacity(self, mean_prompt_tokens: float | None) -> float:
        """Prefill tokens/s at this mean prompt length: a token of a prompt of L tokens attends to L/2
        earlier ones on average."""
        if not self.prompt_context_s or not mean_prompt_tokens:
            return self.prompt_tokens_s
        return 1.0 / (1.0 / self.prompt_tokens_s + self.prompt_context_s * mean_prompt_tokens / 2)

    def busy(self, prompt_rate: float, generation_rate: float, mean_prompt_tokens: float | None) -> float:
        """Replica-equivalents (busy share) of this load."""
        return (
            prompt_rate / self.prompt_capacity(mean_prompt_tokens)
            + generation_rate / self.generation_tokens_s
        )

    @classmethod
    def from_profile(cls, profile: Profile, tpot_slo_s: float, context: float = REF_CONTEXT) -> Capacity:
        """The prior from a serving profile: prefill at the full chunk budget (tokens per second of a
        budget-sized chunk after `context` cached tokens); decode at the largest batch whose step stays within
        DECODE_STEP_SHARE of the TPOT target (and within max_num_seqs and the KV cache)."""
        budget = profile.max_num_batched_tokens
        flat = profile.chunk_time(budget, 0)
        prior = profile.chunk_prior[-1] or context
        slope = max(0.0, (profile.chunk_time(budget, prior) - flat) / budget / prior)
        limit = tpot_slo_s * DECODE_STEP_SHARE
        best = 1.0 / profile.decode_time(1, context)
        kv_batch = max(1, int(profile.kv_capacity_tokens // max(context, 1)))
        b = 1
        while b <= min(profile.max_num_seqs, kv_batch):
            t = profile.decode_time(b, context)
            if t > limit:
                break
            best = max(best, b / t)
            b += 1 if b < 16 else max(1, b // 8)
        return cls(budget / flat, best, slope)


@dataclass(frozen=True, slots=True)
class DesiredConfig:
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    cold_start_s: float = 90.0  # Pending -> Ready of a new replica: the forecast horizon
    scale_down_window_s: float = 300.0  # how long the desired count must stay lower before it falls
    prior: Capacity = field(default_factory=lambda: Capacity(30_000.0, 5_000.0))
    min_replicas: int = 0
    max_replicas: int | None = None
    target_utilisation: float = TARGET_UTILISATION
    learn: bool = True  # learn kappa from the histograms (off: the prior alone)

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "tpot_slo_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.cold_start_s < 0 or self.scale_down_window_s < 0:
            raise ValueError("cold_start_s and scale_down_window_s must be >= 0")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("target_utilisation must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class Observation:
    """What the adapter read for one selector, summed over its ready replicas (rates per second, over the
    rule's window). `ttft_p90_s`/`tpot_p90_s` None: no request finished in the window (nothing to learn)."""

    t: float
    ready_replicas: int
    starting_replicas: int = 0  # created, not yet ready (Pending or loading)
    prompt_tokens_rate: float = 0.0  # rate(vllm:prompt_tokens_total)
    generation_tokens_rate: float = 0.0  # rate(vllm:generation_tokens_total)
    waiting_requests: float = 0.0  # vllm:num_requests_waiting, summed
    mean_prompt_tokens: float | None = None  # prompt tokens per request (counters' ratio); None: unknown
    running_requests: float = 0.0
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    # Optional, better when given: the quantile the SLO is held at (99 % of requests: p99). The capacity is
    # judged on these when present, else on the p90s (a p90 within target still lets a tenth miss).
    ttft_p99_s: float | None = None
    tpot_p99_s: float | None = None
    front_door_pending: float | None = None  # requests held before any replica (gateway/router queue)
    placeable_replicas: int | None = None  # issue 29: how many more replicas can be placed now


@dataclass(slots=True)
class DesiredState:
    """Memory between observations: Holt's level and trend, the learned capacity factor, recent outputs."""

    level: float | None = None
    trend: float = 0.0
    last_t: float | None = None
    kappa: float = 1.0
    backlog_tokens: float | None = None  # waiting prompt tokens at the last observation (for its growth)
    history: deque[tuple[float, int]] = field(default_factory=deque)  # (t, raw desired) for hysteresis
    unsteady_t: float = -math.inf  # the last observation with a replica starting or the ready count changed
    last_ready: int | None = None
    held_since: float | None = None  # since when a scale-down has been held back by the latency margin


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    demand: float  # replica-equivalents now
    capacity_prompt_tokens_s: float  # per replica at the SLO, learned
    capacity_generation_tokens_s: float
    kappa: float
    forecast: float  # replica-equivalents at the end of the cold-start horizon
    headroom: float  # forecast - demand, >= 0
    backlog: float  # replica-equivalents the waiting prompts need
    raw: int  # before the scale-down hysteresis
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "replicas": self.replicas,
            "demand": round(self.demand, 4),
            "capacity_prompt_tokens_per_s": round(self.capacity_prompt_tokens_s, 1),
            "capacity_generation_tokens_per_s": round(self.capacity_generation_tokens_s, 1),
            "kappa": round(self.kappa, 4),
            "forecast": round(self.forecast, 4),
            "headroom": round(self.headroom, 4),
            "backlog": round(self.backlog, 4),
            "raw": self.raw,
            "reasons": list(self.reasons),
        }


def _finite(name: str, v: float | None) -> None:
    if v is not None and (not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
        raise DesiredError(f"{name} is {v!r}: expected a finite number >= 0")


def decide(cfg: DesiredConfig, state: DesiredState, obs: Observation) -> Decision:
    """One observation in, the desired replica count and its reasons out; `state` is updated."""
    for name in (
        "prompt_tokens_rate",
        "generation_tokens_rate",
        "waiting_requests",
        "running_requests",
        "mean_prompt_tokens",
        "ttft_p90_s",
        "tpot_p90_s",
        "ttft_p99_s",
        "tpot_p99_s",
        "front_door_pending",
    ):
        _finite(name, getattr(obs, name))
    if obs.ready_replicas < 0 or obs.starting_replicas < 0:
        raise DesiredError("replica counts must be >= 0")
    if state.last_t is not None and obs.t < state.last_t:
        raise DesiredError(f"observation at {obs.t} is older than the last one ({state.last_t})")
    reasons: list[str] = []
    pcap = cfg.prior.prompt_capacity(obs.mean_prompt_tokens) * state.kappa
    gcap = cfg.prior.generation_tokens_s * state.kappa

    if obs.ready_replicas == 0:
        if obs.front_door_pending is None:
            raise DesiredError(
                "no ready replica to read demand from and no front-door series configured: cannot tell 0 "
                "from unknown"
            )
        # With nothing serving, the pending requests are all the demand there is; each needs its prompt
        # prefilled within the horizon a new replica takes to come up.
        per_req = obs.mean_prompt_tokens if obs.mean_prompt_tokens else 1.0
        demand = 0.0
        backlog = obs.front_door_pending * per_req / (pcap * (cfg.cold_start_s + cfg.ttft_slo_s))
        if obs.front_door_pending > 0:
            backlog = max(backlog, 1e-9)
        reasons.append(f"0 ready replicas: front door holds {obs.front_door_pending:g} requests")
    else:
        demand = obs.prompt_tokens_rate / pcap + obs.generation_tokens_rate / gcap
        waiting_tokens = obs.waiting_requests * (obs.mean_prompt_tokens or 0.0) + (
            obs.front_door_pending or 0
        ) * (obs.mean_prompt_tokens or 0.0)
        # Served token rates cannot exceed what the replicas serve: under overload the arrivals are the
        # served rate plus the queue's growth, so a growing queue is demand now, not only backlog.
        if state.backlog_tokens is not None and state.last_t is not None and obs.t > state.last_t:
            growth = max(0.0, waiting_tokens - state.backlog_tokens) / (obs.t - state.last_t)
            if growth > 0:
                demand += growth / pcap
                reasons.append(f"queue growing by {growth:.0f} prompt tokens/s")
        state.backlog_tokens = waiting_tokens
        if obs.waiting_requests > 0 and obs.mean_prompt_tokens is None:
            raise DesiredError("requests are waiting but their mean prompt length is unknown")
        backlog = waiting_tokens / (pcap * (cfg.cold_start_s + cfg.ttft_slo_s))
        reasons.append(
            f"demand {demand:.2f} replicas: prompt {obs.prompt_tokens_rate:.0f} tok/s / {pcap:.0f} + "
            f"generation {obs.generation_tokens_rate:.0f} tok/s / {gcap:.0f} per replica"
        )
        # (a first observation is no change: an adapter that just started has seen no replica come or go,
        # and waiting STEADY_S for one delayed the first capacity cut by a minute at a cold burst)
        changed = state.last_ready is not None and obs.ready_replicas != state.last_ready
        if obs.starting_replicas > 0 or changed:
            state.unsteady_t = obs.t
        state.last_ready = obs.ready_replicas
        if cfg.learn and obs.t - state.unsteady_t >= STEADY_S:
            _learn(cfg, state, obs, demand, reasons)

    # Holt's linear trend on the demand, per second of observation time.
    if state.level is None or state.last_t is None:
        state.level, state.trend = demand, 0.0
    else:
        dt = max(obs.t - state.last_t, 1e-9)
        prev = state.level
        state.level = HOLT_ALPHA * demand + (1 - HOLT_ALPHA) * (state.level + state.trend * dt)
        state.trend = HOLT_BETA * (state.level - prev) / dt + (1 - HOLT_BETA) * state.trend
    state.last_t = obs.t
    horizon = cfg.cold_start_s
    forecast = max(0.0, state.level + state.trend * horizon)
    ahead = max(demand, forecast)
    headroom = ahead - demand
    if headroom > 0:
        reasons.append(f"trend {state.trend * 60:+.3f}/min: {forecast:.2f} in {horizon:g} s")
    if backlog > 0:
        reasons.append(f"backlog {backlog:.2f} replicas of waiting prompts")
    raw = math.ceil((ahead + backlog) / cfg.target_utilisation - 1e-9)
    work = obs.running_requests + obs.waiting_requests + (obs.front_door_pending or 0) + demand
    if work > 0:
        raw = max(raw, 1)  # someone is being served or waits: never 0 while there is work
    # (idle ready replicas are no work: a 0 for a whole scale-down window lets an HPA with minReplicas 0
    # scale to zero)
    # Hysteresis: the largest raw count of the window; scale-down only once it has stayed lower that long.
    cut = obs.t - cfg.scale_down_window_s
    while state.history and state.history[0][0] <= cut:
        state.history.popleft()
    state.history.append((obs.t, raw))
    desired = max(r for _, r in state.history)
    if desired > raw:
        reasons.append(
            f"holding {desired} (raw {raw}) for the {cfg.scale_down_window_s:g} s scale-down window"
        )
    desired = _latency_margin(cfg, state, obs, desired, reasons)
    lo, hi = cfg.min_replicas, cfg.max_replicas
    if obs.placeable_replicas is not None:
        room = obs.ready_replicas + obs.starting_replicas + max(obs.placeable_replicas, 0)
        if desired > room:
            reasons.append(f"capped at {room}: only {obs.placeable_replicas} more replicas can be placed")
            desired = max(room, obs.ready_replicas + obs.starting_replicas)
    desired = max(desired, lo)
    if hi is not None:
        desired = min(desired, hi)
    reasons.append(f"desired {desired}")
    return Decision(
        replicas=desired,
        demand=demand,
        capacity_prompt_tokens_s=pcap,
        capacity_generation_tokens_s=gcap,
        kappa=state.kappa,
        forecast=forecast,
        headroom=headroom,
        backlog=backlog,
        raw=raw,
        reasons=tuple(reasons),
    )


def _latency_margin(
    cfg: DesiredConfig, state: DesiredState, obs: Observation, desired: int, reasons: list[str]
) -> int:
    """No scale-down while TTFT or TPOT p90 is above SCALE_DOWN_MARGIN of its target, for at most
    SCALE_DOWN_HOLD_WINDOWS scale-down windows in a row."""
    there = obs.ready_replicas + obs.starting_replicas
    p90s = (("TTFT", obs.ttft_p90_s, cfg.ttft_slo_s), ("TPOT", obs.tpot_p90_s, cfg.tpot_slo_s))
    near = [
        f"{name} p90 {v:.3g} s > {SCALE_DOWN_MARGIN:g} x target {slo:g} s"
        for name, v, slo in p90s
        if v is not None and v > SCALE_DOWN_MARGIN * slo
    ]
    if obs.ready_replicas == 0 or desired >= there or not near:
        state.held_since = None
        return desired
    if state.held_since is None:
        state.held_since = obs.t
    if obs.t - state.held_since >= SCALE_DOWN_HOLD_WINDOWS * cfg.scale_down_window_s:
        reasons.append(f"latency margin hold expired ({'; '.join(near)})")
        return desired
    reasons.append(f"no scale-down below {there}: {'; '.join(near)}")
    return there


def _learn(
    cfg: DesiredConfig, state: DesiredState, obs: Observation, demand: float, reasons: list[str]
) -> None:
    """Move kappa toward what the replicas showed: a missed target at a busy share below what the prior
    allows means they can do less; targets met at a higher share mean they can do more."""
    ttft = obs.ttft_p99_s if obs.ttft_p99_s is not None else obs.ttft_p90_s
    tpot = obs.tpot_p99_s if obs.tpot_p99_s is not None else obs.tpot_p90_s
    if ttft is None and tpot is None:
        return
    per_replica = demand / obs.ready_replicas  # busy share by the current (learned) capacity
    missed = (ttft is not None and ttft > cfg.ttft_slo_s) or (tpot is not None and tpot > cfg.tpot_slo_s)
    lo, hi = KAPPA_BOUNDS
    old = state.kappa
    if missed and per_replica < cfg.target_utilisation:
        # They queued at a share the prior calls safe: what they sustain at the SLO is lower. How much lower,
        # the miss says: a p90 k times the target cuts the capacity by up to k (at most halving it per
        # observation), so a queueing limit (long prompts blocking the ones behind them) is found in a few
        # syncs, not minutes.
        over = max((ttft or 0.0) / cfg.ttft_slo_s, (tpot or 0.0) / cfg.tpot_slo_s, 1.0)
        state.kappa = max(lo, old / min(over, MAX_CUT))
    elif not missed and per_replica > 1.0:
        # Targets met beyond what the prior calls full: capacity is at least that.
        target = old * per_replica
        state.kappa = min(hi, old + LEARN_RATE * (target - old))
    elif not missed and old < 1.0:
        # Targets met: a cut made for a burst or a passing mix of long prompts wears off, back toward the
        # prior (never above it on this evidence), so one bad minute does not over-provision for the hour.
        state.kappa = min(1.0, old + RECOVER_RATE * (1.0 - old))
    if state.kappa != old:
        reasons.append(
            f"capacity factor {old:.3f} -> {state.kappa:.3f} ({'missed' if missed else 'met'} "
            f"targets at {per_replica:.2f} busy per replica)"
        )
