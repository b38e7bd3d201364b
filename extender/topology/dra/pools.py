"""A node's ResourceSlices as the allocator sees them: pools by (driver, pool name), the newest
generation, complete pools only, devices in slice order (`prepare_pools`); the devices claims hold
(`allocated_devices`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .values import DeviceID, DraUnknown, Obj, _attr_value, _split_name, parse_quantity


@dataclass(slots=True)
class Device:
    driver: str
    pool: str
    name: str
    raw_attributes: dict[str, Any]  # qualified name as published -> value
    attributes: dict[str, dict[str, Any]]  # domain -> id -> value (what CEL sees)
    capacity: dict[str, dict[str, Fraction]]
    taints: list[Obj]

    @property
    def id(self) -> DeviceID:
        return (self.driver, self.pool, self.name)

    def lookup(self, qualified: str) -> Any:
        """lookupAttribute: the fully-qualified name, else the bare id when the domain is the driver's."""
        if qualified in self.raw_attributes:
            return self.raw_attributes[qualified]
        domain, _, ident = qualified.partition("/")
        if ident and domain == self.driver and ident in self.raw_attributes:
            return self.raw_attributes[ident]
        return None


@dataclass(slots=True)
class Pools:
    """A node's devices in the allocator's order, and what was skipped."""

    devices: list[Device] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    device_index: dict[DeviceID, Device] = field(default_factory=dict)


def _device(driver: str, pool: str, d: Any) -> Device:
    if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
        raise DraUnknown("a ResourceSlice device without a name")
    name = d["name"]
    for unsupported in (
        "consumesCounters",
        "bindingConditions",
        "bindingFailureConditions",
        "nodeName",
        "nodeSelector",
        "allNodes",
        "compatibilityGroups",
    ):
        if d.get(unsupported):
            raise DraUnknown(f"device {name}: {unsupported} is not modelled")
    if d.get("allowMultipleAllocations"):
        raise DraUnknown(f"device {name}: allowMultipleAllocations is not modelled")
    raw: dict[str, Any] = {}
    attrs: dict[str, dict[str, Any]] = {}
    for qname, a in (d.get("attributes") or {}).items():
        v = _attr_value(qname, a)
        raw[qname] = v
        dom, ident = _split_name(qname, driver)
        attrs.setdefault(dom, {})[ident] = v
    cap: dict[str, dict[str, Fraction]] = {}
    for qname, c in (d.get("capacity") or {}).items():
        if not isinstance(c, Mapping) or "value" not in c:
            raise DraUnknown(f"device {name}: capacity {qname} without a value")
        if c.get("requestPolicy"):
            raise DraUnknown(f"device {name}: capacity {qname} has a requestPolicy (not modelled)")
        dom, ident = _split_name(qname, driver)
        cap.setdefault(dom, {})[ident] = parse_quantity(str(c["value"]))
    return Device(driver, pool, name, raw, attrs, cap, list(d.get("taints") or []))


def prepare_pools(slices: Iterable[Obj], node_name: str | None = None) -> Pools:
    """The devices of the slices that serve `node_name` (spec.nodeName equal, or allNodes), grouped and
    ordered as GatherPools does. Slices of other nodes are ignored. Raises DraUnknown for slice features
    not modelled (node selectors, shared counters, per-device node selection)."""
    groups: dict[tuple[str, str], list[Obj]] = {}
    for s in slices:
        spec = s.get("spec") or {}
        if node_name is not None and spec.get("nodeName") not in (None, node_name):
            continue
        if spec.get("nodeName") is None and not spec.get("allNodes"):
            if spec.get("nodeSelector") is not None or spec.get("perDeviceNodeSelection"):
                raise DraUnknown(f"slice {s.get('metadata', {}).get('name')}: node selection not modelled")
            continue  # nothing known set: upstream skips it
        if spec.get("sharedCounters"):
            raise DraUnknown(f"slice {s.get('metadata', {}).get('name')}: sharedCounters not modelled")
        pool = spec.get("pool") or {}
        key = (str(spec.get("driver", "")), str(pool.get("name", "")))
        cur = groups.get(key)
        gen = int(pool.get("generation", 0))
        if cur is None:
            groups[key] = [s]
            continue
        cur_gen = int(cur[0]["spec"]["pool"].get("generation", 0))
        if gen < cur_gen:
            continue
        if gen > cur_gen:
            groups[key] = [s]
        else:
            cur.append(s)
    out = Pools()
    for (driver, pool), group in sorted(groups.items()):
        want = int(group[0]["spec"]["pool"].get("resourceSliceCount", 1))
        label = f"{driver}/{pool}"
        if len(group) != want:
            out.incomplete.append(label)
            continue
        group.sort(key=lambda s: str(s.get("metadata", {}).get("name", "")))
        devs = [_device(driver, pool, d) for s in group for d in (s["spec"].get("devices") or [])]
        names = [d.name for d in devs]
        if len(set(names)) != len(names):
            out.invalid.append(label)
            continue
        out.devices.extend(devs)
    out.device_index = {d.id: d for d in out.devices}
    return out


def allocated_devices(claims: Iterable[Obj]) -> set[DeviceID]:
    """Every device some ResourceClaim's status.allocation holds (what the scheduler counts as in use)."""
    used: set[DeviceID] = set()
    for c in claims:
        alloc = (c.get("status") or {}).get("allocation") or {}
        for r in (alloc.get("devices") or {}).get("results") or []:
            if r.get("shareID"):
                continue  # a share of a multi-allocatable device does not take it whole
            used.add((str(r.get("driver")), str(r.get("pool")), str(r.get("device"))))
    return used
