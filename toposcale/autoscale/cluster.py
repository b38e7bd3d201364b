"""A stepped simulation of a vLLM Deployment under an autoscaler (pure; no I/O, no wall clock).

Every `dt` (0.5 s by default) of simulated time: the trace's arrivals of the slice go through the router to a
Ready replica (fewest outstanding requests, or round-robin), with none Ready they wait at the front door;
each serving replica advances its `ReplicaModel`; replicas move Pending -> Starting (they hold their GPUs from
here: a node had room) -> Ready after the cold start; a replica told to go drains (no new requests, in-flight
ones finish within the grace period or are aborted). Metric snapshots are taken every 7.5 s: those on the 15 s
grid are what a direct scrape at the HPA's sync sees, those half a period earlier are the last
Prometheus scrape
before it (a 15 s scrape interval lags a sync by 7.5 s on average). The policy is asked at its own interval.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from toposcale.serving.model import Finished, ReplicaModel, Request
from toposcale.serving.profile import Profile

from .traces import Trace

SNAPSHOT_S = 7.5


@dataclass(frozen=True, slots=True)
class SimConfig:
    profile: Profile
    cold_start_s: float = 90.0
    grace_s: float = 30.0  # terminationGracePeriodSeconds
    max_replicas: int = 10  # also the room nodes have: a replica beyond it stays Pending
    room_replicas: int | None = None  # None: room for max_replicas
    initial_replicas: int = 1
    dt: float = 0.5
    router: Literal["least", "round-robin"] = "least"
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    until_s: float | None = None  # stop here (default: the trace's end plus drain time)
    # issue 29: finite nodes (toposcale.autoscale.fleet.FleetSpec; None: room for max_replicas replicas) and
    # who picks the scale-down victims: "rs" (the ReplicaSet controller) or "toposcale" (pod-deletion-cost)
    fleet: Any = None
    victims: Literal["rs", "toposcale"] = "rs"


@dataclass(slots=True)
class Replica:
    rid: int
    created: float
    model: ReplicaModel
    phase: str = "Pending"  # Pending -> Starting -> Ready -> Draining
    started: float = 0.0
    ready_at: float = 0.0
    drain_at: float = 0.0
    busy_mark: float = 0.0  # busy_s at the last snapshot
    slot: Any = None  # its node and GPUs on a fleet (toposcale.autoscale.fleet.Slot)


@dataclass(frozen=True, slots=True)
class Snapshot:
    t: float
    grid: bool  # on the 15 s sync grid (a direct scrape at the sync); else a Prometheus scrape between syncs
    ready: int
    starting: int  # Starting (loading) replicas
    pending: int
    waiting: tuple[int, ...]  # per Ready replica
    running: tuple[int, ...]
    kv: tuple[float, ...]
    util: tuple[float, ...]  # DCGM GPU_UTIL 0..100 per Ready replica, over the last snapshot period
    waiting_prompt_tokens: float
    front_door: int
    prompt_tokens_total: float  # cluster counters, every replica that ever served (sum over series)
    generation_tokens_total: float
    requests_admitted_total: float  # arrivals at the router (a gateway's request counter)
    prompt_tokens_admitted_total: float
    requests_finished_total: float
    output_tokens_finished_total: float


class Policy(Protocol):
    name: str
    interval_s: float

    def decide(self, t: float, view: ClusterView) -> int: ...


@dataclass(slots=True)
class Outcome:
    arrival: float
    ttft_s: float
    tpot_s: float
    ok: bool


@dataclass(slots=True)
class TimelinePoint:
    t: float
    spec: int
    ready: int
    pending: int
    waiting: int
    ttft_p90_s: float | None


class ClusterView:
    """What an autoscaler may see: replica counts now, metric snapshots up to now, latency observations."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    @property
    def spec_replicas(self) -> int:
        return self._sim.spec

    @property
    def ready(self) -> int:
        return sum(1 for r in self._sim.replicas if r.phase == "Ready")

    @property
    def active(self) -> int:
        """Deployment status.replicas: pods not terminating."""
        return sum(1 for r in self._sim.replicas if r.phase != "Draining")

    @property
    def pods(self) -> int:
        return len(self._sim.replicas)

    def snapshots(self, t: float, window_s: float, prometheus: bool) -> list[Snapshot]:
        """Snapshots in (t - window, t]: on the sync grid (direct scrape) or half a period before
        (Prometheus)."""
        snaps = self._sim.snaps
        out = []
        for s in reversed(snaps):
            if s.t <= t - window_s - 1e-9:
                break
            if s.t > t + 1e-9:
                continue
            if s.grid != prometheus:
                out.append(s)
        out.reverse()
        return out

    @property
    def pending(self) -> int:
        """Replicas no node has taken yet."""
        return sum(1 for r in self._sim.replicas if r.phase == "Pending")

    @property
    def placeable(self) -> int | None:
        """On a fleet: how many more replicas fit now (the extender's /placeable); None: no fleet."""
        fleet = self._sim.fleet
        return None if fleet is None else fleet.placeable()

    def latest(self, t: float, prometheus: bool) -> Snapshot | None:
        snaps = self.snapshots(t, 15.0, prometheus)
        return snaps[-1] if snaps else None

    def latency_p90(
        self, t: float, window_s: float, lag_s: float = 0.0, q: float = 0.9
    ) -> tuple[float | None, float | None]:
        """The q-quantile (p90 unless asked) of TTFT and TPOT observed in (t - lag - window, t - lag]
        (histogram_quantile over rate())."""
        sim = self._sim
        hi = bisect.bisect_right(sim.lat_t, t - lag_s)
        lo = bisect.bisect_right(sim.lat_t, t - lag_s - window_s)
        if hi <= lo:
            return None, None
        tt = sorted(sim.lat_ttft[lo:hi])
        tp = sorted(sim.lat_tpot[lo:hi])
        k = min(len(tt) - 1, math.ceil(q * len(tt)) - 1)
        return tt[k], tp[k]

    def requests_in(self, t0: float, t1: float) -> tuple[int, float, float]:
        """Clairvoyant only: arrivals in [t0, t1): count, prompt tokens, output tokens."""
        tr = self._sim.trace
        lo, hi = bisect.bisect_left(tr.t, t0), bisect.bisect_left(tr.t, t1)
        return hi - lo, float(sum(tr.prompt[lo:hi])), float(sum(tr.output[lo:hi]))


@dataclass(slots=True)
class Simulation:
    cfg: SimConfig
    trace: Trace
    policy: Policy
    replicas: list[Replica] = field(default_factory=list)
    spec: int = 0
    now: float = 0.0
    next_rid: int = 0
    rr: int = 0
    front_door: deque[Request] = field(default_factory=deque)
    snaps: list[Snapshot] = field(default_factory=list)
    lat_t: list[float] = field(default_factory=list)  # observation times of finished requests (sorted)
    lat_ttft: list[float] = field(default_factory=list)
    lat_tpot: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    aborted: int = 0
    gpu_seconds: float = 0.0
    pending_replica_s: float = 0.0
    peak_pending: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    timeline: list[TimelinePoint] = field(default_factory=list)
    # counters of replicas gone (a Prometheus sum over series keeps them while in the window; close enough)
    _gone_prompt: float = 0.0
    _gone_gen: float = 0.0
    admitted_requests: float = 0.0
    admitted_prompt: float = 0.0
    finished_requests: float = 0.0
    finished_output: float = 0.0
    _next_arrival: int = 0
    _k: int = 0  # slices done
    _snap_k: int = 0
    _next_policy: float = 0.0
    fleet: Any = None  # toposcale.autoscale.fleet.FleetState when cfg.fleet is set

    def __post_init__(self) -> None:
        if self.replicas:
            return
        if self.cfg.fleet is not None:
            from .fleet import FleetState

            self.fleet = FleetState(self.cfg.fleet, self.cfg.profile.gpus_per_replica)
        for _ in range(self.cfg.initial_replicas):
            r = self._new_replica(0.0)
            if self.fleet is not None:
                r.slot = self.fleet.place()
                if r.slot is None:
                    continue  # the fleet has no room for it: Pending from the start
            r.phase, r.started, r.ready_at = "Ready", 0.0, 0.0
        self.spec = self.cfg.initial_replicas

    # ---- the ReplicaSet controller ------------------------------------------------------------------------
    def _new_replica(self, t: float) -> Replica:
        self.next_rid += 1
        r = Replica(self.next_rid, t, ReplicaModel(self.cfg.profile))
        self.replicas.append(r)
        return r

    def set_spec(self, t: float, n: int) -> None:
        n = max(0, min(n, self.cfg.max_replicas))
        if n > self.spec:
            self.scale_ups += 1
        elif n < self.spec:
            self.scale_downs += 1
        self.spec = n
        active = [r for r in self.replicas if r.phase != "Draining"]
        for _ in range(n - len(active)):
            self._new_replica(t)
        excess = len(active) - n
        if excess > 0:
            # controller.ActivePodsWithRanks: unscheduled, not ready, then the most recently ready go first
            order = {"Pending": 0, "Starting": 1, "Ready": 2}
            victims = sorted(active, key=lambda r: (order[r.phase], -r.ready_at, -r.created))[:excess]
            if self.cfg.victims == "toposcale" and self.fleet is not None:
                from .fleet import toposcale_victims

                victims = toposcale_victims(active, self.fleet, excess)
            for r in victims:
                if r.phase in ("Pending", "Starting"):
                    self.replicas.remove(r)
                    if r.slot is not None:
                        self.fleet.release(r.slot)
                else:
                    r.phase, r.drain_at = "Draining", t
                    for req in r.model.take_waiting():  # queued, not started: the client retries elsewhere
                        self._route(req)

    # ---- traffic ------------------------------------------------------------------------------------------
    def _route(self, req: Request, ready: list[Replica] | None = None) -> None:
        if ready is None:
            ready = [r for r in self.replicas if r.phase == "Ready"]
        if not ready:
            self.front_door.append(req)
            return
        if self.cfg.router == "least":
            target = ready[0]
            best = target.model.outstanding
            for r in ready[1:]:
                o = r.model.outstanding
                if o < best:
                    target, best = r, o
        else:
            self.rr += 1
            target = ready[self.rr % len(ready)]
        target.model.submit(req)

    def _record(self, f: Finished, t: float) -> None:
        self.finished_requests += 1
        self.finished_output += f.output
        ok = f.ttft_s <= self.cfg.ttft_slo_s and f.tpot_s <= self.cfg.tpot_slo_s
        self.outcomes.append(Outcome(f.arrival, f.ttft_s, f.tpot_s, ok))
        self.lat_t.append(t)
        self.lat_ttft.append(f.ttft_s)
        self.lat_tpot.append(f.tpot_s)

    # ---- the loop -----------------------------------------------------------------------------------------
    def run(self) -> Simulation:
        """The whole trace (plus time for the last requests), then everything unfinished counts as missed."""
        cfg = self.cfg
        self.advance(cfg.until_s if cfg.until_s is not None else self.trace.span_s + 120.0)
        self.close()
        return self

    def fork(self, policy: Policy) -> Simulation:
        """A copy of the cluster as it is now (replicas, queues, requests in flight) under another policy,
        with no history: for trying what-ifs from this point (the clairvoyant's search)."""
        import copy

        twin = Simulation(self.cfg, self.trace, policy)
        twin.replicas = copy.deepcopy(self.replicas)
        twin.front_door = copy.deepcopy(self.front_door)
        twin.spec, twin.now, twin.next_rid = self.spec, self.now, self.next_rid
        twin._next_arrival = self._next_arrival
        twin._k = self._k
        twin._snap_k = self._snap_k
        twin._next_policy = self._next_policy
        twin.fleet = copy.deepcopy(self.fleet)
        return twin

    def advance(self, end: float) -> None:
        """Simulate up to `end` (resumable)."""
        cfg = self.cfg
        view = ClusterView(self)
        if self._snap_k == 0:
            self._snapshot(0.0, grid=True)
            self._snap_k = 1
            self._next_policy = self.policy.interval_s
        snap_k, next_policy, k = self._snap_k, self._next_policy, self._k
        tr = self.trace
        n = len(tr)
        dt = cfg.dt
        while self.now < end - 1e-9:
            k += 1
            t0, t1 = self.now, k * dt
            self._lifecycle(t0)  # a replica asked for at the last sync starts now if a node has room
            # arrivals of the slice (in order; they carry their exact time)
            i = self._next_arrival
            if i < n and tr.t[i] < t1:
                ready = [r for r in self.replicas if r.phase == "Ready"]
                while i < n and tr.t[i] < t1:
                    req = Request(arrival=max(tr.t[i], t0), prompt=tr.prompt[i], output=tr.output[i])
                    self.admitted_requests += 1  # arrivals at the router (the front door's counters)
                    self.admitted_prompt += req.prompt
                    self._route(req, ready)
                    i += 1
            self._next_arrival = i
            holding = 0
            pending = 0
            for r in list(self.replicas):
                if r.phase == "Pending":
                    pending += 1
                    continue
                holding += 1
                if r.phase in ("Ready", "Draining"):
                    r.model.step(t1, dt)
                    for f in r.model.drain_finished():
                        self._record(f, t1)
                if r.phase == "Draining":
                    if r.model.idle:
                        self._retire(r)
                    elif t1 - r.drain_at >= cfg.grace_s:
                        lost = r.model.abort_all()
                        self.aborted += len(lost)
                        for q in lost:
                            self.outcomes.append(Outcome(q.arrival, math.inf, math.inf, False))
                        self._retire(r)
            self.gpu_seconds += holding * cfg.profile.gpus_per_replica * dt
            self.pending_replica_s += pending * dt
            self.peak_pending = max(self.peak_pending, pending)
            self.now = t1
            if t1 >= snap_k * SNAPSHOT_S - 1e-9:
                self._snapshot(t1, grid=snap_k % 2 == 0)
                snap_k += 1
            if t1 >= next_policy - 1e-9:
                want = self.policy.decide(t1, view)
                if want != self.spec:
                    self.set_spec(t1, want)
                next_policy += self.policy.interval_s
                rd = [r for r in self.replicas if r.phase == "Ready"]
                p90 = view.latency_p90(t1, 60.0)[0]
                self.timeline.append(
                    TimelinePoint(
                        t1,
                        self.spec,
                        len(rd),
                        sum(1 for r in self.replicas if r.phase == "Pending"),
                        sum(len(r.model.waiting) for r in rd) + len(self.front_door),
                        p90,
                    )
                )
        self._snap_k, self._next_policy, self._k = snap_k, next_policy, k

    def close(self) -> None:
        """Whatever never finished counts as missed."""
        for r in self.replicas:
            for q in r.model.abort_all():
                self.outcomes.append(Outcome(q.arrival, math.inf, math.inf, False))
        for q in self.front_door:
            self.outcomes.append(Outcome(q.arrival, math.inf, math.inf, False))
        self.front_door.clear()

    def _retire(self, r: Replica) -> None:
        self._gone_prompt += r.model.prompt_tokens_total
        self._gone_gen += r.model.generation_tokens_total
        self.replicas.remove(r)
        if r.slot is not None:
            self.fleet.release(r.slot)

    def _lifecycle(self, t: float) -> None:
        room = self.cfg.room_replicas if self.cfg.room_replicas is not None else self.cfg.max_replicas
        holding = sum(1 for r in self.replicas if r.phase != "Pending")
        became_ready = False
        fleet = self.fleet
        unplaced = 0
        for r in self.replicas:
            if r.phase == "Pending" and fleet is not None:  # a node of the fleet must take it
                r.slot = fleet.place()
                if r.slot is None:
                    unplaced += 1
                    continue
                r.phase, r.started = "Starting", t
            elif r.phase == "Pending" and holding < room:
                r.phase, r.started = "Starting", t
                holding += 1
            if r.phase == "Starting" and t - r.started >= self.cfg.cold_start_s - 1e-9:
                r.phase, r.ready_at = "Ready", t
                became_ready = True
        if fleet is not None:
            fleet.tick(t, unplaced)  # the node autoscaler: nodes ordered earlier arrive, more are ordered
        if became_ready and self.front_door:
            held = list(self.front_door)
            self.front_door.clear()
            for q in held:
                self._route(q)

    def _snapshot(self, t: float, grid: bool) -> None:
        ready = [r for r in self.replicas if r.phase == "Ready"]
        util = []
        for r in ready:
            busy = r.model.busy_s - r.busy_mark
            r.busy_mark = r.model.busy_s
            util.append(min(100.0, 100.0 * busy / SNAPSHOT_S))
        serving = [r for r in self.replicas if r.phase in ("Ready", "Draining")]
        self.snaps.append(
            Snapshot(
                t=t,
                grid=grid,
                ready=len(ready),
                starting=sum(1 for r in self.replicas if r.phase == "Starting"),
                pending=sum(1 for r in self.replicas if r.phase == "Pending"),
                waiting=tuple(len(r.model.waiting) for r in ready),
                running=tuple(r.model.num_running for r in ready),
                kv=tuple(r.model.kv_usage for r in ready),
                util=tuple(util),
                waiting_prompt_tokens=sum(r.model.waiting_prompt_tokens for r in ready)
                + sum(q.prompt for q in self.front_door),
                front_door=len(self.front_door),
                prompt_tokens_total=self._gone_prompt + sum(r.model.prompt_tokens_total for r in serving),
                generation_tokens_total=self._gone_gen
                + sum(r.model.generation_tokens_total for r in serving),
                requests_admitted_total=self.admitted_requests,
                prompt_tokens_admitted_total=self.admitted_prompt,
                requests_finished_total=self.finished_requests,
                output_tokens_finished_total=self.finished_output,
            )
        )
