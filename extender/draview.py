"""DRA nodes in the watch cache: which predictor a node uses, and its outcome under DRA first-fit.

A node is a DRA node for the managed resource when a DeviceClass declares `spec.extendedResourceName`
equal to it and ResourceSlices serve that node: kube-scheduler then picks the devices itself, first-fit
(`topology/dra.py`), and the node is scored on that predicted set with `dra.score_prediction`. Free devices
come from the ResourceClaims' allocations, not from the agent's allocation annotation. Anything the
predictor cannot judge (a slice feature or attribute it does not model, a claim the allocator cannot
satisfy, a device missing from the topology annotation) is an unknown node: neutral score with the reason.
Only the watch mode sees slices; full-Node requests keep the device-plugin prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .topology import dra
from .topology.model import Tier, Topology
from .topology.scoring import NodeDecision


@dataclass(frozen=True, slots=True)
class DraNode:
    """What DRA first-fit needs for one node: its pools (or why they are unusable), the devices held by
    claims, the DeviceClasses by name and the class serving the managed resource."""

    class_name: str
    pools: dra.Pools | None
    problem: str | None  # why the pools are unusable (a slice feature not modelled)
    allocated: frozenset[dra.DeviceID]
    classes: dict[str, Any]


def dra_node(class_name: str, slices: list[Any], node: str, allocated: set[dra.DeviceID],
             classes: dict[str, Any]) -> DraNode:
    try:
        pools = dra.prepare_pools(slices, node)
    except (dra.DraUnknown, ValueError, TypeError, KeyError, AttributeError) as exc:
        return DraNode(class_name, None, f"ResourceSlices not modelled: {exc}", frozenset(), classes)
    mine = frozenset(d for d in allocated if d in pools.device_index)
    return DraNode(class_name, pools, None, mine, classes)


def dra_decision(topo: Topology, node: DraNode, k: int, need: Tier | None) -> NodeDecision | str:
    """The decision (gpus as topology indices, as `decide_raw` gives them) or why it cannot be judged."""
    if node.pools is None:
        return node.problem or "ResourceSlices unusable"
    pools = node.pools
    if not pools.devices:
        return "DRA: no complete ResourceSlice pool for this node"
    pod = {"spec": {"containers": [{"resources": {"requests": {"r": str(k)}}}]}}
    try:
        reqs = dra.extended_resource_requests(pod, "r", node.class_name)
        p = dra.predict(pools, set(node.allocated), reqs, [], node.classes)
        idx = dra.join_topology(topo, pools.devices)
    except (dra.DraUnknown, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"DRA prediction unknown: {exc}"
    if p.status != "ok":
        return f"DRA prediction {p.status}: {p.reason}"
    names: list[str] = [f"#{i}" for i in range(len(topo))]
    free = 0
    for d, i in zip(pools.devices, idx, strict=True):
        if i is None:
            continue
        names[i] = d.name
        if d.id not in node.allocated:
            free |= 1 << i
    pos = {d.id: i for d, i in zip(pools.devices, idx, strict=True)}
    chosen = 0
    for dev in p.devices:
        i = pos.get(dev)
        if i is None:
            return f"DRA first-fit would give {dev[2]}, a device missing from the topology annotation"
        chosen |= 1 << i
    d = dra.score_prediction(topo, free, chosen, k, need.label if need is not None else "any", names)
    # As decide_raw: GPU positions in `gpus`, so `scoring.materialize` names them by the topology's ids.
    pos_of = {g.id: str(i) for i, g in enumerate(topo.gpus)}
    gpus = tuple(pos_of[g] for g in d.gpus)
    return replace(d, gpus=gpus)
