"""Runs the policies over a trace and reports them (pure apart from the optional progress callback).

The clairvoyant yardstick knows the arrivals: per 60 s window it wants the replicas whose profiled capacity
covers the window's prompt and generation tokens at a utilisation u, and asks for each window's count one
cold start ahead (so its replicas are Ready when the window starts, and hold their GPUs through the cold
start like everyone's). u is the largest value (bisection, 6 runs) whose run still reaches the attainment
target: the yardstick is as lean as the simulator lets a uniform-utilisation schedule be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from toposcale.serving.profile import Profile

from .cluster import ClusterView, SimConfig, Simulation, TimelinePoint
from .desired import TARGET_UTILISATION, Capacity
from .policies import NAMES, make
from .policies.base import PolicyContext
from .traces import Trace, replay

WINDOW_S = 60.0
TARGET_PEAK_REPLICAS = 6.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    cold_start_s: float = 90.0
    grace_s: float = 30.0
    max_replicas: int = 12
    router: str = "least"
    dt: float = 0.5
    target_attainment: float = 0.99


def window_demand(trace: Trace, cap: Capacity, window_s: float = WINDOW_S) -> list[float]:
    """Replica-equivalents each window's arrivals need at full utilisation."""
    n = math.ceil((trace.span_s + 1e-9) / window_s) + 1
    p = [0.0] * n
    g = [0.0] * n
    for t, pr, o in zip(trace.t, trace.prompt, trace.output, strict=True):
        w = int(t // window_s)
        p[w] += pr
        g[w] += o
    return [(p[i] / cap.prompt_tokens_s + g[i] / cap.generation_tokens_s) / window_s for i in range(n)]


def auto_rate_scale(trace: Trace, cap: Capacity) -> float:
    """The rate scale at which the trace's busiest minute needs about 6 replicas (run at the target
    utilisation)."""
    peak = max(window_demand(trace, cap)) / TARGET_UTILISATION
    return TARGET_PEAK_REPLICAS / peak if peak > 0 else 1.0


class Clairvoyant:
    name = "clairvoyant"
    interval_s = 5.0

    def __init__(self, counts: list[int], cold_start_s: float, max_replicas: int) -> None:
        self.counts = counts
        self.cold = cold_start_s
        self.max = max_replicas

    def at(self, t: float) -> int:
        w = min(len(self.counts) - 1, max(0, int(t // WINDOW_S)))
        return self.counts[w]

    def decide(self, t: float, view: ClusterView) -> int:
        return min(self.max, max(self.at(t), self.at(t + self.cold)))


def clairvoyant_counts(demand: list[float], u: float) -> list[int]:
    return [max(1, math.ceil(d / u - 1e-9)) for d in demand]


def attainment(sim: Simulation) -> float:
    n = len(sim.outcomes)
    return sum(1 for o in sim.outcomes if o.ok) / n if n else 1.0


def ceiling(trace: Trace, profile: Profile, cfg: BenchConfig) -> float:
    """Share of the requests that can meet the SLO at all: alone on an idle replica."""
    ok = 0
    for pr, o in zip(trace.prompt, trace.output, strict=True):
        ttft = (
            profile.prefill_time(pr)
            if pr <= profile.max_num_batched_tokens
            else sum(
                profile.chunk_time(min(profile.max_num_batched_tokens, pr - k), k)
                for k in range(0, pr, profile.max_num_batched_tokens)
            )
        )
        tpot = profile.decode_time(1, pr + o / 2)
        ok += ttft <= cfg.ttft_slo_s and tpot <= cfg.tpot_slo_s
    return ok / len(trace) if len(trace) else 1.0


def run_policy(
    name: str, trace: Trace, profile: Profile, cfg: BenchConfig, initial: int, counts: list[int] | None = None
) -> Simulation:
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    ctx = PolicyContext(profile, cap, cfg.ttft_slo_s, cfg.tpot_slo_s, cfg.cold_start_s, 1, cfg.max_replicas)
    policy = (
        Clairvoyant(counts or [1], cfg.cold_start_s, cfg.max_replicas)
        if name == "clairvoyant"
        else make(name, ctx)
    )
    sim_cfg = SimConfig(
        profile=profile,
        cold_start_s=cfg.cold_start_s,
        grace_s=cfg.grace_s,
        max_replicas=cfg.max_replicas,
        initial_replicas=initial,
        dt=cfg.dt,
        router=cfg.router,  # type: ignore[arg-type]
        ttft_slo_s=cfg.ttft_slo_s,
        tpot_slo_s=cfg.tpot_slo_s,
    )
    return Simulation(sim_cfg, trace, policy).run()


def search_clairvoyant(
    trace: Trace, profile: Profile, cfg: BenchConfig, target: float, initial: int
) -> tuple[list[int], Simulation]:
    """The leanest uniform-utilisation schedule reaching `target` (bisection on u over 6 runs)."""
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    demand = window_demand(trace, cap)
    lo, hi = 0.3, 1.2
    best: tuple[list[int], Simulation] | None = None
    for _ in range(6):
        u = (lo + hi) / 2
        counts = clairvoyant_counts(demand, u)
        sim = run_policy("clairvoyant", trace, profile, cfg, initial, counts)
        if attainment(sim) >= target:
            best, lo = (counts, sim), u
        else:
            hi = u
    if best is None:
        counts = clairvoyant_counts(demand, lo)
        best = (counts, run_policy("clairvoyant", trace, profile, cfg, initial, counts))
    return best


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarise(sim: Simulation) -> dict[str, float]:
    ttft = [o.ttft_s for o in sim.outcomes]
    tpot = [o.tpot_s for o in sim.outcomes]
    return {
        "requests": float(len(sim.outcomes)),
        "slo_attainment": attainment(sim),
        "ttft_p50_s": quantile(ttft, 0.5),
        "ttft_p90_s": quantile(ttft, 0.9),
        "ttft_p99_s": quantile(ttft, 0.99),
        "tpot_p90_s": quantile(tpot, 0.9),
        "gpu_hours": sim.gpu_seconds / 3600.0,
        "scale_ups": float(sim.scale_ups),
        "scale_downs": float(sim.scale_downs),
        "peak_pending": float(sim.peak_pending),
        "aborted": float(sim.aborted),
        "pending_replica_minutes": sim.pending_replica_s / 60.0,
    }


@dataclass(frozen=True, slots=True)
class SeedResult:
    seed: int
    ceiling: float
    summaries: dict[str, dict[str, float]]
    timelines: dict[str, list[TimelinePoint]]  # kept only when asked (for --plot)


def initial_replicas(trace: Trace, cap: Capacity, cfg: BenchConfig) -> int:
    """The Deployment starts sized for its first cold-start horizon, as a running service would be (every
    policy, the clairvoyant included, starts from the same count)."""
    first = window_demand(trace, cap)[: 2 + int(cfg.cold_start_s // WINDOW_S)]
    return max(1, math.ceil(max(first) / TARGET_UTILISATION))


def run_seed(
    base: Trace,
    profile: Profile,
    cfg: BenchConfig,
    policies: list[str],
    seed: int,
    scale: float,
    keep_timelines: bool = False,
    progress: Callable[[str], None] = lambda s: None,
) -> SeedResult:
    """Every policy over one seeded replay of the trace."""
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    trace = replay(base, scale, seed)
    initial = initial_replicas(trace, cap, cfg)
    top = ceiling(trace, profile, cfg)
    progress(f"{base.name} seed {seed}: {len(trace)} requests (x{scale:.2f}), clairvoyant search")
    _counts, csim = search_clairvoyant(trace, profile, cfg, cfg.target_attainment * top, initial)
    cv = summarise(csim)
    out: dict[str, dict[str, float]] = {}
    lines: dict[str, list[TimelinePoint]] = {}
    for name in policies:
        if name == "clairvoyant":
            s, sim = dict(cv), csim
        else:
            progress(f"{base.name} seed {seed}: {name}")
            sim = run_policy(name, trace, profile, cfg, initial)
            s = summarise(sim)
        s["gpu_hours_vs_clairvoyant"] = s["gpu_hours"] / cv["gpu_hours"] if cv["gpu_hours"] else math.nan
        out[name] = s
        if keep_timelines:
            lines[name] = sim.timeline
    return SeedResult(seed, top, out, lines)


def report(base: Trace, profile: Profile, cfg: BenchConfig, scale: float, results: list[SeedResult]) -> dict:
    """The report for one trace: every policy, mean over the seeds (the acceptance's JSON shape)."""
    names = list(results[0].summaries)
    pol = {
        n: {k: sum(r.summaries[n][k] for r in results) / len(results) for k in results[0].summaries[n]}
        for n in names
    }
    top = sum(r.ceiling for r in results) / len(results)
    return {
        "trace": base.name,
        "profile": profile.name,
        "profile_status": profile.status,
        "rate_scale": round(scale, 4),
        "seeds": [r.seed for r in results],
        "slo": {"ttft_s": cfg.ttft_slo_s, "tpot_s": cfg.tpot_slo_s},
        "slo_ceiling": top,
        "attainment_target": cfg.target_attainment * top,
        "cold_start_s": cfg.cold_start_s,
        "policies": pol,
    }


def default_scale(base: Trace, profile: Profile, cfg: BenchConfig, rate_scale: float | None) -> float:
    if rate_scale is not None:
        return rate_scale
    return auto_rate_scale(base, Capacity.from_profile(profile, cfg.tpot_slo_s))


def bench_trace(
    base: Trace,
    profile: Profile,
    cfg: BenchConfig,
    policies: list[str],
    seeds: list[int],
    rate_scale: float | None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict:
    """One trace, every seed in this process."""
    scale = default_scale(base, profile, cfg, rate_scale)
    results = [run_seed(base, profile, cfg, policies, s, scale, progress=progress) for s in seeds]
    return report(base, profile, cfg, scale, results)


ALL = NAMES
