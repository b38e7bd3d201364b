"""Kubernetes objects for tests and benchmarks: the one place a Node or a Pod is written out (in the spirit of
kube-scheduler's pkg/scheduler/testing/wrappers.go).

    make_node("cpu-1")                                    # a v1.Node with capacity, as a kubelet registers it
    make_node("gpu-1", gpus=8, labels={...}, taints=[])   # (what the real API server is given)
    gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0])   # a Node as the extender is sent it, annotated by
                                                          # the agent from a topology capture (None: not yet)
    gpu_annotations("hgx", "hgx-h100-nvswitch-8gpu")      # just the agent's two annotations
    make_pod("vllm", 4, scope="nvlink")                   # a vLLM pod asking for GPUs

Topology captures are read from tests/fixtures/topologies (`topology(fixture, node)`), with device-plugin IDs
unique per node (`GPU-<node>-<i>`), as on a real fleet.
"""

from __future__ import annotations

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

from lab import FIXTURES as _FIXTURES

Obj = dict[str, Any]
TOPOLOGIES = _FIXTURES / "topologies"


def topology(fixture: str, node: str) -> Topology:
    """A topology capture (tests/fixtures/topologies/<fixture>.txt) with device-plugin IDs of `node`."""
    text = (TOPOLOGIES / f"{fixture}.txt").read_text()
    n = len(parse_topo_text(text))
    # Device-plugin IDs are UUIDs by default: unique per node, as on a real fleet.
    return parse_topo_text(text, ids=[f"GPU-{node}-{i}" for i in range(n)])


def gpu_annotations(
    name: str,
    fixture: str,
    used: list[int] | None = None,
    *,
    allocation: str | bool | None = True,
    observed: str | None = None,
) -> dict[str, str]:
    """The agent's annotations on node `name` with hardware `fixture` and GPUs `used` (by index) held.
    allocation: True = the allocation document, a string = that raw annotation, None/False = none."""
    topo = topology(fixture, name)
    out = {TOPOLOGY_ANNOTATION: dumps(topology_to_doc(topo))}
    if allocation is True:
        held = frozenset(topo.gpus[i].id for i in used or [])
        out[ALLOCATION_ANNOTATION] = dumps(
            allocation_to_doc(Allocation(held, frozenset(), observed or now_rfc3339()))
        )
    elif isinstance(allocation, str):
        out[ALLOCATION_ANNOTATION] = allocation
    return out


def make_node(
    name: str,
    *,
    gpus: int = 0,
    cpu: str = "64",
    memory: str = "512Gi",
    labels: dict[str, str] | None = None,
    taints: list[Obj] | None = None,
    annotations: dict[str, str] | None = None,
    os_label: bool = True,
    spec: Obj | None = None,
    status: Obj | None = None,
) -> Obj:
    """A v1.Node as a kubelet registers it: hostname (and os) labels, capacity = allocatable (cpu, memory,
    pods, ephemeral-storage, and nvidia.com/gpu when gpus > 0). `spec` and `status` replace the whole spec or
    status."""
    if status is None:
        capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "500Gi"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        status = {"capacity": capacity, "allocatable": dict(capacity)}
    base_labels = {"kubernetes.io/hostname": name} | ({"kubernetes.io/os": "linux"} if os_label else {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {**base_labels, **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"taints": taints or []} if spec is None else spec,
        "status": status,
    }


def gpu_node(
    name: str,
    fixture: str | None,
    used: list[int] | None = None,
    *,
    allocation: str | bool | None = True,
    observed: str | None = None,
    extra_annotations: dict[str, str] | None = None,
) -> Obj:
    """A v1.Node as the API server serves it to the extender, annotated by the agent (fixture None: no
    annotations yet): 8 GPUs and 96 CPUs allocatable, as in the extender's tests."""
    annotations: dict[str, str] = dict(extra_annotations or {})
    if fixture is not None:
        annotations |= gpu_annotations(name, fixture, used, allocation=allocation, observed=observed)
    return make_node(
        name,
        annotations=annotations,
        os_label=False,
        spec={},
        status={"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}, "images": []},
    )


def make_pod(
    name: str,
    gpus: int,
    *,
    scope: str | None = None,
    namespace: str = "default",
    node: str | None = None,
    phase: str = "Pending",
    resource: str = "nvidia.com/gpu",
) -> Obj:
    """A vLLM pod asking for `gpus` of `resource` (requests = limits); scope: the required-scope annotation;
    node: already bound there."""
    res = {"requests": {resource: str(gpus)}, "limits": {resource: str(gpus)}} if gpus else {}
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "resources": res}]},
        "status": {"phase": phase},
    }
    if scope:
        pod["metadata"]["annotations"]["toposcale.io/required-scope"] = scope
    if node:
        pod["spec"]["nodeName"] = node
    return pod
