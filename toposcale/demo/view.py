"""The demo's terminal view: one status line per HPA sync, one line per event, a summary at the end.

Plain appended lines (no cursor tricks) so the view reads the same in a terminal, a CI log or a pipe. Pure
formatting: the runner hands in what happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # simulated seconds since start
    wall: float  # wall seconds since start
    rps: float
    waiting: int  # summed over replicas
    running: int
    kv: float | None  # average KV-cache usage over ready replicas, 0..1 (as the adapter reported it)
    gpu_util: float | None
    desired: int
    current: int
    ready: int
    hpa_note: str = ""


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    t: float
    pod: str
    node: str
    gpus: tuple[int, ...]
    tier: str
    numa: str  # e.g. "0", "0+1", "unknown"
    single_numa: bool  # toposcale.simulate.tiers' rule: NUMA layout, else no SYS pair
    single_numa_available: bool
    score: int | None


@dataclass(slots=True)
class Story:
    samples: list[Sample] = field(default_factory=list)
    placements: list[PlacementRecord] = field(default_factory=list)
    removals: list[tuple[float, str, str]] = field(default_factory=list)  # (t, pod, node)
    unschedulable: list[tuple[float, str, str]] = field(default_factory=list)  # (t, pod, reason)
    hpa_errors: list[tuple[float, str]] = field(default_factory=list)
    served: int = 0
    ttft: list[float] = field(default_factory=list)
    slo_met: int = 0  # served requests with TTFT and mean TPOT within the SLO
    gpu_seconds: float = 0.0  # GPUs held by replicas (starting, ready or draining) x simulated seconds
    autoscaler: str = ""
    profile: str = ""  # the serving profile's name and status
    slo: str = ""

    @property
    def peak_replicas(self) -> int:
        return max((s.current for s in self.samples), default=0)

    @property
    def final_replicas(self) -> int:
        return self.samples[-1].current if self.samples else 0


def clock(t: float) -> str:
    t = max(0, int(t))
    return f"{t // 3600:d}:{t % 3600 // 60:02d}:{t % 60:02d}"


HEADER = (
    f"{'sim time':>8}  {'wall':>4}  {'load':>8}  {'queue':>5}  {'batch':>5}  {'KV':>4}  {'GPU':>4}  "
    f"{'replicas':<16}  HPA (replicas each metric asks for -> desired)"
)
LEGEND = (
    "load: requests/s offered; queue/batch: requests waiting/running over ready replicas; KV, GPU: the "
    "adapter's vllm_kv_cache_usage and gpu_utilization; replicas: desired/current (ready)"
)


def status_line(s: Sample) -> str:
    kv = "-" if s.kv is None else f"{s.kv * 100:.0f}%"
    gpu = "-" if s.gpu_util is None else f"{s.gpu_util:.0f}%"
    reps = f"{s.desired}/{s.current} ({s.ready})"
    return (
        f"{clock(s.t):>8}  {s.wall:3.0f}s  {s.rps:4.1f} r/s  {s.waiting:5d}  {s.running:5d}  "
        f"{kv:>4}  {gpu:>4}  {reps:<16}  {s.hpa_note}"
    )


def numa_words(p: PlacementRecord) -> str:
    if p.numa == "unknown":  # no NUMA ids in the capture: differing CPU affinities, else the links, decided
        return "one NUMA node (NUMA ids N/A)" if p.single_numa else "crosses sockets (NUMA ids N/A)"
    return f"one NUMA node ({p.numa})" if p.single_numa else f"spans NUMA nodes {p.numa}"


def placement_line(p: PlacementRecord) -> str:
    numa = numa_words(p)
    score = "" if p.score is None else f", extender score {p.score}"
    gpus = ",".join(str(i) for i in p.gpus)
    return f"{clock(p.t):>8}  + {p.pod} -> {p.node} GPUs {gpus}: tier {p.tier}, {numa}{score}"


def removal_line(t: float, pod: str, node: str) -> str:
    return f"{clock(t):>8}  - {pod} left {node}, its GPUs are free again"


def summary(story: Story, *, interrupted: bool, problems: list[str], workdir: str) -> list[str]:
    out = ["", "Summary" + (" (interrupted)" if interrupted else ""), "-------"]
    out.append(f"peak replicas: {story.peak_replicas}")
    out.append(f"final replicas: {story.final_replicas}")
    out.append(f"requests served: {story.served}")
    if story.ttft:
        ttft = sorted(story.ttft)
        p50, p90 = ttft[len(ttft) // 2], ttft[min(len(ttft) - 1, int(len(ttft) * 0.9))]
        out.append(f"time to first token: p50 {p50:.2f}s, p90 {p90:.2f}s")
    if story.served:
        out.append(f"SLO attainment: {story.slo_met / story.served:.1%} of requests ({story.slo})")
    out.append(f"GPU-hours: {story.gpu_seconds / 3600:.2f} (simulated time)")
    if story.autoscaler:
        out.append(f"autoscaler: {story.autoscaler}; serving profile: {story.profile}")
    out.append(f"placements ({len(story.placements)}), GPU tier of each:")
    for p in story.placements:
        numa = numa_words(p)
        gpus = ",".join(str(i) for i in p.gpus)
        out.append(f"  {clock(p.t)}  {p.pod:<16} {p.node:<18} GPUs {gpus:<8} tier {p.tier:<13} {numa}")
    tiers: dict[str, int] = {}
    for p in story.placements:
        tiers[p.tier] = tiers.get(p.tier, 0) + 1
    if tiers:
        out.append("tiers: " + ", ".join(f"{k} {v}" for k, v in tiers.items()))
    chance = [p for p in story.placements if p.single_numa_available]
    kept = [p for p in chance if p.single_numa]
    out.append(f"placements on a node with a free single-NUMA set that got one: {len(kept)}/{len(chance)}")
    if story.unschedulable:
        out.append(f"unschedulable attempts: {len(story.unschedulable)} (last: {story.unschedulable[-1][2]})")
    if story.hpa_errors:
        out.append(f"HPA metric errors: {len(story.hpa_errors)} (last: {story.hpa_errors[-1][1]})")
    # the adapter's and extender's logs and the demo's own (its stand-ins, scheduler and HPA loops)
    out.append("component errors logged: " + (str(len(problems)) if problems else "none"))
    out.extend(f"  {p}" for p in problems[:10])
    out.append(f"logs: {workdir}")
    return out
