"""Runs the policies over a trace and reports them (pure apart from the optional progress callback).

The clairvoyant yardstick knows the arrivals: per 60 s window it wants the replicas whose profiled capacity
covers the window's prompt and generation tokens at a utilisation u, and asks for each window's count one
cold start ahead (so its replicas are Ready when the window starts, and hold their GPUs through the cold
start like everyone's). u is the largest value (bisection, 6 runs) whose run still reaches the attainment
target: the yardstick is as lean as the simulator lets a uniform-utilisation schedule be.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toposcale.serving.profile import Profile

from .cluster import ClusterView, SimConfig, Simulation, TimelinePoint
from .desired import TARGET_UTILISATION, Capacity
from .nowcast import GRID, Nowcast, Setting, pick
from .policies import NAMES, make
from .policies.base import PolicyContext
from .traces import Trace, replay

WINDOW_S = 60.0
TARGET_PEAK_REPLICAS = 6.0
GOAL_RATIO = 1.15  # issue 26's goal: the attainment target at <= this many times the clairvoyant's GPU-hours


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
    fleet: Any = None  # issue 29: toposcale.autoscale.fleet.FleetSpec (--fleet), None: room for max_replicas


def window_demand(trace: Trace, cap: Capacity, window_s: float = WINDOW_S) -> list[float]:
    """Replica-equivalents each window's arrivals need at full utilisation (a prompt of p tokens costs
    p / prompt_tokens_s + prompt_context_s x p^2 / 2 seconds of prefill)."""
    n = math.ceil((trace.span_s + 1e-9) / window_s) + 1
    busy = [0.0] * n
    a, c, g = 1.0 / cap.prompt_tokens_s, cap.prompt_context_s / 2, 1.0 / cap.generation_tokens_s
    for t, pr, o in zip(trace.t, trace.prompt, trace.output, strict=True):
        busy[int(t // window_s)] += pr * a + c * pr * pr + o * g
    return [b / window_s for b in busy]


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
        # Every window that starts within one cold start from now: its replicas start now and are Ready when
        # it begins (a window skipped over here would lose its replicas while they are still starting).
        w0 = min(len(self.counts) - 1, max(0, int(t // WINDOW_S)))
        w1 = min(len(self.counts) - 1, max(0, int((t + self.cold) // WINDOW_S)))
        return min(self.max, max(self.counts[w0 : w1 + 1]))


def clairvoyant_counts(demand: list[float], u: float) -> list[int]:
    return [max(1, math.ceil(d / u - 1e-9)) for d in demand]


def attainment(sim: Simulation) -> float:
    n = len(sim.outcomes)
    return sum(1 for o in sim.outcomes if o.ok) / n if n else 1.0


def attainable(trace: Trace, profile: Profile, cfg: BenchConfig) -> list[bool]:
    """Per request: can it meet the SLO at all, alone on an idle replica (chunked prefill of its prompt, then
    batch-1 decode at its context)?"""
    out = []
    budget = profile.max_num_batched_tokens
    for pr, o in zip(trace.prompt, trace.output, strict=True):
        if pr <= budget:
            ttft = profile.prefill_time(pr)
        else:
            ttft = sum(profile.chunk_time(min(budget, pr - k), k) for k in range(0, pr, budget))
        tpot = profile.decode_time(1, pr + o / 2)
        out.append(ttft <= cfg.ttft_slo_s and tpot <= cfg.tpot_slo_s)
    return out


def ceiling(trace: Trace, profile: Profile, cfg: BenchConfig) -> float:
    """Share of the requests that can meet the SLO at all."""
    flags = attainable(trace, profile, cfg)
    return sum(flags) / len(flags) if flags else 1.0


def sim_config(
    profile: Profile, cfg: BenchConfig, initial: int, cold_start_s: float | None = None, victims: str = "rs"
) -> SimConfig:
    return SimConfig(
        fleet=cfg.fleet,
        victims=victims,  # type: ignore[arg-type]
        profile=profile,
        cold_start_s=cfg.cold_start_s if cold_start_s is None else cold_start_s,
        grace_s=cfg.grace_s,
        max_replicas=cfg.max_replicas,
        initial_replicas=initial,
        dt=cfg.dt,
        router=cfg.router,  # type: ignore[arg-type]
        ttft_slo_s=cfg.ttft_slo_s,
        tpot_slo_s=cfg.tpot_slo_s,
    )


def run_policy(
    name: str,
    trace: Trace,
    profile: Profile,
    cfg: BenchConfig,
    initial: int,
    counts: list[int] | None = None,
    setting: Setting | None = None,
) -> Simulation:
    """One policy over the trace; the clairvoyant and the nowcast need the clairvoyant's `counts` (and the
    nowcast its `setting`)."""
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    ctx = PolicyContext(profile, cap, cfg.ttft_slo_s, cfg.tpot_slo_s, cfg.cold_start_s, 1, cfg.max_replicas)
    victims = "rs"
    if name == "clairvoyant":
        policy: Any = Clairvoyant(counts or [1], cfg.cold_start_s, cfg.max_replicas)
    elif name == "nowcast":
        policy = Nowcast(counts or [1], setting or GRID[0], cfg.max_replicas)
    elif cfg.fleet is not None:  # issue 29: the cap and the victim choice (toposcale.autoscale.fleet)
        from .fleet import Capped, variant

        v = variant(name)
        policy = make(v.base, ctx)
        if v.cap:
            policy = Capped(policy, cfg.fleet.allowance)
        victims = v.victims
    else:
        policy = make(name, ctx)
    return Simulation(sim_config(profile, cfg, initial, victims=victims), trace, policy).run()


class _Fixed:
    name = "fixed"
    interval_s = 5.0

    def __init__(self, n: int) -> None:
        self.n = n

    def decide(self, t: float, view: ClusterView) -> int:
        return self.n


TAIL_S = 60.0  # a window's requests are judged after this much more time (longer ones count as missed)
REPAIR_ROUNDS = 4


def window_targets(trace: Trace, flags: list[bool], target_share: float, n: int) -> list[float]:
    """Per window: the share of its requests that must meet the SLO (target_share of the attainable)."""
    ok = [0] * n
    tot = [0] * n
    for t, f in zip(trace.t, flags, strict=True):
        w = int(t // WINDOW_S)
        tot[w] += 1
        ok[w] += f
    return [target_share * ok[w] / tot[w] if tot[w] else 0.0 for w in range(n)]


def window_attainment(sim: Simulation, w: int) -> float:
    lo, hi = w * WINDOW_S, (w + 1) * WINDOW_S
    got = [o.ok for o in sim.outcomes if lo <= o.arrival < hi]
    return sum(got) / len(got) if got else 1.0


def search_clairvoyant(
    trace: Trace, profile: Profile, cfg: BenchConfig, target_share: float, initial: int
) -> tuple[list[int], Simulation]:
    """The fewest replicas per 60 s window whose window meets its target, window by window (greedy, with
    the cluster's state carried over): start from the profile's count at full utilisation, then try one
    fewer while the window still meets its target, or one more until it does. Each try forks the cluster
    at the window's start and runs the window plus TAIL_S with that many Ready replicas (the real run
    starts them a cold start ahead, so they are Ready then). Then the real run with cold starts."""
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    demand = window_demand(trace, cap)
    counts = clairvoyant_counts(demand, 1.0)
    targets = window_targets(trace, attainable(trace, profile, cfg), target_share, len(counts))
    main = Simulation(sim_config(profile, cfg, initial, cold_start_s=0.0), trace, _Fixed(counts[0]))

    def meets(w: int, n: int) -> bool:
        f = main.fork(_Fixed(n))
        f.set_spec(w * WINDOW_S, n)
        f.advance((w + 1) * WINDOW_S + TAIL_S)
        f.close()
        return window_attainment(f, w) >= targets[w] - 1e-12

    for w in range(len(counts)):
        n = min(max(1, counts[w]), cfg.max_replicas)
        if meets(w, n):
            while n > 1 and meets(w, n - 1):
                n -= 1
        else:
            while n < cfg.max_replicas and not meets(w, n + 1):
                n += 1
            n = min(cfg.max_replicas, n + 1)
        counts[w] = n
        main.policy = _Fixed(n)
        main.set_spec(main.now, n)
        main.advance((w + 1) * WINDOW_S)
    # Repair: the greedy judged each window with the next ones at its own count; where the real run (cold
    # starts, the next windows' counts) leaves a window below its target, that window gets one more.
    sim = run_policy("clairvoyant", trace, profile, cfg, initial, counts)
    for _ in range(REPAIR_ROUNDS):
        if attainment(sim) >= target_share * ceiling(trace, profile, cfg) - 1e-12:
            break
        short = [w for w in range(len(counts)) if window_attainment(sim, w) < targets[w] - 1e-12]
        grown = [w for w in short if counts[w] < cfg.max_replicas]
        if not grown:
            break
        more = list(counts)
        for w in grown:
            more[w] += 1
        trial = run_policy("clairvoyant", trace, profile, cfg, initial, more)
        if attainment(trial) <= attainment(sim) + 1e-4:
            break  # more replicas do not help: what misses is not capacity (e.g. a burst's shared chunks)
        counts, sim = more, trial
    return counts, sim


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
        **(sim.fleet.stats() if sim.fleet is not None else {}),  # nodes added, best-tier share (a fleet)
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
    counts, csim = search_clairvoyant(trace, profile, cfg, cfg.target_attainment, initial)
    cv = summarise(csim)
    out: dict[str, dict[str, float]] = {}
    lines: dict[str, list[TimelinePoint]] = {}
    runs: list[tuple[str, str, Setting | None]] = []
    for name in policies:
        if name == "nowcast":  # every setting of the grid; report() shows the best (nowcast.pick)
            runs += [(g.key, name, g) for g in GRID]
        else:
            runs.append((name, name, None))
    for key, name, setting in runs:
        if name == "clairvoyant":
            s, sim = dict(cv), csim
        else:
            progress(f"{base.name} seed {seed}: {key}")
            sim = run_policy(name, trace, profile, cfg, initial, counts, setting)
            s = summarise(sim)
        s["gpu_hours_vs_clairvoyant"] = s["gpu_hours"] / cv["gpu_hours"] if cv["gpu_hours"] else math.nan
        out[key] = s
        if keep_timelines and setting is None:
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
    target = cfg.target_attainment * top
    keys = {g.key for g in GRID}
    grid = {k: pol.pop(k) for k in [k for k in pol if k in keys]}
    nowcast = None
    if grid:  # the nowcast row: its best setting, in the policies' order
        key, nowcast = pick(grid, target, GOAL_RATIO)
        nowcast["grid"] = {
            k: {m: s[m] for m in ("slo_attainment", "gpu_hours_vs_clairvoyant")} for k, s in grid.items()
        }
        order = [n for n in NAMES if n in pol or n == "nowcast"] + [n for n in pol if n not in NAMES]
        pol = {n: ({**grid[key], "setting": key} if n == "nowcast" else pol[n]) for n in order}
    return {
        "trace": base.name,
        "profile": profile.name,
        "profile_status": profile.status,
        "rate_scale": round(scale, 4),
        "seeds": [r.seed for r in results],
        "slo": {"ttft_s": cfg.ttft_slo_s, "tpot_s": cfg.tpot_slo_s},
        "slo_ceiling": top,
        "attainment_target": target,
        "cold_start_s": cfg.cold_start_s,
        "policies": pol,
        **({"nowcast": nowcast} if nowcast is not None else {}),
    }


def default_scale(base: Trace, profile: Profile, cfg: BenchConfig, rate_scale: float | None) -> float:
    """`rate_scale`, or auto: the scale at which the clairvoyant's busiest window needs about 6 replicas.
    A first guess from the profile's capacity (6 replicas at the target utilisation in the busiest minute),
    then one clairvoyant search at that scale (seed 0) corrects it by 6 / its peak count: the profile's
    capacity misses queueing (long prompts block the ones behind them), the simulator does not."""
    if rate_scale is not None:
        return rate_scale
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    guess = auto_rate_scale(base, cap)
    trace = replay(base, guess, 0)
    # the guess may need more replicas; and the scale is the trace's and the profile's, not the fleet's: on a
    # finite fleet (--fleet) the search's windows that wait for nodes would ask for ever more replicas, and
    # the scale would shrink until the busiest minute fit the first nodes
    wide = dataclasses.replace(cfg, max_replicas=max(cfg.max_replicas, 64), fleet=None)
    counts, _ = search_clairvoyant(
        trace, profile, wide, cfg.target_attainment, initial_replicas(trace, cap, cfg)
    )
    return guess * TARGET_PEAK_REPLICAS / max(counts)


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
