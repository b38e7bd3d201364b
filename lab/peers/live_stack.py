"""Everything the dashboards read, running for real on loopback, scraped by the real Prometheus.

- vLLM (both metric generations) and the DCGM exporter: the shared harness exporters (lab/
  exporters.py), with the request-latency histograms and DCGM XID/profiling fields their abridged fixtures
  leave out added from tests/fixtures/metrics/*_latency.txt and dcgm_profiling.txt. Counters advance on every
  scrape (fixture value x scrape number), as on a serving pod, so rate() and histogram_quantile() see traffic.
- kube-state-metrics: its HPA families as ksm prints them (tests/fixtures/metrics/kube-state-metrics-hpa.txt).
- toposcale's own services, in-process: the adapter (direct-scrape source over the vLLM exporters plus one
  dead pod), the extender in standalone mode (full-Node payloads, real topologies), the node agent (topology
  from `nvidia-smi topo -m` text, no kubelet socket), driven by a traffic loop while Prometheus scrapes them;
  the first round of traffic is answered before Prometheus starts, so the adapter's served-value gauges are
  there from the first scrape. Their scrape jobs carry the labels deploy/monitors gives them in a cluster.
  No Kubernetes is needed for these: the extender and agent run without a cluster connection here.

The services run on an asyncio loop in a background thread, so the tests stay plain synchronous functions.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from toposcale.adapter.api import VALUES_KEY
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.rules import load_rules
from toposcale.adapter.server import build_app
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource
from toposcale.extender.agent.service import AgentService, ServiceConfig
from toposcale.extender.server import Extender
from toposcale.extender.server import ServerConfig as ExtenderConfig

from lab import FIXTURES as LAB_FIXTURES
from lab.objects import gpu_node
from lab.peers.exporters import FIXTURES, DcgmExporter, Exporter, Gpu, VllmExporter, load_fixture
from lab.peers.prometheus import PrometheusServer, ScrapeJob, free_port

TOPOLOGIES = LAB_FIXTURES / "topologies"
_COUNTER_SAMPLE = re.compile(
    r"^(?P<name>\S+?(_total|_bucket|_count|_sum))(?P<labels>\{.*\})? (?P<value>\S+)$"
)


def _advance(text: str, scrapes: int) -> str:
    """Counters and histograms grow with every scrape, like a pod that keeps serving."""
    out = []
    for line in text.splitlines():
        m = _COUNTER_SAMPLE.match(line)
        if m and not line.startswith("#"):
            line = f"{m.group('name')}{m.group('labels') or ''} {float(m.group('value')) * max(1, scrapes)!r}"
        out.append(line)
    return "\n".join(out) + "\n"


class ServingVllm(VllmExporter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lines = self._lines + load_fixture(f"vllm_{self.generation}_latency.txt")

    def render(self) -> str:
        return _advance(super().render(), self.scrapes)


class BusyDcgm(DcgmExporter):
    def __init__(self, gpus: list[Gpu], **kwargs: Any) -> None:
        super().__init__(gpus, **kwargs)
        self._lines = self._lines + load_fixture("dcgm_profiling.txt")


class KubeStateMetrics(Exporter):
    """kube-state-metrics' /metrics for the HPA families, served as ksm prints them."""

    def render(self) -> str:
        lines = (FIXTURES / "kube-state-metrics-hpa.txt").read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("# source:")) + "\n"


def extender_args() -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "qwen-2", "namespace": "llm", "annotations": {}},
           "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai",
                                    "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
           "status": {"phase": "Pending"}}
    nodes = [gpu_node("gpu-node-a", "hgx-h100-nvswitch-8gpu", [0, 1, 2, 3]),
             gpu_node("gpu-node-b", "pcie-8gpu-two-switch-trees", []),
             gpu_node("gpu-node-c", None, [])]
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


class LiveStack:
    def __init__(self, tmp: Path, *, ask_unknown_metric: bool = True) -> None:
        self.tmp = tmp
        # the traffic also asks the adapter for a metric no rule serves (the 404 path the panels count);
        # scripts/render_dashboards.py turns it off so the pictures show a well-configured HPA
        self.ask_unknown_metric = ask_unknown_metric
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dashboards-live", daemon=True)
        self.prometheus: PrometheusServer | None = None
        self._runners: list[web.AppRunner] = []
        self._exporters: list[Exporter] = []
        self._traffic: asyncio.Task[None] | None = None
        self.traffic_errors: list[str] = []

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> LiveStack:
        self.thread.start()
        jobs = self._run(self._start_services())
        self.prometheus = PrometheusServer(jobs, scrape_interval="1s").start()
        self.prometheus.wait_scraped()
        return self

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        try:
            self._run(self._stop_services())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def _start_services(self) -> list[ScrapeJob]:
        self.vllm = [
            ServingVllm(generation="v1", engines=2, waiting=[3, 1], running=[8, 6], kv_cache=[0.5, 0.7]),
            ServingVllm(generation="v1", waiting=5, running=12, kv_cache=0.9),
        ]
        self.vllm_legacy = ServingVllm(generation="v0", waiting=2, running=4, kv_cache=0.25)
        self.dcgm = BusyDcgm([Gpu(i, namespace="llm" if i < 4 else "", pod="qwen-0" if i < 4 else "",
                                  container="vllm" if i < 4 else "", util=90 if i < 4 else 0,
                                  fb_used=73000 if i < 4 else 1, fb_free=8000 if i < 4 else 81000)
                              for i in range(8)], hostname="gpu-node-a")
        self.ksm = KubeStateMetrics()
        self._exporters = [*self.vllm, self.vllm_legacy, self.dcgm, self.ksm]
        for e in self._exporters:
            await e.start()

        rules = load_rules()
        dead = f"http://127.0.0.1:{free_port()}/metrics"  # a pod that stopped answering
        targets = [Target(v.url, "llm", f"qwen-{i}", {"app": "qwen", "namespace": "llm", "pod": f"qwen-{i}"})
                   for i, v in enumerate(self.vllm)]
        targets.append(Target(dead, "llm", "qwen-9", {"app": "qwen", "namespace": "llm", "pod": "qwen-9"}))
        source = ScrapeSource(StaticTargets(targets), rules, ttl=0.05, timeout=0.5)
        metrics = AdapterMetrics()
        adapter = build_app(rules, source, metrics=metrics, cache_ttl=0.2)
        # its placement cap (adapter --extender-url), an extender that finds no room: the held-back panel's
        # series (toposcale_unplaceable_replicas) exist from the first answer on
        adapter[VALUES_KEY].desired.placement = no_room_placement(metrics.registry)
        self.adapter_port = await self._serve(adapter)
        # A second adapter replica the HPA asked once, at start, and never again (its requests went to the
        # other one): its last answer is older and larger (it also counts the legacy pod: 3+1+5+2 = 11), so a
        # panel summing or taking the max over replicas would show it instead of the newest answer (9).
        stale_targets = [*targets[:2], Target(self.vllm_legacy.url, "llm", "legacy-0",
                                              {"app": "qwen", "namespace": "llm", "pod": "legacy-0"})]
        stale_rules = load_rules()  # (its legacy V0 pod's trimmed text has no generation-token counter)
        stale_source = ScrapeSource(StaticTargets(stale_targets), stale_rules, ttl=0)
        stale = build_app(stale_rules, stale_source, metrics=AdapterMetrics(), cache_ttl=0)
        self.stale_adapter_port = await self._serve(stale)

        self.extender = Extender(ExtenderConfig(host="127.0.0.1", port=0), None)
        self.extender_port = await self._serve(self.extender.app())

        self.agent = AgentService(ServiceConfig(
            node_name="gpu-node-a", topo_file=str(TOPOLOGIES / "hgx-h100-nvswitch-8gpu.txt"),
            socket=str(self.tmp / "no-kubelet.sock"), kubelet_timeout=0.2, host="127.0.0.1", port=0))
        self.agent_port = await self.agent.start_http()

        # The served-value gauges exist once the adapter has answered: answer before Prometheus' first scrape
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # vllm_desired_replicas' first reading is a 503: its rates need a second one
            await self._ask(http, self.adapter_port, "vllm_desired_replicas")
            await asyncio.sleep(0.3)  # past the cache TTL
            await self._traffic_round(http, self.stale_adapter_port)
            await self._traffic_round(http)
        if self.traffic_errors:
            raise RuntimeError(f"the services did not answer the first round: {self.traffic_errors}")
        self._traffic = asyncio.create_task(self._drive())
        local = "127.0.0.1"
        return [
            ScrapeJob("vllm-qwen-0", [self.vllm[0].address], labels={"namespace": "llm", "pod": "qwen-0"}),
            ScrapeJob("vllm-qwen-1", [self.vllm[1].address], labels={"namespace": "llm", "pod": "qwen-1"}),
            ScrapeJob("vllm-legacy", [self.vllm_legacy.address],
                      labels={"namespace": "llm-legacy", "pod": "legacy-0"}),
            ScrapeJob("dcgm-exporter", [self.dcgm.address], honor_labels=True),
            ScrapeJob("kube-state-metrics", [self.ksm.address], honor_labels=True),
            # as deploy/monitors scrapes them: the adapter's target sits in namespace toposcale and its
            # served-value series keep their own namespace (honorLabels); the agent's target gets `node`
            # from the pod's node (the PodMonitor's relabeling)
            ScrapeJob("toposcale-adapter",
                      [f"{local}:{self.adapter_port}", f"{local}:{self.stale_adapter_port}"],
                      labels={"namespace": "toposcale"}, honor_labels=True),
            ScrapeJob("toposcale-extender", [f"{local}:{self.extender_port}"]),
            ScrapeJob("toposcale-agent", [f"{local}:{self.agent_port}"], labels={"node": "gpu-node-a"}),
        ]

    async def _drive(self) -> None:
        """What the cluster does while Prometheus watches: the HPA polls, the scheduler places pods."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                await self._traffic_round(http)
                await asyncio.sleep(0.25)

    async def _ask(self, http: aiohttp.ClientSession, port: int, metric: str) -> int:
        adapter = f"http://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/llm"
        async with http.get(f"{adapter}/{metric}", params={"labelSelector": "app=qwen"}) as r:
            await r.read()
            return r.status

    async def _traffic_round(self, http: aiohttp.ClientSession, adapter_port: int | None = None) -> None:
        port = adapter_port or self.adapter_port
        extender = f"http://127.0.0.1:{self.extender_port}"
        body = extender_args()
        try:
            unknown = ("no_such_metric",) if self.ask_unknown_metric else ()
            desired = ("vllm_desired_replicas",) if port == self.adapter_port else ()
            for metric in ("vllm_requests_waiting", "vllm_kv_cache_usage", *desired, *unknown):
                status = await self._ask(http, port, metric)
                if status != 200 and metric != "no_such_metric":
                    self.traffic_errors.append(f"adapter {metric}: {status}")
            for verb in ("filter", "prioritize"):
                async with http.post(f"{extender}/{verb}", json=body) as r:
                    if r.status != 200:
                        self.traffic_errors.append(f"extender {verb}: {r.status} {await r.text()}")
            await self.agent.step()
            for v in self.vllm:
                v.observe_ttft(0.18, n=3)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.traffic_errors.append(repr(exc))

    async def _stop_services(self) -> None:
        if self._traffic is not None:
            self._traffic.cancel()
            try:
                await self._traffic
            except asyncio.CancelledError:
                pass
        await self.agent.stop()
        for runner in self._runners:
            await runner.cleanup()
        for e in self._exporters:
            await e.stop()

    # ---------------------------------------------------------------- queries

    def query(self, promql: str) -> list[dict[str, Any]]:
        assert self.prometheus is not None
        return self.prometheus.query(promql)

    def series(self, selector: str) -> list[dict[str, str]]:
        assert self.prometheus is not None
        return self.prometheus.api("series", **{"match[]": selector, "start": str(time.time() - 600)})


def no_room_placement(registry: Any) -> Any:
    """adapter/placement.Placement whose extender answers that nothing more can be placed (no Kubernetes
    here: the template is a stub pod)."""
    from types import SimpleNamespace

    from toposcale.adapter.placement import Placement

    pod = SimpleNamespace(spec=SimpleNamespace(node_name="gpu-node-a"), metadata=SimpleNamespace(
        deletion_timestamp=None))

    class Core:
        async def list_namespaced_pod(self, namespace: str, **kw: Any) -> Any:
            return SimpleNamespace(items=[pod])

    class NoRoom:
        async def post(self, path: str, body: Any) -> Any:
            return {"gpus": 4, "requiredScope": "any", "placeable": {"best": 0, "numa": 0, "any": 0},
                    "heldBack": {"best": "no-gpu", "numa": "no-gpu", "any": "no-gpu"}, "nodes": [],
                    "pending": {"pods": 0, "placed": 0}}

    api = SimpleNamespace(sanitize_for_serialization=lambda p: {"kind": "Pod", "spec": {}})
    placement = Placement(api, NoRoom(), registry)
    placement.core = Core()  # type: ignore[assignment]
    return placement
