"""toposcale against real kubelets: a stream of 1-, 2- and 4-GPU pods through the real kube-scheduler, the
extender (watch mode) and two real nodes (containerd, the kubelet built from source, the device plugin running
NVIDIA's go-gpuallocator policy), then a kubelet killed and started again.

For every pod: it runs (containerd started its container, the kubelet's readiness probe passed); the GPUs the
kubelet gave it (its pod-resources List) are the set the extender's `/explain` predicted on that node just
before the scheduling gate was lifted (one of the equal sets where `ties` > 1), and the container was started
with exactly them (NVIDIA_VISIBLE_DEVICES from the device plugin's Allocate, read back from inside the
container); the device plugin's GetPreferredAllocation answered that set. Before each pod the extender's view
of every node is the one the agents published from the kubelets (its cache answers as a full-Node request
over the annotations does), so each placement is computed from the real kubelet's allocation.

The kubelet restart: SIGKILL, the same kubelet again. The pods keep running, the kubelet reads its device
checkpoint back, the device plugin registers again, and the agent and the extender see the same GPUs held,
each once: the next pod on that node gets the GPUs the extender predicts from what is left.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from toposcale.extender.agent.podresources.client import PodResourcesClient
from toposcale.extender.topology.allocator import candidates, indices_of, mask_of
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    topology_from_doc,
)

from lab.kube.gpu_kubelet import RESOURCE, GpuNode
from lab.kube.kubelet_lab import EXPORTER_PORT, exporter_pod
from lab.kube.real_fleet import FLEET_LABEL, NODES, RealFleet, pod_resources
from lab.peers.deployed import TOPOSCALE
from lab.peers.scheduler import GATE, SCHEDULER_NAME, wait_for

NS = "real-kubelet"


def gated_pod(fleet: RealFleet, name: str, gpus: int) -> dict[str, Any]:
    return exporter_pod(
        name,
        fleet.lab.exporter_image,
        gpus=gpus,
        extra_spec={
            "schedulerName": SCHEDULER_NAME,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": dict(FLEET_LABEL),
            "schedulingGates": [{"name": GATE}],
        },
    )


def fleet_rows(fleet: RealFleet, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["node"], r["outcome"], r["score"], tuple(r.get("gpus") or ()))
        for r in doc["nodes"]
        if r["node"] in fleet.nodes
    )


def explain_settled(fleet: RealFleet, name: str) -> dict[str, Any]:
    """/explain once every agent published its kubelet's allocation and the extender's cache shows it."""
    fleet.wait_published()
    pod = fleet.api.pod(NS, name)
    last: list[Any] = []

    def settled() -> dict[str, Any] | None:
        doc = fleet.extender.explain(NS, name)
        truth = fleet.extender.explain_nodes(pod, fleet.node_objects())
        last[:] = [fleet_rows(fleet, doc), fleet_rows(fleet, truth)]
        return doc if last[0] == last[1] else None

    try:
        return wait_for(settled, 30, f"the extender's cache to show the published allocations ({name})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncache: {last[0]}\nannotations: {last[1]}") from None


def running_and_ready(fleet: RealFleet, name: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        p = fleet.api.pod(NS, name)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        if p["status"].get("phase") == "Running" and ready and p["status"].get("podIP"):
            return p
        return None

    return wait_for(
        check, timeout, f"pod {name} Running and Ready (its readiness probe passed)", interval=0.5
    )


def container_env(pod: dict[str, Any]) -> dict[str, str]:
    """The environment the container was started with, as the container itself serves it (/env)."""
    url = f"http://{pod['status']['podIP']}:{EXPORTER_PORT}/env"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def preferred_answers(fleet: RealFleet, node: str) -> list[dict[str, Any]]:
    log = Path(fleet.nodes[node].log("deviceplugin"))
    return [
        e
        for e in (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        if e.get("event") == "get-preferred-allocation"
    ]


def topo_of(node: str) -> GpuNode:
    return GpuNode(node, dict(NODES)[node])


def place(fleet: RealFleet, name: str, gpus: int) -> tuple[str, set[str]]:
    """One pod through the whole path; returns (node, the GPUs the kubelet gave it)."""
    fleet.api.create(f"/api/v1/namespaces/{NS}/pods", gated_pod(fleet, name, gpus))
    doc = explain_settled(fleet, name)
    free_before = {n: set(fleet.nodes[n].gpu_ids) - fleet.held(n) for n in fleet.nodes}
    asked_before = {n: len(preferred_answers(fleet, n)) for n in fleet.nodes}
    fleet.api.patch(
        f"/api/v1/namespaces/{NS}/pods/{name}",
        {"spec": {"schedulingGates": None}},
        ctype="application/strategic-merge-patch+json",
    )
    pod = running_and_ready(fleet, name)
    node = pod["spec"]["nodeName"]
    held = pod_resources(fleet.nodes[node])
    assigned = set(held.get(f"{NS}/{name}", []))
    assert len(assigned) == gpus, f"{name}: the kubelet's pod-resources answer {held}"
    # The container runs with those GPUs: the device plugin's Allocate, through containerd, into the process.
    env = container_env(pod)
    assert set(env.get("NVIDIA_VISIBLE_DEVICES", "").split(",")) == assigned, (name, env, assigned)
    # The kubelet took the device plugin's preference (go-gpuallocator's best-effort answer).
    answers = preferred_answers(fleet, node)[asked_before[node] :]
    assert answers and set(answers[-1]["preferred"]) == assigned, (name, answers, assigned)
    assert set(answers[-1]["available"]) == free_before[node], (answers[-1], free_before[node])
    # ... which is the set the extender predicted for that node.
    row = {r["node"]: r for r in doc["nodes"]}[node]
    assert row["outcome"] == "fits", row
    if row["ties"] == 1:
        assert assigned == set(row["gpus"]), (
            f"{name} on {node}: the kubelet gave {sorted(assigned)}, the extender predicted {row['gpus']}"
        )
    else:
        g = topo_of(node)
        free_mask = mask_of(i for i, gpu in enumerate(g.topo.gpus) if gpu.id in free_before[node])
        may = [{g.topo.gpus[i].id for i in indices_of(m)} for m in candidates(g.topo, free_mask, gpus)]
        assert len(may) == row["ties"], (row, may)
        assert assigned in may, f"{name}: {sorted(assigned)} is none of the sets predicted: {may}"
    fleet.wait_published()
    return node, assigned


def test_stream_and_kubelet_restart(real_fleet: RealFleet) -> None:
    fleet = real_fleet
    api = fleet.api
    api.delete(f"/api/v1/namespaces/{NS}")
    wait_for(
        lambda: api.get(f"/api/v1/namespaces/{NS}", ok=(200, 404)).get("kind") != "Namespace",
        60,
        f"namespace {NS} from an earlier run to go",
    )
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})

    placed: dict[str, tuple[str, set[str]]] = {}
    # 8 GPUs, both nodes full at the end, and feasible whichever node the scheduler picks at each step: the
    # 4-GPU pod takes a whole node, the others fill the second one.
    for i, k in enumerate((4, 2, 1, 1)):
        placed[f"p{i}-{k}gpu"] = place(fleet, f"p{i}-{k}gpu", k)
    for n in fleet.nodes:
        assert fleet.held(n) == set(fleet.nodes[n].gpu_ids), (n, placed)

    # Free two GPUs on one node, then kill its kubelet and start it again.
    victim = next(name for name, (_, gpus) in placed.items() if len(gpus) == 2)
    node = placed[victim][0]
    api.delete(f"/api/v1/namespaces/{NS}/pods/{victim}", params={"gracePeriodSeconds": "0"})
    wait_for(lambda: f"{NS}/{victim}" not in pod_resources(fleet.nodes[node]), 60, f"{victim} to go")
    fleet.wait_published()
    before = {n: fleet.held(n) for n in fleet.nodes}
    pids_before = fleet.nodes[node].pids["kubelet"]
    registered_before = fleet.lab.registrations(node)

    # Back: the new kubelet running, the device plugin registered with it, the Node Ready with its GPUs.
    fleet.lab.restart_kubelet(node)
    assert fleet.nodes[node].pids["kubelet"] != pids_before
    assert fleet.lab.registrations(node) > registered_before
    # The pods kept running; the restarted kubelet holds the same GPUs, each once.
    for name, (n, _gpus) in placed.items():
        if name == victim:
            continue
        assert running_and_ready(fleet, name)["spec"]["nodeName"] == n
    wait_for(lambda: {n: fleet.held(n) for n in fleet.nodes} == before, 60, "the kubelet's allocation back")
    fleet.wait_published()
    allocatable = api.node(node)["status"]["allocatable"][RESOURCE]
    assert allocatable == str(len(fleet.nodes[node].gpu_ids))

    # The next pod uses what the restarted kubelet reports free: the two GPUs the victim left.
    got_node, got = place(fleet, "after-restart", 2)
    assert got_node == node and got == placed[victim][1], (got_node, got, placed[victim])

    api.delete(f"/api/v1/namespaces/{NS}")
    wait_for(lambda: not any(fleet.held(n) for n in fleet.nodes), 90, "every pod's GPUs to be released")
    fleet.wait_published()


async def test_agent_client_reads_allocated_and_allocatable_from_the_real_kubelet(
    real_fleet: RealFleet,
) -> None:
    """The agent's pod-resources client on a real kubelet's socket (moved here from the stand-in): allocatable
    is what the device plugin listed (GetAllocatableResources), allocated and each device's holder what the
    kubelet gave the pods it admitted (List), here pods bound by nodeName, without a scheduler."""
    fleet = real_fleet
    api = fleet.api
    ns = "real-kubelet-client"
    node = fleet.nodes["kl-h100vm"]  # its agent reads an NVML capture: `--once` then asks the kubelet
    api.delete(f"/api/v1/namespaces/{ns}")
    wait_for(
        lambda: api.get(f"/api/v1/namespaces/{ns}", ok=(200, 404)).get("kind") != "Namespace",
        60,
        f"namespace {ns} from an earlier run to go",
    )
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    toleration = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    for name, k in (("two", 2), ("one", 1)):
        pod = exporter_pod(name, fleet.lab.exporter_image, node=node.name, gpus=k, extra_spec=toleration)
        api.create(f"/api/v1/namespaces/{ns}/pods", pod)
    for name in ("two", "one"):
        wait_for(
            lambda name=name: api.pod(ns, name)["status"].get("phase") == "Running",
            60,
            f"pod {name} Running on {node.name}",
            interval=0.5,
        )
    truth = pod_resources(node)
    client = PodResourcesClient(str(node.pod_resources_socket), timeout=2.0)
    try:
        snap = await client.snapshot(RESOURCE)
    finally:
        await client.close()
    assert snap.error is None, snap.error
    assert snap.allocatable == frozenset(node.gpu_ids)
    assert snap.allocated == {i for key, ids in truth.items() if key.startswith(f"{ns}/") for i in ids}
    assert len(snap.allocated) == 3
    for name in ("two", "one"):
        for device in truth[f"{ns}/{name}"]:
            assert snap.holders[device] == f"{ns}/{name}/exporter"
    # `toposcale agent --once` (the console script) on the same socket prints the same allocation.
    proc = await asyncio.create_subprocess_exec(
        str(TOPOSCALE),
        "agent",
        "--once",
        "--output",
        "-",
        "--from-capture",
        str(dict(NODES)[node.name]),
        "--pod-resources-socket",
        str(node.pod_resources_socket),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)[ALLOCATION_ANNOTATION]
    assert doc["allocated"] == sorted(snap.allocated)
    assert doc["unhealthy"] == []
    # The node's agent (service mode, the DaemonSet's) published both documents from NVML and this kubelet.
    fleet.wait_published()
    ann = api.node(node.name)["metadata"]["annotations"]
    assert json.loads(ann[ALLOCATION_ANNOTATION])["allocated"] == sorted(snap.allocated)
    assert topology_from_doc(ann[TOPOLOGY_ANNOTATION]).links[1][2] == "NV18"
    base = f"http://127.0.0.1:{fleet.agent_ports[node.name]}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/healthz") as r:
            health = json.loads(await r.text())
        async with session.get(base + "/metrics") as r:
            text = await r.text()
    assert health["status"] == "ok" and health["allocation_source"] == "kubelet", health
    metrics = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert metrics["toposcale_agent_gpus"] == 4
    assert metrics["toposcale_agent_allocation_known"] == 1
    api.delete(f"/api/v1/namespaces/{ns}")
    wait_for(lambda: not fleet.held(node.name), 90, "the pods' GPUs to be released")
