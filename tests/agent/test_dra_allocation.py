"""The agent on DRA nodes: `toposcale.io/gpu-allocation` lists the GPUs whose devices DRA allocated.

The kubelet reports DRA devices per container in pod-resources `dynamic_resources` (driver, pool, device
name `gpu-<minor>`) and lists none in GetAllocatableResources. The agent maps each device to a GPU of its
topology through this node's ResourceSlice (uuid, else pcieBusID), by name only when the slices cannot be
read, and from the ResourceClaims' allocations when the kubelet cannot be asked. Devices it cannot place
(another driver, a device missing from the topology) are logged once and not counted.

Service tests: the pod-resources gRPC stand-in (real kubelet proto) answers dynamic resources, the agent
reads ResourceSlices and ResourceClaims from the real kube-apiserver with its own ServiceAccount token
(deploy/agent's RBAC decides), and the published annotation is read back from the Node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from toposcale.extender.agent.draalloc import OnceLog, claimed_devices, map_devices, node_pools, resolve
from toposcale.extender.agent.observe import observe_allocation
from toposcale.extender.agent.podresources.client import Snapshot
from toposcale.extender.topology import dra
from toposcale.extender.topology.annotations import ALLOCATION_ANNOTATION
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.model import Topology

from lab.kube.client import ApiError, ApiSession, RealKube
from lab.kube.podresources import PodResourcesStandIn

from .conftest import X4_UUIDS, node
from .test_allocation_ids import obs
from .test_service import _get, _samples, _service

NODE = "gpu-1"  # the node test_service._service runs the agent for
RES = "/apis/resource.k8s.io/v1"
D = dra.DRIVER
# Minor numbers are not NVML indices on every box: the slice names GPU index i `gpu-<MINOR[i]>`, so a
# name-based mapping would pick the wrong GPUs and only the uuid join gives the right ones.
MINOR = [2, 3, 0, 1]


def topo() -> Topology:
    return obs().topology


def x4_slice(*, with_uuid: bool = True, name: str = f"{NODE}-{D}") -> dict[str, Any]:
    t = topo()
    s = synth.slice_from_topology(t, NODE, name=name)
    for i, dev in enumerate(s["spec"]["devices"]):
        dev["name"] = f"gpu-{MINOR[i]}"
        if not with_uuid:
            del dev["attributes"]["uuid"]
    return s


def dev(minor: int, driver: str = D, pool: str = NODE) -> tuple[str, str, str]:
    return (driver, pool, f"gpu-{minor}")


# ------------------------------------------------------------------------------------------ the mapping


def test_devices_join_the_topology_by_the_slice_uuid_not_by_their_name() -> None:
    pools = node_pools([x4_slice()], NODE, OnceLog())
    held = {dev(2): "llm/vllm-0/vllm", dev(3): "llm/vllm-0/vllm"}  # gpu-2, gpu-3 = NVML index 0, 1
    m = map_devices(topo(), held, pools, OnceLog())
    assert m.gpus == {X4_UUIDS[0]: "llm/vllm-0/vllm", X4_UUIDS[1]: "llm/vllm-0/vllm"}
    assert m.skipped == {}


def test_without_uuid_the_pcie_bus_id_joins() -> None:
    pools = node_pools([x4_slice(with_uuid=False)], NODE, OnceLog())
    m = map_devices(topo(), {dev(0): "a/b/c"}, pools, OnceLog())  # gpu-0 is NVML index 2 (0000:00:08.0)
    assert m.gpus == {X4_UUIDS[2]: "a/b/c"}


def test_without_slices_the_name_is_taken_as_the_nvml_index(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = map_devices(topo(), {dev(0): "a/b/c", dev(3): "a/b/c"}, None, OnceLog())
    assert m.gpus == {X4_UUIDS[0]: "a/b/c", X4_UUIDS[3]: "a/b/c"}
    assert "as NVML index N" in caplog.text


@pytest.mark.parametrize(
    ("device", "slices", "why"),
    [
        (("nic.example.com", NODE, "nic-0"), True, "driver 'nic.example.com' is not gpu.nvidia.com"),
        (dev(7), True, "not in this node's ResourceSlices"),
        (dev(9), False, "no GPU of the topology has that index"),
        ((D, NODE, "gpu-0-mig-1g10gb-0"), False, "not a gpu-<minor> name (MIG or other)"),
    ],
    ids=["unknown-driver", "not-in-slice", "index-beyond-topology", "mig-name"],
)
def test_devices_that_are_no_gpu_of_the_topology_are_logged_once_and_not_counted(
    caplog: pytest.LogCaptureFixture, device: tuple[str, str, str], slices: bool, why: str
) -> None:
    once = OnceLog()
    pools = node_pools([x4_slice()], NODE, once) if slices else None
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three observations: one log line
            m = map_devices(topo(), {device: "llm/p/c", dev(2): "llm/p/c"}, pools, once)
            assert m.gpus == {X4_UUIDS[0] if slices else X4_UUIDS[2]: "llm/p/c"}
            assert m.skipped == {device: why}
    lines = [r for r in caplog.records if r.getMessage() == "DRA device not counted as a GPU of this node"]
    assert len(lines) == 1 and lines[0].reason == why  # type: ignore[attr-defined]


def test_a_slice_device_whose_uuid_is_no_gpu_of_the_topology_is_not_counted() -> None:
    s = x4_slice(with_uuid=True)
    s["spec"]["devices"][0]["attributes"]["uuid"] = {"string": "GPU-00000000-0000-0000-0000-000000000000"}
    s["spec"]["devices"][0]["attributes"]["pcieBusID"] = {"string": "0000:ff:00.0"}
    m = map_devices(topo(), {dev(2): "a/b/c"}, node_pools([s], NODE, OnceLog()), OnceLog())
    assert m.gpus == {} and "match no GPU" in m.skipped[dev(2)]


def test_a_pool_no_slice_describes_is_mapped_by_name() -> None:
    # the driver is republishing its slice under a new pool generation: the kubelet's devices still count
    pools = node_pools([x4_slice()], NODE, OnceLog())
    m = map_devices(topo(), {dev(1, pool="old-pool"): "a/b/c"}, pools, OnceLog())
    assert m.gpus == {X4_UUIDS[1]: "a/b/c"}


def test_slices_the_predictor_does_not_model_fall_back_to_names_without_crashing() -> None:
    s = x4_slice()
    s["spec"]["sharedCounters"] = [{"name": "x", "counters": {}}]
    assert node_pools([s], NODE, OnceLog()) is None


def test_claims_count_only_this_nodes_pools() -> None:
    claims = [
        {
            "metadata": {"namespace": "llm", "name": "c1"},
            "status": {"allocation": {"devices": {"results": [
                {"request": "gpus", "driver": D, "pool": NODE, "device": "gpu-2"},
                {"request": "gpus", "driver": D, "pool": "gpu-2", "device": "gpu-3"},  # another node's pool
            ]}}},
        },
        {"metadata": {"namespace": "llm", "name": "pending"}, "status": {}},  # not allocated yet
        {"metadata": {"name": "odd"}, "status": {"allocation": {"devices": {"results": ["not-an-object"]}}}},
    ]
    assert claimed_devices(claims, {(D, NODE)}) == {dev(2): "llm/c1"}


# ------------------------------------------------------------------------------------------ resolve


async def test_on_a_dra_node_the_empty_device_plugin_list_marks_nothing_unhealthy() -> None:
    async def slices() -> list[dict[str, Any]]:
        return [x4_slice()]

    kubelet = Snapshot(allocatable=frozenset(), allocated=frozenset(), holders={},
                       dynamic_holders={dev(2): "llm/v/c", dev(3): "llm/v/c"})
    snap = await resolve(topo(), kubelet, NODE, OnceLog(), slices)
    alloc = observe_allocation(obs(), snap)
    assert alloc.allocated == {X4_UUIDS[0], X4_UUIDS[1]}
    assert alloc.unhealthy == frozenset()


async def test_a_device_plugin_node_is_left_as_the_kubelet_said_without_asking_the_apiserver() -> None:
    async def slices() -> list[dict[str, Any]]:
        raise AssertionError("a device-plugin node's slices are not listed")

    kubelet = Snapshot(allocatable=frozenset(X4_UUIDS[1:]), allocated=frozenset([X4_UUIDS[1]]),
                       holders={X4_UUIDS[1]: "a/b/c"})
    assert await resolve(topo(), kubelet, NODE, OnceLog(), slices) is kubelet
    assert observe_allocation(obs(), kubelet).unhealthy == {X4_UUIDS[0]}


async def test_kubelet_down_the_claims_say_what_is_held_and_if_they_fail_it_is_unknown() -> None:
    async def slices() -> list[dict[str, Any]]:
        return [x4_slice()]

    async def claims(pools: set[tuple[str, str]]) -> dict[tuple[str, str, str], str]:
        assert pools == {(D, NODE)}
        return {dev(0): "llm/c1"}

    async def broken(pools: set[tuple[str, str]]) -> dict[tuple[str, str, str], str]:
        raise RuntimeError("listing resourceclaims: HTTP 403 Forbidden")

    down = Snapshot(error="kubelet pod-resources socket /x does not exist")
    snap = await resolve(topo(), down, NODE, OnceLog(), slices, claims)
    assert observe_allocation(obs(), snap).allocated == {X4_UUIDS[2]}
    snap = await resolve(topo(), down, NODE, OnceLog(), slices, broken)
    assert observe_allocation(obs(), snap).allocated is None
    assert "HTTP 403" in (snap.error or "")


# ------------------------------------------------------------------------------------------ the service


@pytest.fixture
async def admin(kube: RealKube) -> AsyncIterator[ApiSession]:
    """Admin calls for what a DRA driver and kube-scheduler write: the slice, a namespace with a claim."""
    ns = f"agent-dra-{uuid.uuid4().hex[:6]}"  # a deleted namespace lingers while it terminates
    async with ApiSession(kube.cluster) as a:
        await a.create(f"{RES}/resourceslices", x4_slice())
        await a.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        a.ns = ns  # type: ignore[attr-defined]
        try:
            yield a
        finally:
            with contextlib.suppress(ApiError):
                await a.delete(f"{RES}/resourceslices/{NODE}-{D}")
            with contextlib.suppress(ApiError):
                await a.delete(f"/api/v1/namespaces/{ns}")


async def _allocated_claim(a: ApiSession, name: str, devices: list[str]) -> None:
    """A claim the scheduler allocated on this node (status written as kube-scheduler writes it)."""
    spec = {"devices": {"requests": [{"name": "gpus", "exactly": {"deviceClassName": D,
                                                                 "count": len(devices)}}]}}
    path = f"{RES}/namespaces/{a.ns}/resourceclaims"  # type: ignore[attr-defined]
    c = await a.create(path, {"metadata": {"name": name}, "spec": spec})
    c["status"] = {"allocation": {"devices": {"results": [
        {"request": "gpus", "driver": D, "pool": NODE, "device": d} for d in devices
    ]}}}
    await a.call("PUT", f"{path}/{name}/status", c)


async def test_agent_publishes_the_gpus_of_the_kubelets_dynamic_resources(
    kube: RealKube, api: Any, admin: ApiSession, kubelet: PodResourcesStandIn
) -> None:
    kube.add(node(NODE))
    kubelet.allocatable = {}  # a DRA node: no device plugin, GetAllocatableResources lists no GPU
    kubelet.dynamic = [("llm", "vllm-0", "vllm", "vllm-0-gpu-x7k2p", [dev(2), dev(3)])]
    svc = _service(api, kubelet.socket)
    await svc.start()
    try:
        await svc.step()
        doc = json.loads(kube.get("Node", NODE)["metadata"]["annotations"][ALLOCATION_ANNOTATION])
        # gpu-2, gpu-3 are NVML index 0 and 1 by the slice's uuids (by name they would be 2 and 3)
        assert doc["allocated"] == sorted(X4_UUIDS[:2])
        assert doc["unhealthy"] == []
        assert json.loads((await _get(svc, "/healthz"))[1])["allocation_source"] == "kubelet-dra"
        m = _samples((await _get(svc, "/metrics"))[1])
        assert m["toposcale_agent_allocation_known"] == 1 and m["toposcale_agent_kubelet_errors_total"] == 0
    finally:
        await svc.stop()


async def test_agent_without_a_kubelet_publishes_the_gpus_the_claims_hold(
    kube: RealKube, api: Any, admin: ApiSession, tmp_path: Any
) -> None:
    kube.add(node(NODE))
    await _allocated_claim(admin, "vllm-1-gpu", ["gpu-0", "gpu-1"])  # NVML index 2, 3
    svc = _service(api, str(tmp_path / "kubelet.sock"))  # no kubelet socket
    await svc.start()
    try:
        await svc.step()
        doc = json.loads(kube.get("Node", NODE)["metadata"]["annotations"][ALLOCATION_ANNOTATION])
        assert doc["allocated"] == sorted(X4_UUIDS[2:])
        status, body = await _get(svc, "/healthz")
        assert status == 200 and "does not exist" in json.loads(body)["kubelet_error"]
        assert json.loads(body)["allocation_source"] == "resourceclaims"
        m = _samples((await _get(svc, "/metrics"))[1])
        assert m["toposcale_agent_allocation_known"] == 1 and m["toposcale_agent_kubelet_errors_total"] == 1
    finally:
        await svc.stop()


async def test_once_on_a_dra_node_maps_the_kubelets_devices_by_name(kubelet: PodResourcesStandIn) -> None:
    # `--once` has no apiserver: no slices, so gpu-<N> is NVML index N, and nothing is marked unhealthy
    from .test_cli import TOPOSCALE, X4

    kubelet.allocatable = {}
    nic = ("nic.example.com", NODE, "x")
    kubelet.dynamic = [("llm", "vllm-0", "vllm", "vllm-0-gpu", [dev(1), dev(3), nic])]
    proc = await asyncio.create_subprocess_exec(
        TOPOSCALE, "agent", "--once", "--output", "-", "--from-capture", str(X4 / "nvml_capture.json"),
        "--pod-resources-socket", kubelet.socket,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)[ALLOCATION_ANNOTATION]
    assert doc["allocated"] == sorted([X4_UUIDS[1], X4_UUIDS[3]]) and doc["unhealthy"] == []
    assert "as NVML index N" in err.decode() and "nic.example.com" in err.decode()
