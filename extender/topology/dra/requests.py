"""What a claim asks: the requests and constraints of a ResourceClaim (template), the claim kube-scheduler
makes for a pod's extended resource, and the DeviceClass serving an extended resource."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import DraUnknown, Obj, parse_quantity

IMPLICIT_EXTENDED_PREFIX = "deviceclass.resource.kubernetes.io/"


@dataclass(slots=True)
class Request:
    name: str
    device_class: str
    count: int = 1
    all_devices: bool = False
    selectors: list[str] = field(default_factory=list)  # CEL expressions of the request itself


def claim_requests(spec: Mapping[str, Any]) -> tuple[list[Request], list[Obj]]:
    """(requests, constraints) of a ResourceClaim spec or a ResourceClaimTemplate's spec.spec."""
    devices = spec.get("devices") or {}
    reqs = []
    for r in devices.get("requests") or []:
        if r.get("firstAvailable"):
            raise DraUnknown(f"request {r.get('name')}: firstAvailable not modelled")
        ex = r.get("exactly")
        if not isinstance(ex, Mapping):
            raise DraUnknown(f"request {r.get('name')}: no `exactly`")
        if (
            ex.get("adminAccess")
            or ex.get("capacity")
            or ex.get("tolerations")
            or ex.get("derivedAttributes")
        ):
            raise DraUnknown(f"request {r.get('name')}: adminAccess/capacity/tolerations not modelled")
        mode = ex.get("allocationMode", "ExactCount")
        if mode not in ("ExactCount", "All"):
            raise DraUnknown(f"request {r.get('name')}: allocationMode {mode} not modelled")
        sels = []
        for i, s in enumerate(ex.get("selectors") or []):
            expr = ((s or {}).get("cel") or {}).get("expression")
            if not isinstance(expr, str):
                raise DraUnknown(f"request {r.get('name')}: selector #{i} is not a CEL expression")
            sels.append(expr)
        reqs.append(
            Request(
                name=str(r.get("name")),
                device_class=str(ex.get("deviceClassName", "")),
                count=int(ex.get("count", 1)),
                all_devices=mode == "All",
                selectors=sels,
            )
        )
    for c in devices.get("constraints") or []:
        if set(c) - {"requests", "matchAttribute"} or not c.get("matchAttribute"):
            raise DraUnknown(f"constraint {c}: only matchAttribute is modelled")
    return reqs, list(devices.get("constraints") or [])


def _quantity_int(v: Any) -> int:
    q = parse_quantity(str(v))
    if q.denominator != 1:
        raise DraUnknown(f"extended resource quantity {v!r} is not whole")
    return int(q)


def extended_resource_requests(pod: Mapping[str, Any], resource: str, class_name: str) -> list[Request]:
    """The requests kube-scheduler puts in the claim it creates for a pod's extended resource (KEP-5004,
    extendeddynamicresources.go createRequestsAndMappings): one `container-<i>-request-<j>` per container
    asking the resource, `i` counting init containers first, `j` the resource's index among the
    container's sorted request names. Init containers asking it are not modelled (DraUnknown)."""
    spec = pod.get("spec") or {}
    inits = spec.get("initContainers") or []
    for c in inits:
        if resource in ((c.get("resources") or {}).get("requests") or {}):
            raise DraUnknown("an init container asks the extended resource: request reuse not modelled")
    reqs = []
    for i, c in enumerate(spec.get("containers") or [], start=len(inits)):
        creqs = (c.get("resources") or {}).get("requests") or {}
        if resource not in creqs:
            continue
        n = _quantity_int(creqs[resource])
        if n == 0:
            continue
        ridx = sorted(creqs).index(resource)
        reqs.append(Request(name=f"container-{i}-request-{ridx}", device_class=class_name, count=n))
    reqs.sort(key=lambda r: r.name)
    return reqs


def class_for_extended_resource(classes: Iterable[Obj], resource: str) -> Obj | None:
    """The DeviceClass that serves an extended resource: `spec.extendedResourceName` equal to it (the most
    recently created wins, ties: the lexicographically first name), else the implicit
    `deviceclass.resource.kubernetes.io/<class name>`."""
    named = [c for c in classes if (c.get("spec") or {}).get("extendedResourceName") == resource]
    if named:
        named.sort(key=lambda c: str(c.get("metadata", {}).get("name", "")))
        named.sort(key=lambda c: str(c.get("metadata", {}).get("creationTimestamp", "")), reverse=True)
        return named[0]
    if resource.startswith(IMPLICIT_EXTENDED_PREFIX):
        name = resource[len(IMPLICIT_EXTENDED_PREFIX) :]
        for c in classes:
            if c.get("metadata", {}).get("name") == name:
                return c
    return None
