"""Real nodes in the suite (lab/kube/kubelet_lab.py): containerd, the kubelet built from source and the
device plugin of tests/gpuallocator/deviceplugin, added to the session's control plane.

`start_real_fleet` (tests/kubelet's `real_fleet`, one per package run): two nodes of different fixture
topologies (A100s in NVLink-bridged pairs on two sockets from `nvidia-smi topo -m` text, and the 4x H100
NVSwitch VM replayed from its NVML capture, whose device IDs are real GPU UUIDs), Node objects as deploy/
expects GPU nodes (the `nvidia.com/gpu` NoSchedule taint, `nvidia.com/gpu.present=true`, registered by the
kubelets themselves), one real `toposcale agent` per node reading that kubelet's pod-resources socket, the
extender in watch mode (its own ServiceAccount) and a kube-scheduler on the shipped configuration
(lab/peers/scheduler.py's `Scheduler`: only the keys of `ALLOWED_CHANGES` differ). Nothing in these tests
writes a pod's status or the agents' annotations.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from toposcale.extender.agent.podresources import api_pb2, api_pb2_grpc

from lab.builds import deviceplugin_bin
from lab.kube.client import Api
from lab.kube.cluster import free_port
from lab.kube.gpu_kubelet import FIXTURES, GPU_LABEL, GPU_TAINT, RESOURCE, GpuNode
from lab.kube.kubelet_lab import KubeletLab, LabError, LabNode, image_cache_dir
from lab.peers.deployed import TOPOSCALE, Deployed
from lab.peers.scheduler import Extender, Scheduler, service, wait_for
from lab.procs import Child

ROOT = Path(__file__).resolve().parents[2]
FLEET_LABEL = {"toposcale.test/fleet": "real-kubelet"}
TOPO = FIXTURES / "topologies"
NODES = (
    ("kl-a100", TOPO / "a100-4gpu-bridged-pairs-two-sockets.txt"),
    ("kl-h100vm", FIXTURES / "nvml" / "h100-x4-vm-nvswitch" / "nvml_capture.json"),
)


def pod_resources(node: LabNode) -> dict[str, list[str]]:
    """The kubelet's own answer (pod-resources List, read here without the agent's client): "ns/pod" -> the
    nvidia.com/gpu device IDs of its containers."""
    with grpc.insecure_channel(f"unix://{node.pod_resources_socket}") as ch:
        stub = api_pb2_grpc.PodResourcesListerStub(ch)
        resp = stub.List(api_pb2.ListPodResourcesRequest(), timeout=5)
    out: dict[str, list[str]] = {}
    for pod in resp.pod_resources:
        ids = [
            i for c in pod.containers for d in c.devices if d.resource_name == RESOURCE for i in d.device_ids
        ]
        if ids:
            out[f"{pod.namespace}/{pod.name}"] = ids
    return out


@dataclass
class RealFleet:
    api: Api
    lab: KubeletLab
    agents: dict[str, Child]
    agent_ports: dict[str, int]
    extender: Extender
    scheduler: Scheduler
    work: Path

    @property
    def nodes(self) -> dict[str, LabNode]:
        return self.lab.nodes

    def held(self, node: str) -> set[str]:
        return {i for ids in pod_resources(self.nodes[node]).values() for i in ids}

    def allocation(self, node: str) -> list[str] | None:
        ann = self.api.node(node)["metadata"].get("annotations", {}).get("toposcale.io/gpu-allocation")
        if not ann:
            return None
        got = json.loads(ann)["allocated"]
        return None if got is None else list(got)

    def published(self) -> bool:
        """Every agent published exactly what its kubelet says is allocated (no ID twice)."""
        for n in self.nodes:
            got = self.allocation(n)
            if got is None or len(got) != len(set(got)) or set(got) != self.held(n):
                return False
        return True

    def wait_published(self, timeout: float = 30) -> None:
        self.check_alive()
        wait_for(self.published, timeout, "the agents to publish what the kubelets hold")

    def check_alive(self) -> None:
        for name, a in self.agents.items():
            assert a.alive, f"agent of {name} exited:\n{a.tail()}"
        assert self.extender.proc.alive, f"the extender exited:\n{self.extender.proc.tail()}"

    def node_objects(self) -> list[dict[str, Any]]:
        return [self.api.node(n) for n in self.nodes]


@contextlib.contextmanager
def start_real_fleet(deployed: Deployed, work: Path) -> Iterator[RealFleet]:
    """NODES as real nodes, one agent each, the extender and a kube-scheduler (the `real_fleet` fixture of
    tests/kubelet); fails the test with the reason when the nodes do not come up."""
    cluster = deployed.cluster
    try:
        lab = KubeletLab.create(
            cluster, work / "lab", deviceplugin=deviceplugin_bin(), image_cache=image_cache_dir()
        )
        for name, source in NODES:
            lab.add(
                LabNode.from_fixture(
                    name, source, labels={**GPU_LABEL, **FLEET_LABEL}, taints=[dict(GPU_TAINT)]
                )
            )
        lab.start()
    except LabError as exc:
        pytest.fail(f"the real nodes did not come up: {exc}", pytrace=False)
    api = Api(cluster)
    agents: dict[str, Child] = {}
    agent_ports = {name: free_port() for name, _ in NODES}
    extender = Extender(deployed, work)
    scheduler: Scheduler | None = None
    try:
        for name, source in NODES:
            agents[name] = service(
                f"agent-{name}",
                [
                    str(TOPOSCALE),
                    "agent",
                    "--node-name",
                    name,
                    *GpuNode(name, source).agent_source,
                    "--pod-resources-socket",
                    str(lab.nodes[name].pod_resources_socket),
                    "--kubeconfig",
                    str(deployed.kubeconfigs["toposcale-agent"]),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(agent_ports[name]),
                    "--interval",
                    "0.5",
                    "--min-publish-interval",
                    "0.5",
                ],
                work / f"agent-{name}.log",
            ).start()
        extender.start()
        scheduler = Scheduler(deployed, work, extender.url).start()
        fleet = RealFleet(api, lab, agents, agent_ports, extender, scheduler, work)
        wait_for(lambda: (fleet.check_alive(), fleet.published())[1], 90, "every agent's first publish")
        yield fleet
    finally:
        if scheduler is not None:
            scheduler.stop()
        extender.stop()
        for a in agents.values():
            a.stop()
        problems = lab.down(remove_files=False)
        for name in lab.nodes:
            with contextlib.suppress(Exception):
                api.delete(f"/api/v1/nodes/{name}")
        assert not problems, f"the lab did not stop cleanly: {problems}"
