"""The demo's simulated fleet: Nodes built from real `nvidia-smi topo -m` captures, with the toposcale
annotations a node agent would publish, and the GPUs each node has handed out.

The topologies are real (package data, `topologies/*.txt`, each headed by its source); GPU models, memory
sizes and the GPUs other workloads already hold are the demo's settings, chosen so that placement matters:
some nodes still have a whole NVLink or PCIe-switch group free, some only one NUMA node's worth, some none.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from importlib import resources
from itertools import combinations
from typing import Any

from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    Allocation,
    allocation_to_doc,
    dumps,
    now_rfc3339,
    topology_to_doc,
)
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.topo_text import parse_topo_text
from toposcale.simulate import tiers

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    topology_file: str  # in toposcale/demo/topologies/
    gpu_model: str
    memory_mib: int
    taken: tuple[int, ...] = ()  # GPU indices already held by other (1-GPU) workloads


DEFAULT_FLEET: tuple[NodeSpec, ...] = (
    NodeSpec("gpu-hgx-h100-0", "hgx-h100-nvswitch-8gpu.txt", "NVIDIA H100 80GB HBM3", 81559),
    NodeSpec("gpu-pcie-l40s-0", "pcie-8gpu-two-switch-trees.txt", "NVIDIA L40S", 46068),
    NodeSpec("gpu-a6000-0", "a6000-8gpu-nvlink-bridge-pairs.txt", "NVIDIA RTX A6000", 49140, taken=(4,)),
    NodeSpec(
        "gpu-rtx4090-0", "rtx4090-8gpu-node-per-socket.txt", "NVIDIA GeForce RTX 4090", 24564, taken=(0, 5)
    ),
    NodeSpec("gpu-l40s-0", "l40s-4gpu-two-per-socket.txt", "NVIDIA L40S", 46068),
)


def gpu_uuid(node: str, index: int) -> str:
    """A stable, UUID-shaped device ID per (node, GPU), as the device plugin reports `GPU-<uuid>`."""
    digest = hashlib.sha256(f"{node}/{index}".encode()).digest()[:16]
    return f"GPU-{uuid.UUID(bytes=digest)}"


@dataclass(slots=True)
class SimNode:
    name: str
    topology: Topology
    gpu_model: str
    memory_mib: int
    allocated: set[str] = field(default_factory=set)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # GPU id -> (namespace, pod) holding it

    @property
    def capacity(self) -> int:
        return len(self.topology)

    def free_ids(self) -> list[str]:
        return [g.id for g in self.topology.gpus if g.id not in self.allocated]

    def indices(self, ids: list[str] | set[str]) -> list[int]:
        out = []
        for gid in ids:
            i = self.topology.index_of(gid)
            if i is None:
                raise KeyError(f"{self.name} has no GPU {gid}")
            out.append(i)
        return sorted(out)

    def allocate(self, pod: str, ids: list[str], namespace: str) -> None:
        clash = [g for g in ids if g in self.allocated]
        if clash:
            raise ValueError(f"{self.name}: GPUs {clash} already allocated")
        self.indices(ids)
        self.allocated.update(ids)
        for g in ids:
            self.owners[g] = (namespace, pod)

    def release(self, pod: str) -> list[str]:
        ids = [g for g, (_ns, owner) in self.owners.items() if owner == pod]
        for g in ids:
            self.allocated.discard(g)
            del self.owners[g]
        return ids

    def node_object(self) -> dict[str, Any]:
        """The v1.Node the scheduler would hand the extender (nodeCacheCapable: false)."""
        alloc = Allocation(allocated=frozenset(self.allocated), unhealthy=frozenset(), observed=now_rfc3339())
        count = str(self.capacity)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "nvidia.com/gpu.product": self.gpu_model.replace(" ", "-"),
                    "nvidia.com/gpu.count": count,
                },
                "annotations": {
                    TOPOLOGY_ANNOTATION: dumps(topology_to_doc(self.topology)),
                    ALLOCATION_ANNOTATION: dumps(allocation_to_doc(alloc)),
                },
            },
            "spec": {},
            "status": {
                "capacity": {GPU_RESOURCE: count, "cpu": "64", "memory": "512Gi", "pods": "110"},
                "allocatable": {GPU_RESOURCE: count, "cpu": "63", "memory": "500Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }


def load_topology_text(filename: str) -> str:
    return resources.files(__package__).joinpath("topologies", filename).read_text(encoding="utf-8")


def build_fleet(specs: tuple[NodeSpec, ...] = DEFAULT_FLEET) -> list[SimNode]:
    nodes = []
    for spec in specs:
        text = load_topology_text(spec.topology_file)
        probe = parse_topo_text(text)
        ids = [gpu_uuid(spec.name, g.index) for g in probe.gpus]
        topo = parse_topo_text(text, ids={g.index: ids[i] for i, g in enumerate(probe.gpus)})
        node = SimNode(spec.name, topo, spec.gpu_model, spec.memory_mib)
        for i in spec.taken:
            node.allocate(f"batch-job-{i}", [topo.gpus[i].id], "batch")
        nodes.append(node)
    return nodes


def single_numa(topo: Topology, idx: list[int]) -> bool:
    """Whether the set stays on one NUMA node, by the simulator's rule (`toposcale.simulate.tiers`), so the
    demo and `toposcale simulate` say the same of the same box: NUMA ids or CPU affinities that differ between
    the node's GPUs decide; where the capture shows neither (NUMA N/A, one affinity on every GPU), no SYS pair
    means one NUMA node."""
    return tiers.single_numa(topo, sum(1 << i for i in idx))


def has_free_single_numa_set(node: SimNode, k: int) -> bool:
    """Whether some `k` free GPUs of this node stay on one NUMA node (the rule of `single_numa`)."""
    free = [i for i, g in enumerate(node.topology.gpus) if g.id not in node.allocated]
    return any(single_numa(node.topology, list(c)) for c in combinations(free, k))
