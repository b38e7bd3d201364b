"""Fleets of GPU nodes from the topology captures (tests/fixtures/topologies), for benchmarks and tests.

`boxes(...)`: the GPU boxes both scheduler benchmarks place pods on: the real topologies in turn (the 1-GPU
ones left out), 30% of GPUs taken at random, published as the agent's two annotations. `scheduler_fleet` makes
them Nodes for the real API server (bench_scheduler), `extender_fleet` full Node bodies as kube-scheduler
sends them to an extender (bench_extender, bench_placeable). A handful of named nodes from named captures:
lab.objects.gpu_node."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lab import FIXTURES as _FIXTURES

FIXTURES = _FIXTURES / "topologies"


@dataclass(frozen=True)
class Box:
    i: int
    name: str
    gpus: int
    free: int
    annotations: dict[str, str]  # toposcale.io/gpu-topology and toposcale.io/gpu-allocation


def boxes(size: int, seed: int, prefix: str, gpu_id: str = "GPU-{name}-{j}") -> Iterator[Box]:
    """`size` boxes named `<prefix>-00000`..., GPU ids from `gpu_id` (format fields name, j)."""
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

    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(FIXTURES.glob("*.txt")) if "1gpu" not in p.name]
    for i in range(size):
        name = f"{prefix}-{i:05d}"
        text = texts[i % len(texts)]
        n = len(parse_topo_text(text))
        topo = parse_topo_text(text, ids=[gpu_id.format(name=name, j=j) for j in range(n)])
        held = frozenset(g.id for g in topo.gpus if rng.random() < 0.3)
        alloc = Allocation(held, frozenset(), now_rfc3339())
        yield Box(
            i,
            name,
            n,
            n - len(held),
            {
                TOPOLOGY_ANNOTATION: dumps(topology_to_doc(topo)),
                ALLOCATION_ANNOTATION: dumps(allocation_to_doc(alloc)),
            },
        )


def scheduler_fleet(size: int, seed: int) -> list[dict[str, Any]]:
    """`size` Ready Nodes for the real API server, named bench-00000...; allocatable GPUs = the free ones."""
    from toposcale.extender.topology.annotations import now_rfc3339

    from lab.objects import make_node

    nodes = []
    for box in boxes(size, seed, "bench"):
        name, n, free = box.name, box.gpus, box.free
        nodes.append(
            make_node(
                name,
                annotations=dict(box.annotations),
                spec={},
                status={
                    "capacity": {"cpu": "96", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": str(n)},
                    "allocatable": {
                        "cpu": "96",
                        "memory": "1024Gi",
                        "pods": "110",
                        "nvidia.com/gpu": str(free),
                    },
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": now_rfc3339(),
                            "lastTransitionTime": now_rfc3339(),
                        }
                    ],
                },
            )
        )
    return nodes


def extender_fleet(size: int, seed: int) -> list[dict[str, Any]]:
    """`size` full Node bodies (no TypeMeta, as in a NodeList's items), as kube-scheduler sends them to an
    extender with nodeCacheCapable false: labels, podCIDR, capacity, conditions, addresses, nodeInfo."""
    nodes = []
    for box in boxes(size, seed, "gpu", "GPU-{name}-{j:02d}-5e1f0c3a-9d2b"):
        i, name, n = box.i, box.name, box.gpus
        nodes.append(
            {
                "metadata": {
                    "name": name,
                    "uid": f"uid-{i}",
                    "resourceVersion": str(1000 + i),
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "nvidia.com/gpu.count": str(n),
                        "node.kubernetes.io/instance-type": "gpu-box",
                    },
                    "annotations": dict(box.annotations),
                },
                "spec": {"podCIDR": f"10.{i // 250}.{i % 250}.0/24", "providerID": f"aws:///{name}"},
                "status": {
                    "capacity": {"cpu": "96", "memory": "1056000000Ki", "nvidia.com/gpu": str(n)},
                    "allocatable": {"cpu": "95", "memory": "1055000000Ki", "nvidia.com/gpu": str(n)},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-11-26T10:00:00Z",
                        }
                    ],
                    "addresses": [{"type": "InternalIP", "address": f"10.0.{i // 250}.{i % 250}"}],
                    "nodeInfo": {"kubeletVersion": "v1.30.4", "containerRuntimeVersion": "containerd://1.7"},
                },
            }
        )
    return nodes
