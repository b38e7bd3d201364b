"""The running agent: NVML (replayed real capture) + kubelet (gRPC stand-in, real proto) -> Node annotations
(kubernetes-asyncio against the real kube-apiserver, the agent's ServiceAccount token), /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from toposcale.extender.agent.replay import ReplayBackend
from toposcale.extender.agent.service import AgentService, ServiceConfig
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    topology_from_doc,
)

from lab.kube.client import RealKube
from lab.kube.podresources import PodResourcesStandIn

from .conftest import X4_UUIDS, load_x4, node


def _service(api, socket: str, capture: dict | None = None, **kw) -> AgentService:
    cfg = ServiceConfig(node_name="gpu-1", socket=socket, host="127.0.0.1", port=0, kubelet_timeout=0.5, **kw)
    return AgentService(cfg, api=api, backend=ReplayBackend(capture or load_x4()))


async def _get(svc: AgentService, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{svc.port}{path}") as r:
        return r.status, await r.text()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""
            )
            out[key] = s.value
    return out


async def test_agent_publishes_topology_and_allocation(
    kube: RealKube, api, kubelet: PodResourcesStandIn
) -> None:
    kube.add(node("gpu-1"))
    kubelet.allocatable = {"nvidia.com/gpu": X4_UUIDS}
    kubelet.pods = [("llm", "vllm-0", "vllm", "nvidia.com/gpu", X4_UUIDS[:2])]
    svc = _service(api, kubelet.socket)
    await svc.start()
    try:
        await svc.step()
        ann = kube.get("Node", "gpu-1")["metadata"]["annotations"]
        assert json.loads(ann[ALLOCATION_ANNOTATION])["allocated"] == sorted(X4_UUIDS[:2])
        assert topology_from_doc(ann[TOPOLOGY_ANNOTATION]).links[1][2] == "NV18"
        status, body = await _get(svc, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert json.loads(body)["allocation_source"] == "kubelet"
        status, text = await _get(svc, "/metrics")
        m = _samples(text)
        assert m["toposcale_agent_gpus"] == 4
        assert m["toposcale_agent_allocation_known"] == 1
        assert m["toposcale_agent_publishes_total{reason=changed}"] == 1
        assert m["toposcale_agent_kubelet_errors_total"] == 0
    finally:
        await svc.stop()


async def test_kubelet_missing_publishes_topology_with_allocation_unknown(
    kube: RealKube, api, tmp_path
) -> None:
    kube.add(node("gpu-1"))
    svc = _service(api, str(tmp_path / "kubelet.sock"))
    await svc.start()
    try:
        await svc.step()
        ann = kube.get("Node", "gpu-1")["metadata"]["annotations"]
        assert json.loads(ann[ALLOCATION_ANNOTATION])["allocated"] is None
        assert [g.id for g in topology_from_doc(ann[TOPOLOGY_ANNOTATION]).gpus] == X4_UUIDS
        status, body = await _get(svc, "/healthz")
        health = json.loads(body)
        assert status == 200 and "does not exist" in health["kubelet_error"]
        m = _samples((await _get(svc, "/metrics"))[1])
        assert m["toposcale_agent_kubelet_errors_total"] == 1
        assert m["toposcale_agent_allocation_known"] == 0
    finally:
        await svc.stop()


async def test_failed_discovery_publishes_nothing_and_is_unhealthy(kube: RealKube, api, tmp_path) -> None:
    kube.add(node("gpu-1"))
    broken = {"format": "toposcale-nvml-capture/1", "init": {"error": "DriverNotLoaded"}}
    svc = _service(api, str(tmp_path / "k.sock"), capture=broken)
    await svc.start()
    try:
        assert await svc.step() is None
        assert kube.get("Node", "gpu-1")["metadata"].get("annotations", {}) == {}  # (the server omits empty)
        status, body = await _get(svc, "/healthz")
        assert status == 503 and "DriverNotLoaded" in json.loads(body)["topology_error"]
        m = _samples((await _get(svc, "/metrics"))[1])
        assert m["toposcale_agent_discovery_errors_total"] == 1
    finally:
        await svc.stop()


async def test_missing_node_counts_publish_errors_and_keeps_running(api, tmp_path) -> None:
    svc = _service(api, str(tmp_path / "k.sock"))
    await svc.start()
    try:
        await svc.step()
        await svc.step()
        status, body = await _get(svc, "/healthz")
        assert status == 200 and "404" in json.loads(body)["publish_error"]
        m = _samples((await _get(svc, "/metrics"))[1])
        assert m["toposcale_agent_publish_errors_total"] == 2
    finally:
        await svc.stop()


async def test_healthz_before_the_first_observation_is_starting(api, tmp_path) -> None:
    svc = _service(api, str(tmp_path / "k.sock"))
    await svc.start()
    try:
        status, body = await _get(svc, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "starting"
        assert (await _get(svc, "/nope"))[0] == 404
    finally:
        await svc.stop()


async def test_run_loop_follows_allocation_changes_until_stopped(
    kube: RealKube, api, kubelet: PodResourcesStandIn
) -> None:
    kube.add(node("gpu-1"))
    svc = _service(api, kubelet.socket, interval=0.05, min_publish_interval=0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))

    async def allocated() -> list[str] | None:
        for _ in range(200):
            raw = (kube.get("Node", "gpu-1")["metadata"].get("annotations") or {}).get(ALLOCATION_ANNOTATION)
            if raw is not None:
                return json.loads(raw)["allocated"]
            await asyncio.sleep(0.02)
        raise AssertionError("never published")

    try:
        assert await allocated() == []
        kubelet.pods = [("llm", "vllm-0", "vllm", "nvidia.com/gpu", [X4_UUIDS[3]])]
        for _ in range(200):
            if await allocated() == [X4_UUIDS[3]]:
                break
            await asyncio.sleep(0.02)
        assert await allocated() == [X4_UUIDS[3]]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert svc.port is not None


class _HangingReplay(ReplayBackend):
    """The real capture, with the driver hanging in device_count until released (a wedged GPU driver)."""

    def __init__(self) -> None:
        super().__init__(load_x4())
        self.release = threading.Event()

    def device_count(self) -> int:
        self.release.wait(10)
        return super().device_count()


async def test_hung_nvml_is_reported_and_not_stacked(kube: RealKube, api, tmp_path) -> None:
    kube.add(node("gpu-1"))
    backend = _HangingReplay()
    cfg = ServiceConfig(node_name="gpu-1", socket=str(tmp_path / "k.sock"), host="127.0.0.1", port=0,
                        discovery_timeout=0.2)
    svc = AgentService(cfg, api=api, backend=backend)
    await svc.start()
    try:
        assert await svc.step() is None
        assert "longer than 0.2s" in (svc.state.topology_error or "")
        assert await svc.step() is None
        assert "still running" in (svc.state.topology_error or "")
        assert (await _get(svc, "/healthz"))[0] == 503
        backend.release.set()
        for _ in range(100):
            if await svc.step() is not None:
                break
            await asyncio.sleep(0.05)
        assert svc.state.topology_error is None
        assert TOPOLOGY_ANNOTATION in kube.get("Node", "gpu-1")["metadata"]["annotations"]
    finally:
        backend.release.set()
        await svc.stop()
