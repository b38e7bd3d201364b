"""Which GPUs the kubelet says are held, matched to the discovered GPUs by device-plugin ID.

When the kubelet's IDs are not the GPUs' ids (the agent's --device-id-strategy differs from the device
plugin's deviceIDStrategy), held GPUs would read as free: the allocation is published unknown (null), counted
as a kubelet error and logged with the flag to fix. GPUs the kubelet does not offer as allocatable (the device
plugin marked them unhealthy) are published unhealthy. Service tests use the pod-resources gRPC stand-in (real
kubelet proto) and the real kube-apiserver of the session's control plane.
"""

from __future__ import annotations

import json
import logging

import pytest
from toposcale.extender.agent.discovery import discover
from toposcale.extender.agent.observe import Observation, documents, observe_allocation
from toposcale.extender.agent.podresources.client import Snapshot
from toposcale.extender.agent.replay import ReplayBackend
from toposcale.extender.nodeview import view_from_annotations
from toposcale.extender.topology.annotations import ALLOCATION_ANNOTATION, dumps

from lab.kube.client import RealKube
from lab.kube.podresources import PodResourcesStandIn

from .conftest import X4_UUIDS, load_x4, node
from .test_service import _get, _samples, _service

INDEX_IDS = ["0", "1", "2", "3"]


def obs(strategy: str = "uuid") -> Observation:
    found = discover(ReplayBackend(load_x4()), id_strategy=strategy)  # type: ignore[arg-type]
    return Observation(found.topology, found.unhealthy, "capture")


@pytest.mark.parametrize(
    "snap",
    [
        Snapshot(allocatable=frozenset(INDEX_IDS), allocated=frozenset(["0", "1"])),
        Snapshot(allocatable=frozenset(INDEX_IDS), allocated=frozenset()),  # nothing held yet: still unknown
        Snapshot(allocatable=None, allocated=frozenset(["2"])),  # old kubelet without GetAllocatableResources
        Snapshot(allocatable=frozenset(X4_UUIDS), allocated=frozenset(["MIG-1c2b"])),
    ],
    ids=["index-ids", "index-ids-idle", "no-allocatable", "mig-device"],
)
def test_kubelet_ids_that_are_not_the_gpus_make_the_allocation_unknown(snap: Snapshot, caplog) -> None:
    o = obs("uuid")
    with caplog.at_level(logging.ERROR):
        alloc = observe_allocation(o, snap)
    assert alloc.allocated is None  # never "all free"
    docs = documents(o, alloc)  # still a valid document: null is the contract's "unknown"
    assert docs[ALLOCATION_ANNOTATION]["allocated"] is None
    (line,) = [r for r in caplog.records if "do not match" in r.getMessage()]
    assert "--device-id-strategy" in line.error


def test_matching_index_ids_and_uuids_are_both_understood() -> None:
    snap = Snapshot(allocatable=frozenset(INDEX_IDS), allocated=frozenset(["1"]))
    held = observe_allocation(obs("index"), snap)
    assert held.allocated == {"1"}
    by_uuid = observe_allocation(
        obs("index"), Snapshot(allocatable=frozenset(X4_UUIDS), allocated=frozenset([X4_UUIDS[3]]))
    )
    assert by_uuid.allocated == {X4_UUIDS[3]}  # the extender matches uuid as well as id


def test_gpus_the_kubelet_does_not_offer_are_unhealthy_and_not_free_for_the_extender() -> None:
    o = obs("uuid")
    snap = Snapshot(allocatable=frozenset(X4_UUIDS[:3]), allocated=frozenset([X4_UUIDS[0]]))
    alloc = observe_allocation(o, snap)
    assert alloc.allocated == {X4_UUIDS[0]}
    assert alloc.unhealthy == {X4_UUIDS[3]}
    docs = documents(o, alloc)
    view = view_from_annotations("gpu-1", {k: dumps(v) for k, v in docs.items()}, "nvidia.com/gpu")
    assert view.free_mask == 0b0110  # GPU0 held, GPU3 withheld by the device plugin


def test_without_allocatable_nothing_is_guessed_unhealthy() -> None:
    alloc = observe_allocation(obs(), Snapshot(allocatable=None, allocated=frozenset([X4_UUIDS[1]])))
    assert alloc.allocated == {X4_UUIDS[1]} and alloc.unhealthy == frozenset()


async def test_agent_with_the_wrong_id_strategy_publishes_unknown_and_counts_a_kubelet_error(
    kube: RealKube, api, kubelet: PodResourcesStandIn
) -> None:
    kube.add(node("gpu-1"))
    kubelet.allocatable = {"nvidia.com/gpu": INDEX_IDS}  # the device plugin runs deviceIDStrategy=index
    kubelet.pods = [("llm", "vllm-0", "vllm", "nvidia.com/gpu", INDEX_IDS[:4])]
    svc = _service(api, kubelet.socket)  # the agent runs with the default, uuid
    await svc.start()
    try:
        await svc.step()
        raw = kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION]
        assert json.loads(raw)["allocated"] is None
        _, text = await _get(svc, "/metrics")
        m = _samples(text)
        assert m["toposcale_agent_kubelet_errors_total"] == 1
        assert m["toposcale_agent_allocation_known"] == 0
        _, body = await _get(svc, "/healthz")
        assert "--device-id-strategy" in json.loads(body)["kubelet_error"]
    finally:
        await svc.stop()


async def test_agent_publishes_gpus_the_device_plugin_withholds_as_unhealthy(
    kube: RealKube, api, kubelet: PodResourcesStandIn
) -> None:
    kube.add(node("gpu-1"))
    kubelet.allocatable = {"nvidia.com/gpu": X4_UUIDS[1:]}
    svc = _service(api, kubelet.socket)
    await svc.start()
    try:
        await svc.step()
        doc = json.loads(kube.get("Node", "gpu-1")["metadata"]["annotations"][ALLOCATION_ANNOTATION])
        assert doc["allocated"] == [] and doc["unhealthy"] == [X4_UUIDS[0]]
    finally:
        await svc.stop()
