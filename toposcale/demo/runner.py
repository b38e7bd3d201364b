"""Runs the demo: the services, the simulated replicas and the HPA, ReplicaSet and scheduler loops.

Data flow each tick: traffic -> replicas (serving model) -> their `/metrics` -> the adapter (scraping them) ->
the HPA loop (reading `external.metrics.k8s.io` over HTTP) -> desired replicas -> new Pods -> the scheduler
loop (asking the extender over HTTP) -> a node and its GPUs -> a new replica, a new scrape target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from . import view
from .fleet import build_fleet
from .hpa import DEFAULT_SCALE_UP, ExternalMetric, HPAController, HPASpec, Policy, Rules
from .hpa_loop import HPALoop
from .load import TrafficLoop
from .replicaset import Replica, ReplicaSetLoop
from .scheduling import SchedulingLoop
from .services import SELECTOR, Services
from .serving import ServingParams
from .supervisor import OwnErrors, Supervisor
from .traffic import TrafficCurve
from .vllm_sim import NodeExporter, _Endpoint

logger = logging.getLogger("toposcale.demo")

# Labels, metrics, targets (vllm_requests_waiting AverageValue 4, vllm_kv_cache_usage Value 750m) and the
# scale-up behavior (no window; Pods 2 or Percent 100 per 60 s, selectPolicy Max) as in
# deploy/examples/qwen/hpa.yaml. Two things differ so a run of minutes shows the whole story:
# - maxReplicas is --max-replicas (default 6; the example has 4);
# - scale-down: a 60 s stabilization window and the autoscaling/v2 default policy (Percent 100 per 15 s),
#   where the example waits 600 s and then removes one replica per 300 s (Pods 1, selectPolicy Min).
# All times are simulated seconds (the demo's compressed clock).
SCALE_UP = Rules(0, (Policy("Pods", 2, 60), Policy("Percent", 100, 60)))


@dataclass(frozen=True, slots=True)
class DemoConfig:
    duration_s: float = 90.0  # wall seconds
    speed: float = 10.0  # simulated seconds per wall second
    seed: int = 0
    namespace: str = "demo"
    gpus_per_replica: int = 4
    min_replicas: int = 1
    max_replicas: int = 6
    hpa_sync_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period
    scale_down_window_s: float = 60.0  # behavior.scaleDown.stabilizationWindowSeconds
    startup_s: float = 30.0  # pod start to vLLM ready (model load)
    grace_s: float = 30.0  # terminationGracePeriodSeconds: in-flight requests may finish
    kv_target: str = "750m"  # vllm_kv_cache_usage, Value target (it is an average already)
    waiting_target: str = "4"  # vllm_requests_waiting, AverageValue target per replica
    peak_rps: float = 20.0
    base_rps: float = 2.0
    extender_weight: int = 5
    tick_wall_s: float = 0.1
    workdir: Path = Path(".")
    plot: Path | None = None
    summary_json: Path | None = None
    autoscaler: str = "toposcale"  # toposcale: the HPA on vllm_desired_replicas; example: the qwen example's
    profile: str = "rtx4090d-tp4"  # the replicas' serving profile (toposcale/serving/profiles)
    ttft_slo_s: float = 2.0  # the SLO the summary's attainment counts (and toposcale's signal aims at)
    tpot_slo_s: float = 0.1
    service_start_timeout_s: float = 60.0
    prometheus_url: str | None = None  # the adapter queries this Prometheus instead of scraping
    file_sd: Path | None = None  # where the Prometheus file_sd target list goes (with prometheus_url)
    prometheus_wait_s: float = 60.0  # for Prometheus to scrape the first replica

    @property
    def sim_duration(self) -> float:
        return self.duration_s * self.speed


class Demo(Services, ReplicaSetLoop, SchedulingLoop, TrafficLoop, HPALoop):
    """The demo's state and its main loop; each loop it runs is a mixin of its own module: services.py,
    replicaset.py, scheduling.py, load.py (traffic), hpa_loop.py."""

    def __init__(self, cfg: DemoConfig, out: TextIO, stop: asyncio.Event) -> None:
        self.cfg = cfg
        self.out = out
        self.stop = stop
        self.rng = random.Random(cfg.seed)
        self.sched_rng = random.Random(cfg.seed + 1)
        self.curve = TrafficCurve(
            cfg.sim_duration, base_rps=cfg.base_rps, peak_rps=cfg.peak_rps, seed=cfg.seed
        )
        self.nodes = build_fleet()
        self.by_name = {n.name: n for n in self.nodes}
        self.exporters: dict[str, NodeExporter] = {}
        self.kube_state: _Endpoint | None = None  # with --prometheus-url: kube-state-metrics' pod series
        self.replicas: dict[str, Replica] = {}
        self.spec_replicas = cfg.min_replicas
        self.next_id = 0
        self.story = view.Story()
        self.sup = Supervisor(cfg.workdir)
        self.targets_path = cfg.workdir / "targets.yaml"
        self.params = ServingParams(profile=cfg.profile)
        self.profile = self.params.load()
        if cfg.autoscaler == "toposcale":
            # The HPA adapter/README documents for vllm_desired_replicas: the count itself (AverageValue 1),
            # no scale-down stabilization (the metric holds its own window).
            spec = HPASpec(
                min_replicas=cfg.min_replicas,
                max_replicas=cfg.max_replicas,
                metrics=(ExternalMetric("vllm_desired_replicas", SELECTOR, "AverageValue", "1"),),
                scale_up=DEFAULT_SCALE_UP,
                scale_down=Rules(0, (Policy("Percent", 100, 15),)),
            )
        else:
            spec = HPASpec(
                min_replicas=cfg.min_replicas,
                max_replicas=cfg.max_replicas,
                metrics=(
                    ExternalMetric("vllm_kv_cache_usage", SELECTOR, "Value", cfg.kv_target),
                    ExternalMetric("vllm_requests_waiting", SELECTOR, "AverageValue", cfg.waiting_target),
                ),
                scale_up=SCALE_UP,
                scale_down=Rules(cfg.scale_down_window_s, (Policy("Percent", 100, 15),)),
            )
        self.hpa = HPAController(spec)
        self.story.autoscaler = (
            "toposcale (HPA on vllm_desired_replicas, AverageValue 1)"
            if cfg.autoscaler == "toposcale"
            else "example (deploy/examples/qwen HPA: queue AverageValue 4, KV-cache Value 750m)"
        )
        self.story.profile = f"{self.profile.name} ({self.profile.status})"
        self.story.slo = f"TTFT <= {cfg.ttft_slo_s:g} s and mean TPOT <= {cfg.tpot_slo_s * 1000:g} ms"

        self.unschedulable: set[str] = set()
        self.extender_failures: set[tuple[str, str]] = set()
        self.replica_ports: list[int] = []
        self.last_kv: float | None = None
        self.last_gpu: float | None = None
        self.hpa_note = ""
        self.t0 = 0.0

    # ---- output -------------------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def now(self) -> float:
        return (time.monotonic() - self.t0) * self.cfg.speed

    # ---- main loop ----------------------------------------------------------------------------------------
    def sample(self, now: float, rate: float) -> view.Sample:
        ready = self.ready()
        waiting = sum(len(r.sim.model.waiting) for r in ready if r.sim)
        running = sum(len(r.sim.model.running) for r in ready if r.sim)
        return view.Sample(
            t=now,
            wall=now / self.cfg.speed,
            rps=rate,
            waiting=waiting,
            running=running,
            kv=self.last_kv,
            gpu_util=self.last_gpu,
            desired=self.spec_replicas,
            current=len(self.active()),
            ready=len(ready),
            hpa_note=self.hpa_note,
        )

    async def run(self) -> bool:
        """Returns True when the run went its full length, False when stopped early."""
        cfg = self.cfg
        async with aiohttp.ClientSession() as http:
            # The Deployment starts at minReplicas, placed and warmed up before the clock runs.
            self.reconcile_replicaset(0.0)
            await self.schedule_pending(http, 0.0)
            await self.start_ready(cfg.startup_s)
            if cfg.autoscaler == "toposcale":
                # The adapter's rates need a first reading of each pod's counters: taken before the clock runs
                # (its answer, 503 "no counter history yet", is expected and not counted).
                await self.read_metric(http, "vllm_desired_replicas", SELECTOR)
            if cfg.prometheus_url:
                await self.wait_for_prometheus(http)
            self.say("")
            self.say(view.LEGEND)
            self.say(view.HEADER)
            self.t0 = time.monotonic()
            last, next_hpa, next_scan, rate = 0.0, cfg.hpa_sync_s, 0.0, 0.0
            while not self.stop.is_set():
                now = self.now()
                if now >= cfg.sim_duration:
                    break
                dt = now - last
                if dt > 0:
                    rate = self.serve(now, dt)
                    last = now
                if now >= next_hpa:
                    next_hpa += cfg.hpa_sync_s
                    await self.hpa_sync(http, now)
                    s = self.sample(now, rate)
                    self.story.samples.append(s)
                    self.say(view.status_line(s))
                await self.schedule_pending(http, now)
                await self.start_ready(now)
                await self.finish_terminations(now)
                if now >= next_scan:
                    next_scan = now + cfg.speed  # about once a wall second
                    self.sup.scan_logs()
                    dead = self.sup.dead()
                    if dead:
                        raise RuntimeError(f"{dead[0].name} exited unexpectedly:\n{dead[0].tail()}")
                with contextlib.suppress(TimeoutError):
                    # at most one simulated second per step, so fast runs model the same as slow ones
                    await asyncio.wait_for(self.stop.wait(), min(cfg.tick_wall_s, 1.0 / cfg.speed))
            if not self.story.samples or self.story.samples[-1].t < self.now() - 1:
                self.story.samples.append(self.sample(min(self.now(), cfg.sim_duration), rate))
        return not self.stop.is_set()

    async def close(self) -> None:
        for r in self.replicas.values():
            if r.server is not None:
                await r.server.stop()
        for exp in self.exporters.values():
            await exp.stop()
        if self.kube_state is not None:
            await self.kube_state.stop()
        self.sup.stop_all()


async def until_stopped(work: Any, stop: asyncio.Event) -> bool:
    """Runs `work` unless `stop` comes first (Ctrl-C while services start); True when it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False
    task.result()  # re-raise a failed start
    return True


def problems_text(sup: Supervisor, own: OwnErrors) -> list[str]:
    """Error-level lines of the adapter's and extender's logs, then of the demo's own process."""
    return [f"{p.service}: {p.level}: {p.text[:200]}" for p in (*sup.problems(), *own.problems)]


async def run_demo(cfg: DemoConfig, out: TextIO, install_signals: bool = True) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupted: list[int] = []

    def on_signal(signum: int) -> None:
        interrupted.append(signum)
        stop.set()

    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
    demo = Demo(cfg, out, stop)
    code = 0
    with OwnErrors() as own:
        try:
            if await until_stopped(demo.start_services(), stop):
                await demo.run()
        except Exception as exc:
            logger.exception("demo failed")
            out.write(f"\ndemo failed: {exc}\n")
            code = 1
        finally:
            await demo.close()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    problems = problems_text(demo.sup, own)
    for line in view.summary(
        demo.story, interrupted=bool(interrupted), problems=problems, workdir=str(cfg.workdir)
    ):
        out.write(line + "\n")
    out.flush()
    if cfg.summary_json is not None:
        write_summary_json(cfg.summary_json, demo, problems, interrupted=bool(interrupted), code=code)
    if cfg.plot is not None and demo.story.samples:
        from .plot import plot_story

        plot_story(demo.story, cfg.plot, title=f"toposcale demo (seed {cfg.seed}, {cfg.speed:g}x)")
        out.write(f"plot: {cfg.plot}\n")
    if code:
        return code
    return 130 if interrupted and interrupted[0] == signal.SIGINT else (143 if interrupted else 0)


def write_summary_json(path: Path, demo: Demo, problems: list[str], *, interrupted: bool, code: int) -> None:
    st = demo.story
    doc = {
        "peak_replicas": st.peak_replicas,
        "final_replicas": st.final_replicas,
        "served": st.served,
        "interrupted": interrupted,
        "exit_code": code,
        "samples": [asdict(s) for s in st.samples],
        "placements": [asdict(p) for p in st.placements],
        "removals": st.removals,
        "unschedulable": st.unschedulable,
        "hpa_errors": st.hpa_errors,
        "problems": problems,
        "services": {
            s.name: {
                "pid": s.proc.pid if s.proc else None,
                "port": s.port,
                "log": str(s.log_path),
                "log_lines": s.lines,
            }
            for s in demo.sup.services
        },
        "exporter_ports": [e.port for e in demo.exporters.values()],
        "replica_ports": demo.replica_ports,
    }
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
