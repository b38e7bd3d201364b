"""The long-running agent: observe (NVML + kubelet) every `interval`, publish on the Node, serve /metrics.

One observation never blocks the next forever: NVML runs in a worker thread under a deadline (a hung driver
call is abandoned and reported, and no second one is started beside it), kubelet calls carry their own
deadline, Kubernetes requests theirs. Nothing here crashes the loop: every failure is logged, counted, and
shown on /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .discovery import IdStrategy
from .draalloc import DraSource
from .metrics import AgentMetrics
from .nvml import NvmlBackend
from .observe import (
    Observation,
    ObserveError,
    allocation_problem,
    documents,
    observe_allocation,
    observe_topology,
)
from .podresources.client import PodResourcesClient

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ServiceConfig:
    node_name: str
    resource: str = "nvidia.com/gpu"
    id_strategy: IdStrategy = "uuid"
    topo_file: str | None = None
    capture: str | None = None
    socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    kubelet_timeout: float = 2.0
    interval: float = 15.0
    min_publish_interval: float = 10.0
    refresh_interval: float = 300.0
    discovery_timeout: float = 30.0
    host: str = "0.0.0.0"
    port: int = 9410
    kubeconfig: str | None = None


@dataclass(slots=True)
class StepState:
    finished: float | None = None  # time.monotonic() of the last completed observation
    topology_error: str | None = None
    kubelet_error: str | None = None
    publish_error: str | None = None
    last_publish: str | None = None  # reason of the last publish result
    allocation_source: str | None = None  # "kubelet", "kubelet-dra", "resourceclaims"; None: unknown
    gpus: int = 0


class AgentService:
    def __init__(self, cfg: ServiceConfig, *, api: Any = None, backend: NvmlBackend | None = None) -> None:
        self.cfg = cfg
        self.api = api
        self.backend = backend
        self.metrics = AgentMetrics()
        self.kubelet = PodResourcesClient(cfg.socket, timeout=cfg.kubelet_timeout)
        self.state = StepState()
        self.port: int | None = None
        self._publisher: Any = None
        self.dra = DraSource(api, cfg.node_name)
        self._runner: web.AppRunner | None = None
        self._discovering: asyncio.Future[Observation] | None = None
        # Its own worker, shut down without waiting: a hung NVML call must not hold up the agent's exit.
        self._nvml_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._owns_api = api is None

    # ------------------------------------------------------------------ one observation

    async def _topology(self) -> Observation:
        if self._discovering is not None and not self._discovering.done():
            raise ObserveError("previous NVML discovery still running (hung driver call?)")
        loop = asyncio.get_running_loop()
        self._discovering = loop.run_in_executor(self._nvml_thread, lambda: observe_topology(
            topo_file=self.cfg.topo_file, capture=self.cfg.capture, resource=self.cfg.resource,
            id_strategy=self.cfg.id_strategy, backend=self.backend))
        try:
            return await asyncio.wait_for(asyncio.shield(self._discovering), self.cfg.discovery_timeout)
        except TimeoutError:
            raise ObserveError(f"NVML discovery took longer than {self.cfg.discovery_timeout}s") from None

    async def step(self) -> dict[str, dict[str, Any]] | None:
        """Observe once and publish; returns the documents (None when the topology could not be learned)."""
        from .publish import PublishError

        m = self.metrics
        try:
            obs = await self._topology()
        except ObserveError as exc:
            # Nothing is published rather than a guess: the last published truth stays on the Node.
            m.discovery_errors.inc()
            self.state.topology_error = str(exc)
            self.state.finished = time.monotonic()
            logger.error("topology discovery failed", extra={"error": str(exc)})
            return None
        self.state.topology_error = None
        m.gpus.set(len(obs.topology))
        m.gpus_unhealthy.set(len(obs.unhealthy))
        m.unknown_facts.set(len(obs.topology.unknown))
        self.state.gpus = len(obs.topology)

        raw = await self.kubelet.snapshot(self.cfg.resource)
        # On a DRA node: the held devices as GPU ids (kubelet dynamic resources, else the ResourceClaims).
        snap = await self.dra.resolve(obs.topology, raw)
        problem = allocation_problem(obs, snap)  # unreachable, or device IDs that are not the GPUs' ids
        kubelet_error = raw.error or problem
        if kubelet_error:
            m.kubelet_errors.inc()
        self.state.kubelet_error = kubelet_error
        self.state.allocation_source = None if problem else snap.source
        m.allocation_known.set(0 if problem else 1)
        try:
            docs = documents(obs, observe_allocation(obs, snap))
        except ObserveError as exc:
            m.discovery_errors.inc()
            self.state.topology_error = str(exc)
            self.state.finished = time.monotonic()
            logger.error("refusing to publish invalid documents", extra={"error": str(exc)})
            return None

        if self._publisher is not None:
            try:
                result = await self._publisher.publish(docs)
            except PublishError as exc:
                m.publish_errors.inc()
                self.state.publish_error = str(exc)
                logger.warning("publishing failed; retrying next interval", extra={"error": str(exc)})
            else:
                self.state.publish_error = None
                self.state.last_publish = result.reason
                if result.overwritten:
                    m.overwritten.inc(len(result.overwritten))
                if result.patched:
                    m.publishes.labels(result.reason).inc()
                    m.last_publish.set(time.time())
        self.state.finished = time.monotonic()
        return docs

    # ------------------------------------------------------------------ HTTP

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        s = self.state
        body: dict[str, Any] = {
            "node": self.cfg.node_name,
            "gpus": s.gpus,
            "topology_error": s.topology_error,
            "kubelet_error": s.kubelet_error,
            "publish_error": s.publish_error,
            "last_publish": s.last_publish,
            "allocation_source": s.allocation_source,
        }
        if s.finished is None:
            return False, {**body, "status": "starting"}
        age = time.monotonic() - s.finished
        body["last_observation_age_s"] = round(age, 1)
        stalled = age > 3 * self.cfg.interval + self.cfg.discovery_timeout + self.cfg.kubelet_timeout * 2
        # Kubelet and apiserver trouble is reported but leaves the agent healthy: a restart fixes neither.
        ok = not stalled and s.topology_error is None
        body["status"] = "ok" if ok else ("stalled" if stalled else "topology unknown")
        return ok, body

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, body = self.healthy()
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start_http(self) -> int:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        logger.info("agent serving /healthz and /metrics", extra={"host": self.cfg.host, "port": self.port})
        return self.port

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from .publish import Publisher

        await self.start_http()
        if self.api is None:
            from toposcale.core.kube import api_client

            self.api = await api_client(self.cfg.kubeconfig)
        self.dra.api = self.api
        self._publisher = Publisher(self.api, self.cfg.node_name, min_interval=self.cfg.min_publish_interval,
                                    refresh_interval=self.cfg.refresh_interval)

    async def stop(self) -> None:
        self._nvml_thread.shutdown(wait=False, cancel_futures=True)
        await self.kubelet.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_api and self.api is not None:
            await self.api.close()
            self.api = None

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                await self.step()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.cfg.interval)
        finally:
            await self.stop()

    async def run_forever(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await self.run(stop)
        except Exception as exc:  # startup failures (no credentials, port taken): one clear line, exit 1
            logger.error("agent stopped", extra={"error": f"{type(exc).__name__}: {exc}"})
            return 1
        return 0
