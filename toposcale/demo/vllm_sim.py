"""Simulated vLLM replicas: the serving model behind a real `/metrics` endpoint each.

The text is what a vLLM V1 server prints (vLLM itself renders it with prometheus-client, as here): gauges
`vllm:num_requests_running|waiting`, `vllm:kv_cache_usage_perc` and the deprecated
`vllm:gpu_cache_usage_perc`, counters with `_total` and `_created`, latency histograms, labels `model_name`
and `engine`. Each node also runs a dcgm-exporter stand-in (`NodeExporter`, as the GPU operator's DaemonSet
does) whose series for the GPUs a replica holds carry that pod's `namespace`/`pod`/`container` labels (the
exporter's Kubernetes mapping), so the adapter's GPU metrics have real text to parse and attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .fleet import SimNode
from .serving import ReplicaModel, ServingParams, new_replica

logger = logging.getLogger("toposcale.demo.vllm_sim")

MODEL_NAME = "Qwen/Qwen2.5-7B-Instruct"
ENGINE = "0"
# vLLM's own bucket boundaries (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
# vllm/v1/metrics/loggers.py: inter-token latency buckets; prompt lengths by build_1_2_5_buckets(max_model_len
# 32768 for Qwen2.5-7B).
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
ITL_BUCKETS = (*ITL_BUCKETS, 40.0, 80.0)
PROMPT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM reserves this share of each GPU's memory at start


@dataclass(frozen=True, slots=True)
class HeldGPU:
    index: int
    uuid: str
    model: str
    memory_mib: int


@dataclass
class SimReplica:
    """One pod: its serving model, the GPUs it holds, and the prometheus-client instruments vLLM owns."""

    pod: str
    namespace: str
    node: str
    gpus: list[HeldGPU]
    params: ServingParams = field(default_factory=ServingParams)
    model: ReplicaModel = field(init=False)
    registry: CollectorRegistry = field(init=False)
    _last: dict[str, float] = field(init=False)
    gpu_util: float = 0.0

    def __post_init__(self) -> None:
        self.model = new_replica(self.params)
        self.registry = CollectorRegistry()
        self._last = {"prompt": 0.0, "gen": 0.0, "ok": 0.0, "pre": 0.0, "busy": 0.0}
        r = self.registry
        lab = ["model_name", "engine"]
        self.g_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", lab, registry=r
        )
        self.g_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", lab, registry=r
        )
        self.g_kv = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", lab, registry=r
        )
        self.g_kv_old = Gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
            lab,
            registry=r,
        )
        self.c_pre = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", lab, registry=r
        )
        self.c_prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", lab, registry=r)
        self.c_gen = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", lab, registry=r
        )
        self.c_ok = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*lab, "finished_reason"],
            registry=r,
        )
        self.h_ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            lab,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.h_e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.h_queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lab,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.h_itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            lab,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.h_prompt = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            lab,
            buckets=PROMPT_BUCKETS,
            registry=r,
        )
        # Series exist from the start, as in vLLM (a counter at 0 is a fact, not a missing value).
        for inst in (
            self.g_running,
            self.g_waiting,
            self.g_kv,
            self.g_kv_old,
            self.c_pre,
            self.c_prompt,
            self.c_gen,
            self.h_ttft,
            self.h_e2e,
            self.h_queue,
            self.h_itl,
            self.h_prompt,
        ):
            inst.labels(MODEL_NAME, ENGINE)
        self.c_ok.labels(MODEL_NAME, ENGINE, "stop")
        self.c_ok.labels(MODEL_NAME, ENGINE, "length")
        self.publish(dt=0.0)

    def publish(self, dt: float) -> None:
        """Copy the model's state into the instruments; `dt` is the simulated time since the last call."""
        m = self.model
        lv = (MODEL_NAME, ENGINE)
        self.g_running.labels(*lv).set(m.num_running)
        self.g_waiting.labels(*lv).set(len(m.waiting))
        self.g_kv.labels(*lv).set(round(m.kv_usage, 4))
        self.g_kv_old.labels(*lv).set(round(m.kv_usage, 4))
        for key, total, counter in (
            ("prompt", m.prompt_tokens_total, self.c_prompt.labels(*lv)),
            ("gen", m.generation_tokens_total, self.c_gen.labels(*lv)),
            ("pre", float(m.preemptions_total), self.c_pre.labels(*lv)),
        ):
            delta = total - self._last[key]
            if delta > 0:
                counter.inc(delta)
                self._last[key] = total
        for f in m.drain_finished():
            self.h_ttft.labels(*lv).observe(f.ttft_s)
            self.h_e2e.labels(*lv).observe(f.e2e_s)
            self.h_queue.labels(*lv).observe(f.queue_s)
            if f.output > 1:  # vLLM observes each token's gap; here the request's mean, once per request
                self.h_itl.labels(*lv).observe(f.tpot_s)
            self.h_prompt.labels(*lv).observe(f.prompt)
            self.c_ok.labels(*lv, "length" if f.output >= self.params.output_tokens[1] else "stop").inc()
        busy = m.busy_s - self._last["busy"]
        self._last["busy"] = m.busy_s
        if dt > 0:
            # DCGM's GPU_UTIL is the share of the sample period a kernel ran; small batches leave gaps.
            self.gpu_util = min(100.0, 100.0 * busy / dt * min(1.0, 0.55 + len(m.running) / 40))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Endpoint:
    """`/metrics` on its own loopback port (a pod has its own IP), bound to port 0 so ports never collide."""

    def __init__(self, render: Callable[[], bytes], host: str = "127.0.0.1") -> None:
        self.render = render
        self.host = host
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        # 0.0.4: the version vLLM and dcgm-exporter announce and every Prometheus understands.
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ReplicaServer(_Endpoint):
    """The replica's vLLM HTTP endpoint."""

    def __init__(self, replica: SimReplica, host: str = "127.0.0.1") -> None:
        super().__init__(replica.exposition, host)
        self.replica = replica


class _DcgmCollector:
    """Renders the node's GPUs at scrape time, as dcgm-exporter does from its last field sample."""

    def __init__(self, exporter: NodeExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterable[GaugeMetricFamily]:
        node = self.exporter.node
        labels = ["gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod"]
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=labels)
        used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=labels)
        free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=labels)
        for g in node.topology.gpus:
            ns, pod = node.owners.get(g.id, ("", ""))
            container = "vllm" if pod in self.exporter.util else ("main" if pod else "")
            lab = [
                str(g.index),
                g.id,
                f"nvidia{g.index}",
                node.gpu_model,
                f"dcgm-exporter-{node.name}",
                container,
                ns,
                pod,
            ]
            busy = self.exporter.util.get(pod, 100.0 if pod else 0.0)  # other workloads: a busy batch job
            fb = int(node.memory_mib * VLLM_GPU_MEMORY_UTILIZATION) if pod else 0
            util.add_metric(lab, round(busy))
            used.add_metric(lab, fb)
            free.add_metric(lab, node.memory_mib - fb)
        yield util
        yield used
        yield free


class NodeExporter:
    """A node's dcgm-exporter (DaemonSet pod): every GPU of the node, labelled with the pod holding it."""

    def __init__(self, node: SimNode, host: str = "127.0.0.1") -> None:
        self.node = node
        self.util: dict[str, float] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_DcgmCollector(self))  # type: ignore[arg-type]
        self._server = _Endpoint(lambda: generate_latest(self.registry), host)

    def observe(self, util_by_pod: dict[str, float]) -> None:
        self.util = dict(util_by_pod)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return self._server.url
