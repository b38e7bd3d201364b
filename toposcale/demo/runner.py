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
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import yaml

from toposcale.core.ports import free_port
from toposcale.extender.nodeview import view_of_node
from toposcale.extender.placeable import placeable

from . import view
from .external_metrics import read_external_metric
from .fleet import GPU_RESOURCE, SimNode, build_fleet, has_free_single_numa_set, single_numa
from .hpa import DEFAULT_SCALE_UP, ExternalMetric, HPAController, HPASpec, MetricError, Policy, Rules
from .placement import predict_allocation, set_tier
from .scheduler import ExtenderError, SchedulerClient, pod_object
from .serving import ServingParams, new_request
from .supervisor import OwnErrors, Supervisor
from .traffic import TrafficCurve, poisson
from .vllm_sim import HeldGPU, NodeExporter, ReplicaServer, SimReplica, _Endpoint

logger = logging.getLogger("toposcale.demo")

# Labels, metrics, targets (vllm_requests_waiting AverageValue 4, vllm_kv_cache_usage Value 750m) and the
# scale-up behavior (no window; Pods 2 or Percent 100 per 60 s, selectPolicy Max) as in
# deploy/examples/qwen/hpa.yaml. Two things differ so a run of minutes shows the whole story:
# - maxReplicas is --max-replicas (default 6; the example has 4);
# - scale-down: a 60 s stabilization window and the autoscaling/v2 default policy (Percent 100 per 15 s),
#   where the example waits 600 s and then removes one replica per 300 s (Pods 1, selectPolicy Min).
# All times are simulated seconds (the demo's compressed clock).
APP_LABELS = {"app": "vllm", "model": "qwen2.5-7b-instruct"}
SELECTOR = "app=vllm"
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


@dataclass(slots=True)
class Replica:
    pod: str
    created: float
    phase: str = "Pending"  # Pending -> Starting -> Ready -> Terminating
    node: SimNode | None = None
    gpus: list[int] = field(default_factory=list)
    started: float = 0.0
    ready_at: float = 0.0
    terminating_at: float = 0.0
    sim: SimReplica | None = None
    server: ReplicaServer | None = None


class Demo:
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

    # ---- services -----------------------------------------------------------------------------------------
    async def start_services(self) -> None:
        for node in self.nodes:
            exp = NodeExporter(node)
            await exp.start()
            self.exporters[node.name] = exp
        if self.cfg.file_sd is not None:
            self.kube_state = _Endpoint(lambda: self.kube_state_text().encode())
            await self.kube_state.start()
        self.write_targets()
        aport, eport = free_port(), free_port()
        if self.cfg.prometheus_url:
            source = ["--prometheus-url", self.cfg.prometheus_url]
        else:
            source = ["--scrape-targets", str(self.targets_path)]
        adapter_args = ["adapter", *source, "--port", str(aport)]
        if self.cfg.autoscaler == "toposcale":
            rules_path = self.cfg.workdir / "rules.yaml"
            atomic_write(rules_path, desired_rules_yaml(self.cfg, self.profile))
            adapter_args += ["--rules", str(rules_path)]
        # The adapter's value cache is meant in real seconds; compressed time shrinks it alike.
        ttl = f"{max(0.05, 2.0 / self.cfg.speed):.3g}"
        # Loopback only. --insecure-allow-anonymous serves plain HTTP without authentication, "for local runs
        # and the demo"; its warning at start is expected and is not counted as an error.
        adapter_args += ["--bind-address", "127.0.0.1", "--insecure-allow-anonymous", "--cache-ttl", ttl]
        self.adapter = self.sup.add("adapter", adapter_args, aport)
        extender_args = ["extender", "--standalone", "--host", "127.0.0.1", "--port", str(eport)]
        self.extender = self.sup.add("extender", extender_args, eport)
        if self.cfg.prometheus_url and self.cfg.file_sd is not None:
            self.say(f"adapter source: Prometheus at {self.cfg.prometheus_url}; its scrape job for the demo:")
            self.say(prometheus_job(self.cfg.file_sd, self.cfg.speed))
        for svc in self.sup.services:
            await self.sup.start_healthy(svc, self.cfg.service_start_timeout_s)
            assert svc.proc is not None
            self.say(f"started {svc.name}: pid {svc.proc.pid}, {svc.base_url} (log {svc.log_path})")
        self.sched = SchedulerClient(self.extender.base_url, self.cfg.extender_weight, self.sched_rng)

    def write_targets(self) -> None:
        """The adapter's static target list: ready replicas and every node's DCGM exporter."""
        doc: list[dict[str, Any]] = []
        for r in self.replicas.values():
            if r.phase == "Ready" and r.server is not None:
                doc.append(
                    {
                        "url": r.server.url,
                        "labels": {"namespace": self.cfg.namespace, "pod": r.pod, **APP_LABELS},
                    }
                )
        for name, exp in self.exporters.items():
            doc.append(
                {
                    "url": exp.url,
                    "labels": {
                        "namespace": "gpu-operator",
                        "pod": f"dcgm-exporter-{name}",
                        "app.kubernetes.io/name": "dcgm-exporter",
                    },
                }
            )
        atomic_write(self.targets_path, yaml.safe_dump(doc, sort_keys=False))  # the adapter never reads half
        if self.cfg.file_sd is not None:
            if self.kube_state is not None:  # what a cluster's Prometheus scrapes beside the pods
                labels = {"namespace": "kube-system", "pod": "kube-state-metrics",
                          "app.kubernetes.io/name": "kube-state-metrics"}
                doc = [*doc, {"url": self.kube_state.url, "labels": labels}]
            atomic_write(self.cfg.file_sd, json.dumps(file_sd_groups(doc), indent=1))

    def kube_state_text(self) -> str:
        """kube-state-metrics' view of the demo's pods: `kube_pod_info` for every pod that exists, and
        `kube_pod_deletion_timestamp` for those being deleted. The adapter in Prometheus mode expects only
        these pods: a scaled-in replica's `up == 0` outlives it in Prometheus by two scrape intervals."""
        ns = self.cfg.namespace
        lines = ["# TYPE kube_pod_info gauge"]
        lines += [f'kube_pod_info{{namespace="{ns}",pod="{r.pod}",node="{r.node.name if r.node else ""}"}} 1'
                  for r in self.replicas.values()]
        lines.append("# TYPE kube_pod_deletion_timestamp gauge")
        now = int(time.time())  # kube-state-metrics: the deletion's unix time; only presence is read
        lines += [f'kube_pod_deletion_timestamp{{namespace="{ns}",pod="{r.pod}"}} {now}'
                  for r in self.replicas.values() if r.phase == "Terminating"]
        return "\n".join(lines) + "\n"

    # ---- the ReplicaSet controller ------------------------------------------------------------------------
    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.phase != "Terminating"]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.phase == "Ready"]

    def reconcile_replicaset(self, now: float) -> None:
        active = self.active()
        for _ in range(self.spec_replicas - len(active)):
            pod = f"vllm-qwen-{self.next_id}"
            self.next_id += 1
            self.replicas[pod] = Replica(pod, created=now)
        excess = len(active) - self.spec_replicas
        if excess > 0:
            for r in sorted(active, key=self._deletion_rank)[:excess]:
                self.terminate(r, now)

    def _deletion_rank(self, r: Replica) -> tuple[Any, ...]:
        """controller.ActivePodsWithRanks order: unscheduled, not ready, more siblings on the node, then the
        most recently ready, go first."""
        siblings = sum(1 for o in self.active() if o.node is not None and o.node is r.node)
        return (r.node is not None, r.phase == "Ready", -siblings, -r.ready_at)

    def terminate(self, r: Replica, now: float) -> None:
        if r.phase == "Pending":
            del self.replicas[r.pod]
            return
        was_ready = r.phase == "Ready"
        r.phase = "Terminating"
        r.terminating_at = now
        if was_ready:
            self.write_targets()  # out of the Service's endpoints and the adapter's targets at once
            if r.sim is not None:  # requests that were only queued go back through the load balancer
                for req in r.sim.model.take_waiting():
                    self.route(req)

    async def finish_terminations(self, now: float) -> None:
        for r in list(self.replicas.values()):
            if r.phase != "Terminating":
                continue
            idle = r.sim is None or r.sim.model.idle
            if idle or now - r.terminating_at >= self.cfg.grace_s:
                if r.server is not None:
                    await r.server.stop()
                if r.node is not None:
                    r.node.release(r.pod)
                    self.story.removals.append((now, r.pod, r.node.name))
                    self.say(view.removal_line(now, r.pod, r.node.name))
                del self.replicas[r.pod]

    # ---- the scheduler + kubelet --------------------------------------------------------------------------
    async def schedule_pending(self, http: aiohttp.ClientSession, now: float) -> None:
        k = self.profile.gpus_per_replica
        for r in [r for r in self.replicas.values() if r.phase == "Pending"]:
            nodes = [n.node_object() for n in self.nodes]
            free = {n.name: len(n.free_ids()) for n in self.nodes}
            pod = pod_object(r.pod, self.cfg.namespace, k, APP_LABELS)
            try:
                placement = await self.sched.schedule(http, pod, nodes, free, k)
            except ExtenderError as exc:
                # the pod stays Pending and is retried next round, as after a failed scheduling cycle
                if (r.pod, str(exc)) not in self.extender_failures:
                    self.extender_failures.add((r.pod, str(exc)))
                    self.story.unschedulable.append((now, r.pod, str(exc)))
                    logger.error("scheduling failed", extra={"pod": r.pod, "error": str(exc)})
                    self.say(f"{view.clock(now):>8}  ! {r.pod}: {exc}")
                continue
            if placement.node is None:
                if r.pod not in self.unschedulable:  # kube-scheduler retries; say it once per pod
                    self.unschedulable.add(r.pod)
                    # the extender's placeable count (extender/placeable.py, what the adapter caps on)
                    room = placeable([view_of_node(o, GPU_RESOURCE) for o in nodes], k, None)
                    self.say(
                        f"{view.clock(now):>8}  ! {r.pod} unschedulable: {placement.reason} "
                        f"(placeable now: {room.total()}, {room.held_back()})"
                    )
                    self.story.unschedulable.append((now, r.pod, placement.reason))
                continue
            node = self.by_name[placement.node]
            chance = has_free_single_numa_set(node, k)
            # The kubelet asks the device plugin which GPUs to give (GetPreferredAllocation).
            ids = predict_allocation(node.topology, node.free_ids(), k, self.sched_rng)
            node.allocate(r.pod, ids, self.cfg.namespace)
            idx = node.indices(ids)
            numas = sorted({node.topology.gpus[i].numa for i in idx})
            rec = view.PlacementRecord(
                t=now,
                pod=r.pod,
                node=node.name,
                gpus=tuple(idx),
                tier=set_tier(node.topology, idx).label,
                numa="unknown" if -1 in numas else "+".join(map(str, numas)),
                single_numa=single_numa(node.topology, idx),
                single_numa_available=chance,
                score=placement.extender_score,
            )
            self.story.placements.append(rec)
            self.say(view.placement_line(rec))
            r.node, r.gpus, r.phase, r.started = node, idx, "Starting", now
            gpus = [HeldGPU(i, node.topology.gpus[i].id, node.gpu_model, node.memory_mib) for i in idx]
            r.sim = SimReplica(r.pod, self.cfg.namespace, node.name, gpus, self.params)

    async def start_ready(self, now: float) -> None:
        changed = False
        for r in self.replicas.values():
            if r.phase == "Starting" and now - r.started >= self.cfg.startup_s:
                assert r.sim is not None
                r.server = ReplicaServer(r.sim)
                await r.server.start()
                self.replica_ports.append(r.server.port)
                r.phase, r.ready_at = "Ready", now
                changed = True
        if changed:
            self.write_targets()

    # ---- traffic ------------------------------------------------------------------------------------------
    def route(self, req: Any) -> None:
        ready = self.ready()
        if ready:
            target = self.rng.choice(ready)
            assert target.sim is not None
            target.sim.model.submit(req)

    def serve(self, now: float, dt: float) -> float:
        rate = self.curve.rate(now)
        ready = self.ready()
        if ready:
            for _ in range(poisson(self.rng, rate * dt)):
                self.route(new_request(self.rng, now, self.params))
        for r in self.replicas.values():
            if r.sim is not None and r.phase in ("Ready", "Terminating"):
                r.sim.model.step(now, dt)
                done = r.sim.model.finished
                self.story.served += len(done)
                self.story.ttft.extend(f.ttft_s for f in done)
                self.story.slo_met += sum(
                    1 for f in done if f.ttft_s <= self.cfg.ttft_slo_s and f.tpot_s <= self.cfg.tpot_slo_s
                )
                r.sim.publish(dt)
        holding = sum(1 for r in self.replicas.values() if r.phase != "Pending")
        self.story.gpu_seconds += holding * self.profile.gpus_per_replica * dt
        for exp in self.exporters.values():
            exp.observe({r.pod: r.sim.gpu_util for r in self.replicas.values() if r.sim is not None})
        return rate

    # ---- the HPA ------------------------------------------------------------------------------------------
    async def read_metric(
        self, http: aiohttp.ClientSession, name: str, selector: str
    ) -> list[int] | Exception:
        return await read_external_metric(http, self.adapter.base_url, self.cfg.namespace, name, selector)

    async def hpa_sync(self, http: aiohttp.ClientSession, now: float) -> None:
        readings: dict[str, list[int] | Exception] = {}
        for m in self.hpa.spec.metrics:
            readings[m.name] = await self.read_metric(http, m.name, m.selector)
        if "vllm_kv_cache_usage" not in readings:  # shown in the status line whatever the HPA scales on
            readings_kv = await self.read_metric(http, "vllm_kv_cache_usage", SELECTOR)
        else:
            readings_kv = readings["vllm_kv_cache_usage"]
        kv = readings_kv
        self.last_kv = sum(kv) / 1000 / len(kv) if isinstance(kv, list) and kv else None
        gpu = await self.read_metric(http, "gpu_utilization", SELECTOR)
        self.last_gpu = sum(gpu) / 1000 / len(gpu) if isinstance(gpu, list) and gpu else None
        decision = self.hpa.reconcile(
            now,
            self.spec_replicas,
            len(self.ready()),
            readings,
            status_replicas=len(self.active()),  # Deployment status.replicas: pods not terminating
            pods=len(self.replicas),  # what the HPA's pod lister finds by selector, terminating ones too
        )
        errs = [f"{k}: {v}" for k, v in decision.proposals.items() if isinstance(v, str)]
        if errs:  # the HPA would show them in its conditions (ScalingActive / FailedGetExternalMetric)
            self.story.hpa_errors.append((now, "; ".join(errs)))
            logger.warning("HPA could not read a metric", extra={"errors": errs})
        if decision.reason == "FailedGetExternalMetric":
            self.hpa_note = "keeps replicas: " + (errs[0][:70] if errs else "metric error")
        else:
            short = {
                "vllm_kv_cache_usage": "kv",
                "vllm_requests_waiting": "queue",
                "vllm_desired_replicas": "desired",
            }
            props = " ".join(
                f"{short.get(k, k)}:{'error' if isinstance(v, str) else v}"
                for k, v in decision.proposals.items()
            )
            self.hpa_note = f"{props} -> {decision.desired} {decision.reason}"
        self.spec_replicas = decision.desired
        self.reconcile_replicaset(now)

    async def wait_for_prometheus(self, http: aiohttp.ClientSession) -> None:
        """Until the adapter answers from Prometheus for the first replica (Prometheus has scraped it)."""
        assert self.cfg.file_sd is not None
        self.say(f"waiting for {self.cfg.prometheus_url} to scrape the first replica ...")
        deadline = time.monotonic() + self.cfg.prometheus_wait_s
        last: list[int] | Exception = MetricError("no answer yet")
        while time.monotonic() < deadline and not self.stop.is_set():
            last = await self.read_metric(http, "vllm_requests_waiting", SELECTOR)
            if isinstance(last, list) and last:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)
        if self.stop.is_set():
            return
        raise RuntimeError(
            f"Prometheus at {self.cfg.prometheus_url} has not scraped the demo's replicas within "
            f"{self.cfg.prometheus_wait_s:g}s (adapter: {last}). Add this job to its configuration and "
            f"reload it:\n{prometheus_job(self.cfg.file_sd, self.cfg.speed)}"
        )

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


def desired_rules_yaml(cfg: DemoConfig, profile: Any) -> str:
    """The adapter's rules for the toposcale autoscaler: the default rules with `vllm_desired_replicas` set
    for the demo's replicas and clock.

    The adapter measures in real seconds while the demo's clock runs `speed` times faster, so everything the
    algorithm counts per second or in seconds of the demo's clock is converted: the prior capacity (tokens per
    demo second) times speed, the cold start, the scale-down window and the rate window divided by it. The
    latency targets stay: the histograms hold demo seconds."""
    from importlib import resources

    from toposcale.autoscale.desired import Capacity

    base = yaml.safe_load(
        resources.files("toposcale.adapter").joinpath("rules", "default.yaml").read_text(encoding="utf-8")
    )
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    s = cfg.speed
    base["rules"] = [r for r in base["rules"] if r.get("name") != "vllm_desired_replicas"]
    base["rules"].append(
        {
            "name": "vllm_desired_replicas",
            "aggregation": "vllm_desired_replicas",
            "window_seconds": max(1, round(60 / s)),
            "desired": {
                "algorithm": {
                    "prior": {
                        "prompt_tokens_s": cap.prompt_tokens_s * s,
                        "generation_tokens_s": cap.generation_tokens_s * s,
                        "prompt_context_s": cap.prompt_context_s / s,
                    },
                    "ttft_slo_s": cfg.ttft_slo_s,
                    "tpot_slo_s": cfg.tpot_slo_s,
                    "cold_start_s": cfg.startup_s / s,
                    "scale_down_window_s": cfg.scale_down_window_s / s,
                }
            },
        }
    )
    head = f"# toposcale demo: the default rules and vllm_desired_replicas (demo clock: x{s:g})\n"
    return head + yaml.safe_dump(base, sort_keys=False)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prom_label(name: str) -> str:
    """A Kubernetes label key as Prometheus' Kubernetes discovery exposes it (app.kubernetes.io/name ->
    app_kubernetes_io_name)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def file_sd_groups(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scrape targets as a Prometheus `file_sd_configs` file: one group per target."""
    out = []
    for t in targets:
        url = urlsplit(t["url"])
        labels = {_prom_label(k): v for k, v in t["labels"].items()}
        out.append(
            {"targets": [url.netloc], "labels": {**labels, "__metrics_path__": url.path or "/metrics"}}
        )
    return out


def prometheus_job(file_sd: Path, speed: float) -> str:
    """The scrape job a user's Prometheus needs for `--prometheus-url`."""
    interval = f"{max(1, round(15 / speed))}s"  # 15 s, compressed like everything else
    return (
        "scrape_configs:\n"
        "  - job_name: toposcale-demo\n"
        f"    scrape_interval: {interval}\n"
        "    honor_labels: true  # dcgm-exporter series name the pod that holds the GPU\n"
        f"    file_sd_configs: [{{files: ['{file_sd}'], refresh_interval: 1s}}]"
    )


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
