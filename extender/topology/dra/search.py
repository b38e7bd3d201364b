"""The allocator's depth-first search for one claim on one node (`predict`): the first complete solution
in device order, as the structured allocator's incubating variant finds it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .cel import Selector, _selectors, compile_selector
from .pools import Device, Pools
from .requests import Request
from .values import CelRuntimeError, DeviceID, DraUnknown, Obj, Version

# Devices examined in one prediction; upstream has no limit, a request path needs one. Counted per device
# looked at, not per allocateOne call: a hostile node of 2,048 GPU devices in pcieRoot groups of 3 and a claim
# of 4 sharing a root examined ~17 M devices within the old 2 M-call limit, 16.9 s on the event loop (8
# requests: 81 s); a real node (8-64 devices) needs a few thousand (issue 28).
_SEARCH_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class Prediction:
    status: str  # "ok" | "unsatisfiable" | "unknown" | "error" (the real scheduler fails the pod)
    devices: tuple[DeviceID, ...] = ()  # in allocation order, as status.allocation.devices.results lists them
    requests: tuple[str, ...] = ()  # the request each device was allocated for
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Search:
    def __init__(
        self,
        devices: list[Device],
        allocated: set[DeviceID],
        reqs: list[Request],
        class_sel: list[list[Selector]],
        req_sel: list[list[Selector]],
        constraints: list[Obj],
    ):
        self.devices = devices
        self.allocated = allocated
        self.reqs = reqs
        self.class_sel = class_sel
        self.req_sel = req_sel
        self.constraints = [
            (frozenset(c.get("requests") or ()), str(c["matchAttribute"]), [None, 0]) for c in constraints
        ]
        self.picking: set[DeviceID] = set()
        self.result: list[tuple[Device, str]] = []
        self.match: dict[tuple[int, int], bool] = {}
        self.calls = 0

    def selectable(self, ri: int, di: int) -> bool:
        key = (ri, di)
        hit = self.match.get(key)
        if hit is None:
            d = self.devices[di]
            hit = all(s(d) for s in self.class_sel[ri]) and all(s(d) for s in self.req_sel[ri])
            self.match[key] = hit
        return hit

    def add(self, req: str, d: Device) -> int:
        """Add to every constraint in order; returns how many accepted (all of them on success)."""
        for n, (names, attr, st) in enumerate(self.constraints):
            if names and req not in names:
                continue
            v = d.lookup(attr)
            if v is None:
                return n
            if isinstance(v, Version):
                v = ("version", v.text)
            if st[1] == 0:
                st[0], st[1] = (type(v), v), 1
                continue
            if st[0] != (type(v), v):
                return n
            st[1] += 1
        return len(self.constraints)

    def remove(self, req: str, upto: int) -> None:
        for names, _attr, st in self.constraints[:upto]:
            if names and req not in names:
                continue
            st[1] -= 1

    def take(self, ri: int, d: Device, must: bool) -> bool:
        if d.id in self.allocated or d.id in self.picking:
            return False
        if any(t.get("effect") in ("NoSchedule", "NoExecute") for t in d.taints):
            return False  # no tolerations (requests with tolerations are not modelled)
        req = self.reqs[ri].name
        n = self.add(req, d)
        if n < len(self.constraints):
            self.remove(req, n)
            if must:
                raise CelRuntimeError(
                    f"cannot add device {d.name} because a claim constraint would not be satisfied"
                )
            return False
        self.picking.add(d.id)
        self.result.append((d, req))
        return True

    def untake(self, ri: int, d: Device) -> None:
        self.result.pop()
        self.picking.discard(d.id)
        self.remove(self.reqs[ri].name, len(self.constraints))

    def _step(self) -> None:
        self.calls += 1
        if self.calls > _SEARCH_LIMIT:
            raise DraUnknown(f"search beyond {_SEARCH_LIMIT} devices examined")

    def one(self, ri: int, k: int, start: int, all_list: list[list[int]]) -> bool:
        self._step()
        if ri >= len(self.reqs):
            return True
        r = self.reqs[ri]
        if r.all_devices:
            cand = all_list[ri]
            if not cand:
                return False
            if k >= len(cand):
                return self.one(ri + 1, 0, 0, all_list)
            d = self.devices[cand[k]]
            if not self.take(ri, d, True):
                return False
            if self.one(ri, k + 1, 0, all_list):
                return True
            self.untake(ri, d)
            return False
        if k >= r.count:
            return self.one(ri + 1, 0, 0, all_list)
        for di in range(start, len(self.devices)):
            self.calls += 1  # _step inlined: the hot loop
            if self.calls > _SEARCH_LIMIT:
                self._step()
            d = self.devices[di]
            if d.id in self.allocated or d.id in self.picking:
                continue
            if not self.selectable(ri, di):
                continue
            if not self.take(ri, d, False):
                continue
            if self.one(ri, k + 1, di + 1, all_list):
                return True
            self.untake(ri, d)
        return False


def predict(
    pools: Pools,
    allocated: set[DeviceID],
    requests: Sequence[Request],
    constraints: Sequence[Obj],
    classes: Mapping[str, Obj],
) -> Prediction:
    """What the structured allocator (incubating variant) allocates for one claim on this node."""
    try:
        class_sel, req_sel = [], []
        for r in requests:
            cls = classes.get(r.device_class)
            if cls is None:
                return Prediction(
                    "error", reason=f"request {r.name}: device class {r.device_class} not found"
                )
            class_sel.append(_selectors(cls.get("spec"), f"class {r.device_class}"))
            req_sel.append([compile_selector(e) for e in r.selectors])
            if not r.all_devices and r.count < 1:
                raise DraUnknown(f"request {r.name}: count {r.count}")
        s = _Search(pools.devices, allocated, list(requests), class_sel, req_sel, list(constraints))
        all_list: list[list[int]] = []
        for ri, r in enumerate(requests):
            if r.all_devices:
                if pools.incomplete or pools.invalid:
                    return Prediction(
                        "error", reason=f"request {r.name} asks all devices of an incomplete pool"
                    )
                all_list.append([di for di in range(len(pools.devices)) if s.selectable(ri, di)])
            else:
                all_list.append([])
        done = s.one(0, 0, 0, all_list)
    except DraUnknown as exc:
        return Prediction("unknown", reason=str(exc))
    except CelRuntimeError as exc:
        return Prediction("error", reason=f"the scheduler would fail the pod: {exc}")
    if not done:
        if pools.invalid:
            return Prediction("error", reason=f"invalid resource pools: {', '.join(pools.invalid)}")
        return Prediction("unsatisfiable", reason=_unsat_reason(requests, constraints))
    return Prediction(
        "ok",
        devices=tuple(d.id for d, _ in s.result),
        requests=tuple(r for _, r in s.result),
        reason="DRA first-fit would give " + ",".join(d.name for d, _ in s.result),
    )


def _unsat_reason(requests: Sequence[Request], constraints: Sequence[Obj]) -> str:
    want = sum(r.count for r in requests if not r.all_devices)
    tail = ""
    if constraints:
        tail = " sharing " + ", ".join(str(c.get("matchAttribute")) for c in constraints)
    return f"DRA cannot allocate {want} matching free devices{tail} on this node"
