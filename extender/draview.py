"""DRA nodes in the watch cache: which predictor a node uses, and its outcome under DRA first-fit.

A node is a DRA node for the managed resource when a DeviceClass declares `spec.extendedResourceName`
equal to it and ResourceSlices serve that node: kube-scheduler then picks the devices itself, first-fit
(`topology/dra/`), and the node is scored on that predicted set with `dra.score_prediction`. Free devices
come from the ResourceClaims' allocations, not from the agent's allocation annotation. Anything the
predictor cannot judge (a slice feature or attribute it does not model, a claim the allocator cannot
satisfy, a device missing from the topology annotation) is an unknown node: neutral score with the reason.
Only an extender with cluster access sees slices: in the watch mode, names-only and full-Node requests alike
(`ClusterState.overlay`); `--standalone` keeps the device-plugin prediction.

Explicit claims (`claim_ask`): a pod with `spec.resourceClaims` asks what its claim says: the claim the
resourceclaim controller generated from the template (`status.resourceClaimStatuses`, in the claim watch),
else the ResourceClaimTemplate itself, else a named ResourceClaim. One claim is modelled (the allocator's
search across several claims is not); a claim already allocated, a template not in the cache, a request
form `claim_requests` does not model: a reason, and every node is neutral.
"""

from __future__ import annotations

import json
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


def dra_node(
    class_name: str, slices: list[Any], node: str, allocated: set[dra.DeviceID], classes: dict[str, Any]
) -> DraNode:
    try:
        pools = dra.prepare_pools(slices, node)
    except (dra.DraUnknown, ValueError, TypeError, KeyError, AttributeError) as exc:
        return DraNode(class_name, None, f"ResourceSlices not modelled: {exc}", frozenset(), classes)
    mine = frozenset(d for d in allocated if d in pools.device_index)
    return DraNode(class_name, pools, None, mine, classes)


@dataclass(frozen=True, slots=True)
class ClaimAsk:
    """A pod's explicit claim: the requests and constraints DRA first-fit must satisfy on a node."""

    key: str  # canonical JSON of the claim's devices: memo key (same ask, same outcome per node view)
    source: str  # which object it was read from, for reasons
    requests: tuple[dra.Request, ...]
    constraints: tuple[Any, ...]
    k: int  # devices asked in all


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def gpu_class(name: str, classes: dict[str, Any] | None) -> bool:
    """Whether a DeviceClass hands out NVIDIA GPUs: named after the driver, or a selector naming it."""
    if name == dra.DRIVER or classes is None:
        return True
    cls = classes.get(name)
    sels = _obj(_obj(cls).get("spec")).get("selectors") or []
    return any(dra.DRIVER in str(_obj(_obj(x).get("cel")).get("expression", "")) for x in sels)


def claim_ask(
    pod: Any, templates: dict[str, Any], claims: dict[str, Any], classes: dict[str, Any] | None = None
) -> ClaimAsk | str | None:
    """The pod's explicit claim; None without `spec.resourceClaims` or when no claim asks a GPU class (a NIC
    claim alone: the pod asks no managed GPU); a reason when it cannot be read."""
    spec = _obj(_obj(pod).get("spec"))
    refs = spec.get("resourceClaims")
    if not refs:
        return None
    if not isinstance(refs, list):
        return "spec.resourceClaims is not a list"
    ns = _obj(pod.get("metadata")).get("namespace") or "default"
    generated = {
        s.get("name"): s.get("resourceClaimName")
        for s in _obj(pod.get("status")).get("resourceClaimStatuses") or []
        if isinstance(s, dict)
    }
    found: list[tuple[str, Any]] = []
    for ref in refs:
        ref = _obj(ref)
        if isinstance(ref.get("resourceClaimName"), str):
            key = f"{ns}/{ref['resourceClaimName']}"
            what, obj = f"ResourceClaim {key}", claims.get(key)
            if obj is None:
                return f"{what} is not in the extender's cache"
        elif isinstance(ref.get("resourceClaimTemplateName"), str):
            tkey = f"{ns}/{ref['resourceClaimTemplateName']}"
            gen = generated.get(ref.get("name"))
            obj = claims.get(f"{ns}/{gen}") if isinstance(gen, str) else None
            what = f"ResourceClaim {ns}/{gen} from template {tkey}" if obj else f"template {tkey}"
            if obj is None:
                t = templates.get(tkey)
                if t is None:
                    return f"{what} is not in the extender's cache (not created yet, or not readable)"
                obj = {"spec": _obj(_obj(t.get("spec")).get("spec"))}
        else:
            return f"spec.resourceClaims entry {ref.get('name')!r} names no claim or template"
        found.append((what, obj))

    def asks_gpu(obj: dict[str, Any]) -> bool:
        return any(
            gpu_class(str(_obj(_obj(r).get("exactly")).get("deviceClassName", "")), classes)
            or _obj(r).get("firstAvailable")  # not modelled: reported below rather than ignored
            for r in _obj(_obj(obj.get("spec")).get("devices")).get("requests") or []
        )

    found = [(w, o) for w, o in found if asks_gpu(o)]
    if not found:
        return None
    for what, obj in found:
        if _obj(obj.get("status")).get("allocation"):
            return f"{what} is already allocated (its devices are fixed)"
    if len(found) != 1:
        return f"{len(found)} resource claims: the allocator's search across several claims is not modelled"
    what, cspec = found[0][0], _obj(found[0][1].get("spec"))
    try:
        reqs, cons = dra.claim_requests(cspec)
        if not reqs:
            return f"{what} asks no device"
        if any(r.all_devices for r in reqs):
            return f"{what}: allocationMode All is not scored"
        key = json.dumps(cspec.get("devices") or {}, sort_keys=True, default=str)
    except (dra.DraUnknown, ValueError, TypeError, KeyError, AttributeError) as exc:
        return f"{what}: DRA prediction unknown: {exc}"
    return ClaimAsk(key, what, tuple(reqs), tuple(cons), sum(r.count for r in reqs))


def dra_decision(
    topo: Topology, node: DraNode, k: int, need: Tier | None, ask: ClaimAsk | None = None
) -> NodeDecision | str:
    """The decision (gpus as topology indices, as `decide_raw` gives them) or why it cannot be judged:
    for `k` GPUs of the extended resource, or for the explicit claim `ask` (k = its device count)."""
    if node.pools is None:
        return node.problem or "ResourceSlices unusable"
    pools = node.pools
    if not pools.devices:
        return "DRA: no complete ResourceSlice pool for this node"
    try:
        if ask is None:
            pod = {"spec": {"containers": [{"resources": {"requests": {"r": str(k)}}}]}}
            reqs = dra.extended_resource_requests(pod, "r", node.class_name)
            cons: list[Any] = []
        else:
            reqs, cons = list(ask.requests), list(ask.constraints)
        p = dra.predict(pools, set(node.allocated), reqs, cons, node.classes)
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
