"""Scale-down victim choice with the real ReplicaSet controller (issue 29, section 3).

deploy/examples/qwen (its HPA removed: the test scales by hand) with the opt-in component
deploy/examples/qwen/pod-deletion-cost (the adapter may `patch` pods there, nothing more) on the real control
plane; the in-test kubelet runs three replicas on three fake 8-GPU nodes, each with an in-test vLLM exporter.
`toposcale adapter --pod-deletion-cost <ns>/app=vllm` ranks them and writes
`controller.kubernetes.io/pod-deletion-cost`; the Deployment is scaled from 3 to 2 and kube-controller-
manager's ReplicaSet controller deletes a pod. Without the annotation it deletes the newest pod
(ActivePodsWithRanks: newer before older); here the annotations name the oldest one, and it goes:

1. by load: the oldest pod has no request in flight, the two others are busy;
2. by GPUs, all equally loaded: the fake nodes carry the agent's annotations, written by the test, so that
   freeing the oldest pod's 4 GPUs completes its NVSwitch box, while the others' would give back NVLink-pair
   fragments or a small PCIe box; the adapter reads that from the extender's `/freeing`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from toposcale.adapter.victims import DELETION_COST_ANNOTATION
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    Allocation,
    allocation_to_doc,
    dumps,
    now_rfc3339,
    topology_to_doc,
)
from toposcale.extender.topology.topo_text import parse_topo_text

from lab.kube.client import ApiSession
from lab.peers.qwen import QwenStack

from .conftest import ROOT, Deployed, apply_objects, kubectl, render, run_adapter, wait_for

TOPOLOGIES = ROOT / "tests" / "fixtures" / "topologies"


async def pods(stack: QwenStack) -> list[dict[str, Any]]:
    doc = await stack.get(f"/api/v1/namespaces/{stack.namespace}/pods?labelSelector=app%3Dvllm")
    return sorted(
        (p for p in doc["items"] if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
    )


async def three_replicas(deployed: Deployed, stack: QwenStack) -> list[str]:
    """The example without its HPA, one replica, then three: the names, oldest first (creation seconds
    apart, so the ReplicaSet's own choice, the newest, is never the oldest)."""
    ns = stack.namespace
    await asyncio.to_thread(kubectl, deployed.cluster, "delete", "hpa", "-n", ns, "vllm-qwen")
    rbac = render(ROOT / "deploy" / "examples" / "qwen" / "pod-deletion-cost")
    for o in rbac:
        o["metadata"]["namespace"] = ns
    await asyncio.to_thread(apply_objects, deployed.cluster, rbac)
    await wait_for(lambda: len(stack.exporters) == 1, 60, "the first replica running")
    await asyncio.sleep(1.5)
    await asyncio.to_thread(
        kubectl, deployed.cluster, "scale", "-n", ns, "deployment/vllm-qwen", "--replicas=3"
    )
    await wait_for(lambda: len(stack.exporters) == 3, 60, "three replicas running")
    return [p["metadata"]["name"] for p in await pods(stack)]


async def scale_to_two_deletes(deployed: Deployed, stack: QwenStack, expected: str) -> None:
    async def annotated() -> dict[str, str] | None:
        got = {
            p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION)
            for p in await pods(stack)
        }
        if len(got) != 3 or None in got.values():
            return None
        return got if min(got, key=lambda n: int(got[n])) == expected else None

    costs = await wait_for(annotated, 60, f"the adapter to name {expected} the first victim")
    print("\npod-deletion-cost:", costs)
    await asyncio.to_thread(
        kubectl, deployed.cluster, "scale", "-n", stack.namespace, "deployment/vllm-qwen", "--replicas=2"
    )

    async def two() -> list[str] | None:
        names = [p["metadata"]["name"] for p in await pods(stack)]
        return names if len(names) == 2 else None

    left = await wait_for(two, 60, "the ReplicaSet controller to delete one pod")
    assert expected not in left and set(left) < set(costs), (expected, left, costs)


async def test_replicaset_deletes_the_idle_replica_the_annotations_name(
    deployed: Deployed, tmp_path: Path
) -> None:
    ns = "victims-load"
    async with QwenStack(deployed, ns, nodes=3, first_ip="127.0.3.2") as stack:
        oldest, *_ = await three_replicas(deployed, stack)
        for name, e in stack.exporters.items():  # requests in flight: running + waiting
            e.running = 0.0 if name == oldest else 6.0
        args = [
            "--kubeconfig",
            str(deployed.kubeconfigs["toposcale-adapter"]),
            "--pod-deletion-cost",
            f"{ns}/app=vllm",
            "--pod-deletion-cost-interval",
            "1",
        ]
        async with run_adapter(deployed, args, tmp_path / "adapter.log") as adapter:
            await scale_to_two_deletes(deployed, stack, oldest)
            assert "pod-deletion-cost updated" in adapter.tail()


def annotations(fixture: str, held: list[int]) -> dict[str, str]:
    topo = parse_topo_text((TOPOLOGIES / f"{fixture}.txt").read_text())
    alloc = Allocation(frozenset(topo.gpus[i].id for i in held), frozenset(), now_rfc3339())
    return {
        TOPOLOGY_ANNOTATION: dumps(topology_to_doc(topo)),
        ALLOCATION_ANNOTATION: dumps(allocation_to_doc(alloc)),
    }


async def test_replicaset_deletes_the_replica_whose_gpus_complete_the_best_set(
    deployed: Deployed, tmp_path: Path
) -> None:
    from lab.peers.scheduler import Extender

    ns = "victims-gpus"
    async with QwenStack(deployed, ns, nodes=3, first_ip="127.0.3.20") as stack:
        names = await three_replicas(deployed, stack)
        placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in await pods(stack)}
        assert len(set(placed.values())) == 3, placed  # one replica per fake node
        # what each node's agent would publish: the pod's 4 GPUs held, the rest free
        layout = [
            ("hgx-h100-nvswitch-8gpu", [0, 1, 2, 3]),  # the oldest: its GPUs complete the NVSwitch box
            ("a6000-8gpu-nvlink-bridge-pairs", [0, 2, 4, 6]),  # one GPU of every NVLink pair
            ("l40s-4gpu-two-per-socket", [0, 1, 2, 3]),  # a small PCIe box
        ]
        async with ApiSession(deployed.cluster) as api:
            for name, (fixture, held) in zip(names, layout, strict=True):
                await api.merge_patch(
                    f"/api/v1/nodes/{placed[name]}",
                    {"metadata": {"annotations": annotations(fixture, held)}},
                )
        for e in stack.exporters.values():
            e.running = 1.0  # equally loaded: the GPUs decide
        ext = Extender(deployed, tmp_path)
        await asyncio.to_thread(ext.start)
        try:
            args = [
                "--kubeconfig",
                str(deployed.kubeconfigs["toposcale-adapter"]),
                "--pod-deletion-cost",
                f"{ns}/app=vllm",
                "--pod-deletion-cost-interval",
                "1",
                "--extender-url",
                ext.url,
            ]
            async with run_adapter(deployed, args, tmp_path / "adapter.log") as adapter:
                await scale_to_two_deletes(deployed, stack, names[0])
                log = adapter.tail()
                assert "pod-deletion-cost updated" in log, log
        finally:
            ext.stop()
