"""Predict the devices kube-scheduler's DRA allocator gives a claim on one node; score that set. Pure.

With dynamic resource allocation (resource.k8s.io/v1, GA) kube-scheduler itself picks the devices, with the
structured allocator of k8s.io/dynamic-resource-allocation/structured. Kubernetes 1.37's default feature set
(DRAConsumableCapacity, DRADeviceBindingConditions, DRAFractionalCapacityRange beta, on) selects its
`incubating` variant (internal/incubating/allocator_incubating.go, pools_incubating.go), reproduced here:

- Pools: the node's slices grouped by (driver, pool name); only the highest `pool.generation` counts; a pool
  with fewer slices than `pool.resourceSliceCount` is incomplete and skipped; duplicate device names make it
  invalid (skipped). Pools sorted by (driver, pool name), a pool's slices by slice name, devices in slice
  order (NVIDIA's driver fills a slice from a Go map, so the order is whatever it published: read it, never
  assume gpu-0 first).
- Search: claim after claim, request after request, device after device, depth first. For the next device of
  the same request the scan starts just after the previous device (combinations, not permutations); a new
  request starts from the first device again. A candidate must be free (not in any claim's
  `status.allocation`, not already picked), match the class's selectors then the request's (CEL, in order,
  stopping at the first false), and keep every `matchAttribute` constraint true: the first device fixes the
  value, every further one must carry the same value of the same type. On a dead end it backtracks; the
  first complete solution wins. So with `matchAttribute: resource.kubernetes.io/pcieRoot` and 4 devices the
  answer is the first 4 free devices, in order, of the group of the first device whose group still has 4.
- `allocationMode: All`: every selectable device of the node, all free, all satisfying the constraints, or
  nothing (a constraint violated by one of them is an error, as upstream).

CEL: only the forms people write are evaluated, exactly (see `compile_selector`): `device.driver` compared to
a string; `device.attributes["<domain>"].<id>` (or `["<id>"]`) compared with `==`/`!=` to a string, int or
bool literal, `<`, `<=`, `>`, `>=` for ints; string `startsWith`/`endsWith`/`contains`; `"<id>" in
device.attributes["<domain>"]`; `device.capacity["<domain>"].<id>.compareTo(quantity("..."))` compared to an
int, `.isGreaterThan(quantity(...))` / `.isLessThan(...)`; joined by `&&`, `||`, `!` and parentheses. An
attribute without a domain belongs to the driver's domain (`gpu.nvidia.com`), as the CEL environment
builds `device.attributes`. A missing domain is an empty map; a missing attribute is a CEL runtime error,
which makes the real scheduler fail the pod: reported as `error`. Anything else (other functions, version
attributes, a type mismatch) is `unknown`: never a guess. So is what no real claim or slice holds, at bounded
cost: an expression over 10 KiB (the API's limit) or nested deeper than 50 levels, an integer literal outside
int64, a quantity of more than 64 digits or with a decimal exponent beyond ±64.

Also `unknown` (features this module does not model): adminAccess, firstAvailable, capacity requests,
tolerations with tainted devices, distinctAttribute, devices with counters, binding conditions,
allowMultipleAllocations, per-device node selection, slices with a node selector.

API:

    prepare_pools(slices, node_name) -> Pools       # a node's ResourceSlices (v1 dicts), allocator order
    allocated_devices(claims) -> set[DeviceID]         # every (driver, pool, device) in claims' allocations
    predict(pools, allocated, requests, constraints, classes) -> Prediction
    claim_requests(claim_spec) / extended_resource_requests(pod, resource, class_name)
    class_for_extended_resource(classes, resource) -> DeviceClass dict | None
    join_topology(topo, pools, devices) -> list[int | None]   # GPU index per device (uuid, else pcieBusID)
    score_prediction(topo, free_mask, chosen_mask, k, scope) -> NodeDecision
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from toposcale.core.quantity import QuantityError
from toposcale.core.quantity import parse_quantity as core_parse_quantity

from .allocator import indices_of, mask_of, wiring
from .model import Tier, Topology
from .scoring import (
    MAX_SCORE,
    NEUTRAL_SCORE,
    QUALITY_WEIGHT,
    NodeDecision,
    _excess,
    _max_group,
    _meets,
    _quality,
    _span,
    _tier,
    required_scope_tier,
)

__all__ = [
    "DRIVER",
    "EXTENDED_RESOURCE_CLAIM_ANNOTATION",
    "PCIE_ROOT",
    "DeviceID",
    "DraUnknown",
    "Pools",
    "Prediction",
    "Request",
    "allocated_devices",
    "claim_requests",
    "class_for_extended_resource",
    "compile_selector",
    "extended_resource_requests",
    "join_topology",
    "parse_quantity",
    "predict",
    "prepare_pools",
    "score_prediction",
]

DRIVER = "gpu.nvidia.com"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
EXTENDED_RESOURCE_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"
GPU_CLASS_SELECTOR = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"
IMPLICIT_EXTENDED_PREFIX = "deviceclass.resource.kubernetes.io/"
# Devices examined in one prediction; upstream has no limit, a request path needs one. Counted per device
# looked at, not per allocateOne call: a hostile node of 2,048 GPU devices in pcieRoot groups of 3 and a claim
# of 4 sharing a root examined ~17 M devices within the old 2 M-call limit, 16.9 s on the event loop (8
# requests: 81 s); a real node (8-64 devices) needs a few thousand (issue 28).
_SEARCH_LIMIT = 200_000

DeviceID = tuple[str, str, str]  # (driver, pool, device)
Obj = dict[str, Any]


class DraUnknown(Exception):
    """Input the predictor does not model exactly: the node's prediction is unknown (neutral score)."""


class CelRuntimeError(Exception):
    """A selector that the real allocator evaluates to an error (the scheduler then fails the pod)."""


# --- values ---------------------------------------------------------------------------------------------


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes resource.Quantity string ("80Gi", "81559Mi", "1.5T", "100m", "1e3") as an exact number:
    toposcale.core.quantity's, on the text trimmed as Quantity.UnmarshalJSON trims it. Beyond the modelled
    range (64 characters, decimal exponents beyond +-64: "1e99999999" made Fraction compute a 10^8-digit
    number, holding the extender, issue 28) is DraUnknown, as is any text that is not a quantity."""
    try:
        return core_parse_quantity(text.strip() if isinstance(text, str) else text)
    except QuantityError as exc:
        raise DraUnknown(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Version:
    text: str


def _attr_value(name: str, attr: Any) -> Any:
    if not isinstance(attr, Mapping):
        raise DraUnknown(f"attribute {name}: not an object")
    kinds = [k for k in ("string", "int", "bool", "version") if k in attr]
    if len(kinds) != 1:
        raise DraUnknown(f"attribute {name}: expected exactly one of string/int/bool/version")
    v = attr[kinds[0]]
    if kinds[0] == "version":
        return Version(str(v))
    if kinds[0] == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise DraUnknown(f"attribute {name}: int value {v!r}")
        return v
    if kinds[0] == "bool":
        if not isinstance(v, bool):
            raise DraUnknown(f"attribute {name}: bool value {v!r}")
        return v
    if not isinstance(v, str):
        raise DraUnknown(f"attribute {name}: string value {v!r}")
    return v


def _split_name(name: str, driver: str) -> tuple[str, str]:
    """A qualified name as the CEL environment splits it: no domain means the driver's."""
    if "/" in name:
        domain, _, ident = name.partition("/")
        return domain, ident
    return driver, name


# --- devices and pools ----------------------------------------------------------------------------------


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


# --- CEL subset -----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>-?[0-9]+(?![0-9.eEuU]))
  | (?P<op>&&|\|\||==|!=|>=|<=|[<>!()\[\].,])
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r"}

# A compiled selector: device -> bool; raises CelRuntimeError for what CEL would evaluate to an error.
Selector = Callable[[Device], bool]


# The API server refuses a device selector's CEL expression longer than this (k8s.io/api/resource/v1
# CELSelectorExpressionMaxLength); whatever claims to be one is not parsed.
CEL_MAX_LENGTH = 10 * 1024
# Nesting (parentheses, `!`, method arguments) deeper than this is not modelled: the parser is recursive, and
# a few hundred levels (well within 10 KiB) raised RecursionError out of the extender's request (issue 28).
CEL_MAX_NESTING = 50
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _tokens(expr: str) -> list[tuple[str, Any]]:
    if len(expr) > CEL_MAX_LENGTH:
        raise DraUnknown(
            f"CEL expression of {len(expr)} characters: longer than the API allows ({CEL_MAX_LENGTH})"
        )
    out: list[tuple[str, Any]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise DraUnknown(f"CEL {expr!r}: cannot read {expr[pos : pos + 12]!r}")
        pos = m.end()
        if m.group("str") is not None:
            body = m.group("str")[1:-1]
            if "\\" in body:
                text, i = [], 0
                while i < len(body):
                    if body[i] == "\\":
                        if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                            raise DraUnknown(f"CEL {expr!r}: escape not modelled")
                        text.append(_ESCAPES[body[i + 1]])
                        i += 2
                    else:
                        text.append(body[i])
                        i += 1
                body = "".join(text)
            out.append(("str", body))
        elif m.group("num") is not None:
            digits = m.group("num")
            value = int(digits) if len(digits.lstrip("-")) <= 19 else None
            if value is None or not _INT64_MIN <= value <= _INT64_MAX:
                raise DraUnknown(f"CEL {expr[:80]!r}: integer {digits[:24]!r} is not an int64")
            out.append(("int", value))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            word = m.group("id")
            if word in ("true", "false"):
                out.append(("bool", word == "true"))
            else:
                out.append(("id", word))
    out.append(("end", None))
    return out


class _Err:
    """A CEL error value (errors propagate, but `&&`/`||` absorb them when the other side decides)."""

    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


_Eval = Callable[[Device], Any]


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0
        self.depth = 0

    def unknown(self, why: str) -> DraUnknown:
        shown = self.expr if len(self.expr) <= 200 else self.expr[:200] + "..."
        return DraUnknown(f"CEL {shown!r}: {why}")

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, kind: str, value: Any = None) -> Any:
        k, v = self.toks[self.i]
        if k != kind or (value is not None and v != value):
            raise self.unknown(f"expected {value or kind}, got {v!r}")
        self.i += 1
        return v

    def accept(self, value: str) -> bool:
        if self.toks[self.i] == ("op", value):
            self.i += 1
            return True
        return False

    def parse(self) -> _Eval:
        e = self.or_()
        if self.peek()[0] != "end":
            raise self.unknown(f"unexpected {self.peek()[1]!r}")
        return e

    def or_(self) -> _Eval:
        return self._connective("||", self.and_, stop=True)

    def and_(self) -> _Eval:
        return self._connective("&&", self.unary, stop=False)

    def _connective(self, op: str, operand: Any, *, stop: bool) -> _Eval:
        """`a op b op ...` with CEL's error absorption: the first operand equal to `stop` decides (True for
        ||, False for &&), else an error among the operands, else `not stop`."""
        terms = [operand()]
        while self.accept(op):
            terms.append(operand())
        if len(terms) == 1:
            return terms[0]

        def ev(d: Device) -> Any:
            err = None
            for t in terms:
                v = t(d)
                if v is stop:
                    return stop
                if isinstance(v, _Err):
                    err = err or v
                elif v is not (not stop):
                    raise self.unknown(f"{op} of a non-bool")
            return err if err is not None else (not stop)

        return ev

    def unary(self) -> _Eval:
        # every level of nesting passes here (a parenthesis or method argument through or_/and_, a `!` itself)
        self.depth += 1
        try:
            if self.depth > CEL_MAX_NESTING:
                raise self.unknown(f"nested deeper than {CEL_MAX_NESTING} levels (not modelled)")
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> _Eval:
        if self.accept("!"):
            inner = self.unary()

            def ev(d: Device) -> Any:
                v = inner(d)
                if isinstance(v, _Err):
                    return v
                if not isinstance(v, bool):
                    raise self.unknown("! of a non-bool")
                return not v

            return ev
        return self.relation()

    def relation(self) -> _Eval:
        left = self.primary()
        k, op = self.peek()
        if k == "id" and op == "in":
            self.i += 1
            right = self.primary()

            def ev_in(d: Device) -> Any:
                key, m = left(d), right(d)
                for v in (key, m):
                    if isinstance(v, _Err):
                        return v
                if not isinstance(key, str) or not isinstance(m, dict):
                    raise self.unknown("`in` other than a string key in an attribute map")
                return key in m

            return ev_in
        if k != "op" or op not in ("==", "!=", "<", "<=", ">", ">="):
            return left
        self.i += 1
        right = self.primary()

        def ev(d: Device) -> Any:
            a, b = left(d), right(d)
            for v in (a, b):
                if isinstance(v, _Err):
                    return v
            if type(a) is not type(b) or not isinstance(a, str | int | bool):
                raise self.unknown(f"comparison of {type(a).__name__} and {type(b).__name__}")
            if op == "==":
                return a == b
            if op == "!=":
                return a != b
            if not isinstance(a, int) or isinstance(a, bool):
                raise self.unknown(f"{op} on {type(a).__name__}")
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

        return ev

    def primary(self) -> _Eval:
        k, v = self.peek()
        if k == "op" and v == "(":
            self.i += 1
            e = self.or_()
            self.take("op", ")")
            return self.postfix(e)
        if k in ("str", "int", "bool"):
            self.i += 1
            return self.postfix(lambda d, v=v: v)
        if k == "id" and v == "device":
            self.i += 1
            self.take("op", ".")
            what = self.take("id")
            if what == "driver":
                return self.postfix(lambda d: d.driver)
            if what in ("attributes", "capacity"):
                self.take("op", "[")
                domain = self.take("str")
                self.take("op", "]")
                base: _Eval = (
                    (lambda d: d.attributes.get(domain, {}))
                    if what == "attributes"
                    else (lambda d: d.capacity.get(domain, {}))
                )
                return self.postfix(base)
            raise self.unknown(f"device.{what} not modelled")
        if k == "id" and v == "quantity":
            self.i += 1
            self.take("op", "(")
            q = parse_quantity(self.take("str"))
            self.take("op", ")")
            return self.postfix(lambda d: _Qty(q))
        raise self.unknown(f"{v!r} not modelled")

    def postfix(self, base: _Eval) -> _Eval:
        while True:
            if self.accept("["):
                key = self.take("str")
                self.take("op", "]")
                base = self._select(base, key)
            elif self.accept("."):
                name = self.take("id")
                if self.peek() == ("op", "("):
                    base = self._method(base, name)
                else:
                    base = self._select(base, name)
            else:
                return base

    def _select(self, base: _Eval, key: str) -> _Eval:
        def ev(d: Device) -> Any:
            m = base(d)
            if isinstance(m, _Err):
                return m
            if not isinstance(m, dict):
                raise self.unknown("field selection on a non-map")
            if key not in m:
                return _Err(f"no such key: {key}")
            v = m[key]
            if isinstance(v, Fraction):
                return _Qty(v)
            if isinstance(v, Version):
                raise self.unknown(f"version attribute {key} (semver) not modelled")
            return v

        return ev

    def _method(self, base: _Eval, name: str) -> _Eval:
        self.take("op", "(")
        arg = self.or_()
        self.take("op", ")")
        if name not in ("compareTo", "isGreaterThan", "isLessThan", "startsWith", "endsWith", "contains"):
            raise self.unknown(f"method {name}() not modelled")

        def ev(d: Device) -> Any:
            a, b = base(d), arg(d)
            for v in (a, b):
                if isinstance(v, _Err):
                    return v
            if name in ("startsWith", "endsWith", "contains"):
                if not isinstance(a, str) or not isinstance(b, str):
                    raise self.unknown(f"{name}() on non-strings")
                fn = {"startsWith": a.startswith, "endsWith": a.endswith, "contains": a.__contains__}
                return fn[name](b)
            if not isinstance(a, _Qty) or not isinstance(b, _Qty):
                raise self.unknown(f"{name}() on non-quantities")
            if name == "compareTo":
                return (a.v > b.v) - (a.v < b.v)
            return a.v > b.v if name == "isGreaterThan" else a.v < b.v

        return self.postfix(ev)


@dataclass(frozen=True, slots=True)
class _Qty:
    v: Fraction


@lru_cache(maxsize=1024)
def _compile(expr: str) -> _Eval | DraUnknown:
    try:
        return _Parser(expr).parse()
    except DraUnknown as exc:
        return exc


def compile_selector(expr: str) -> Selector:
    """A selector's CEL expression as a function of a device. Raises DraUnknown for forms not modelled
    (at compile time, or at evaluation for type mismatches); the function raises CelRuntimeError where CEL
    itself would give an error (a missing attribute)."""
    ev = _compile(expr)
    if isinstance(ev, DraUnknown):
        raise ev

    def run(d: Device) -> bool:
        v = ev(d)
        if isinstance(v, _Err):
            raise CelRuntimeError(f"{expr!r} on {d.name}: {v.msg}")
        if not isinstance(v, bool):
            raise DraUnknown(f"CEL {expr!r}: result is not a bool")
        return v

    return run


def _selectors(obj: Mapping[str, Any] | None, what: str) -> list[Selector]:
    out = []
    for i, s in enumerate((obj or {}).get("selectors") or []):
        cel = (s or {}).get("cel") or {}
        expr = cel.get("expression")
        if not isinstance(expr, str):
            raise DraUnknown(f"{what}: selector #{i} is not a CEL expression")
        out.append(compile_selector(expr))
    return out


# --- requests -------------------------------------------------------------------------------------------


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


# --- the allocator --------------------------------------------------------------------------------------


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


# --- topology join and scoring --------------------------------------------------------------------------

_PCI = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")


def _pci_key(text: Any) -> tuple[int, int, int, int] | None:
    if not isinstance(text, str):
        return None
    m = _PCI.fullmatch(text.strip())
    if m is None:
        return None
    dom, bus, dev, fn = m.groups()
    return (int(dom or "0", 16), int(bus, 16), int(dev, 16), int(fn))


def join_topology(topo: Topology, devices: Iterable[Device]) -> list[int | None]:
    """Each device's index in `topo.gpus`: by `uuid`, else by `pcieBusID` (PCI addresses compared as
    numbers: nvidia-smi's 00000000:3B:00.0 is NVML's 0000:3b:00.0); None when neither matches."""
    by_uuid = {g.uuid.lower(): i for i, g in enumerate(topo.gpus) if g.uuid}
    by_id = {g.id.lower(): i for i, g in enumerate(topo.gpus) if g.id}
    by_pci = {k: i for i, g in enumerate(topo.gpus) if (k := _pci_key(g.pci)) is not None}
    out: list[int | None] = []
    for d in devices:
        u = d.lookup(f"{d.driver}/uuid")
        idx = None
        if isinstance(u, str):
            idx = by_uuid.get(u.lower(), by_id.get(u.lower()))
        if idx is None:
            k = _pci_key(d.lookup(f"{d.driver}/pcieBusID"))
            idx = by_pci.get(k) if k is not None else None
        out.append(idx)
    return out


def score_prediction(
    topo: Topology,
    free_mask: int,
    chosen_mask: int,
    k: int,
    scope: str | None = "any",
    names: Sequence[str] | None = None,
) -> NodeDecision:
    """The extender's decision for a node where DRA first-fit gives exactly `chosen_mask` (0: it cannot
    allocate): the same quality/residual/score formula as `scoring.score_node`, on one known set instead of
    the device plugin's candidates. `names` (device names in GPU order) are used in the reason."""
    need = required_scope_tier(scope)
    w = wiring(topo)
    n = len(topo)
    full = (1 << n) - 1
    free_mask &= full
    scope_txt = f" (required-scope {need.label})" if need is not None else ""

    def label(mask: int) -> str:
        idx = indices_of(mask)
        if names is not None:
            return ",".join(names[i] for i in idx)
        return ",".join(topo.gpus[i].id for i in idx)

    if k > n:
        return NodeDecision(False, True, f"pod needs {k} GPUs, node has {n}", (), None, 0.0, 0)
    if need is not None and _max_group(w, topo, full, need) < k:
        return NodeDecision(
            False, True, f"node has {n} GPUs but too few together{scope_txt}", (), None, 0.0, 0
        )
    if chosen_mask == 0:
        return NodeDecision(
            False,
            False,
            f"DRA cannot allocate {k} devices here ({free_mask.bit_count()} free)",
            (),
            None,
            0.0,
            0,
            count_only=need is None,
        )
    tier: Tier | None = _tier(w, topo, chosen_mask) if k > 1 else None
    span = _span(w, chosen_mask)
    what = tier.label if tier is not None else "single GPU"
    gpus = tuple(topo.gpus[i].id for i in indices_of(chosen_mask))
    if need is not None and not _meets(w, topo, chosen_mask, need):
        return NodeDecision(
            False,
            False,
            f"DRA first-fit would give {label(chosen_mask)} ({what}){scope_txt}",
            gpus,
            tier,
            0.0,
            0,
        )
    quality = _quality(w, topo, chosen_mask)
    residual = 1.0 - min(max(_excess(w, topo, free_mask, chosen_mask), 0.0), 1.0)
    weight = QUALITY_WEIGHT if k > 1 else 0.0
    score = round(MAX_SCORE * (weight * quality + (1 - weight) * residual))
    where = f", {span} socket{'s' if span != 1 else ''}" if span else ""
    return NodeDecision(
        True,
        False,
        f"DRA first-fit would give {label(chosen_mask)}: {what}{where}, residual {residual:.2f}",
        gpus,
        tier,
        round(residual, 3),
        int(score),
        quality=round(quality, 3),
        span=span,
        ties=1,
    )


def neutral(reason: str) -> NodeDecision:
    """A node whose DRA prediction is unknown: fits as far as toposcale can tell, neutral score."""
    return NodeDecision(True, False, reason, (), None, 0.5, NEUTRAL_SCORE)


def predicted_mask(topo: Topology, pools: Pools, devices: Iterable[DeviceID]) -> int | None:
    """The predicted devices as a GPU mask over `topo`; None when one of them is not in the topology."""
    devs = [pools.device_index[d] for d in devices]
    idx = join_topology(topo, devs)
    if any(i is None for i in idx):
        return None
    return mask_of(i for i in idx if i is not None)


# --- what NVIDIA's driver publishes (for tests and the simulator) ----------------------------------------


def fake_uuid(node: str, index: int) -> str:
    """A stable, well-formed GPU UUID for a fake node's GPU."""
    import hashlib

    h = hashlib.blake2b(f"{node}/{index}".encode(), digest_size=16).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def nvidia_device(
    index: int,
    *,
    uuid: str,
    pci: str,
    product: str = "NVIDIA H100 80GB HBM3",
    memory: str = "81559Mi",
    pcie_root: str | None = None,
) -> Obj:
    """One full GPU as k8s-dra-driver-gpu's gpu-kubelet-plugin publishes it (deviceinfo.go)."""
    attrs: Obj = {
        "type": {"string": "gpu"},
        "uuid": {"string": uuid},
        "productName": {"string": product},
        "brand": {"string": "Nvidia"},
        "architecture": {"string": "Hopper"},
        "cudaComputeCapability": {"version": "9.0.0"},
        "driverVersion": {"version": "560.35.3"},
        "cudaDriverVersion": {"version": "12.6.0"},
        "pcieBusID": {"string": pci},
        "addressingMode": {"string": "None"},
    }
    if pcie_root is not None:
        attrs[PCIE_ROOT] = {"string": pcie_root}
    return {"name": f"gpu-{index}", "attributes": attrs, "capacity": {"memory": {"value": memory}}}


def slice_from_topology(
    topo: Topology,
    node: str,
    *,
    order: Sequence[int] | None = None,
    pcie_roots: Sequence[str | None] | None = None,
    name: str | None = None,
    generation: int = 1,
) -> Obj:
    """A ResourceSlice (one pool named after the node) for `topo`'s GPUs: `gpu-<index>` with the topology's
    uuid / pci (made up when missing), devices in `order` (positions in topo.gpus; default as listed)."""
    devs = []
    for i in order if order is not None else range(len(topo.gpus)):
        g = topo.gpus[i]
        devs.append(
            nvidia_device(
                g.index,
                uuid=g.uuid or fake_uuid(node, g.index),
                pci=g.pci or f"0000:{0x10 + g.index:02x}:00.0",
                pcie_root=pcie_roots[i] if pcie_roots is not None else None,
            )
        )
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name or f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": devs,
        },
    }


def gpu_device_class(name: str = DRIVER, *, extended_resource: str | None = "nvidia.com/gpu") -> Obj:
    """The DeviceClass NVIDIA's chart installs for full GPUs, optionally serving an extended resource."""
    spec: Obj = {"selectors": [{"cel": {"expression": GPU_CLASS_SELECTOR}}]}
    if extended_resource:
        spec["extendedResourceName"] = extended_resource
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": spec,
    }


# --- the simulator's node -------------------------------------------------------------------------------

_SIM_MEMO: dict[tuple[str, int, int, int], int] = {}
_SIM_MEMO_LIMIT = 200_000


def first_fit_mask(topo: Topology, free_mask: int, k: int) -> int:
    """The GPUs (mask over topo.gpus) DRA first-fit gives a `k`-GPU extended-resource pod on a node that
    publishes `topo` as one slice in GPU order (`slice_from_topology`), the GPUs outside `free_mask` held by
    earlier claims; 0 when it cannot allocate. Runs `predict` itself (memoized per wiring, mask and k)."""
    key = (topo.fingerprint, len(topo), free_mask, k)
    hit = _SIM_MEMO.get(key)
    if hit is not None:
        return hit
    node = "sim"
    pools = prepare_pools([slice_from_topology(topo, node)], node)
    pos = {f"gpu-{g.index}": i for i, g in enumerate(topo.gpus)}
    taken = {(DRIVER, node, f"gpu-{g.index}") for i, g in enumerate(topo.gpus) if not free_mask >> i & 1}
    cls = gpu_device_class()
    pod = {"spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": str(k)}}}]}}
    p = predict(pools, taken, extended_resource_requests(pod, "nvidia.com/gpu", DRIVER), [], {DRIVER: cls})
    hit = mask_of(pos[d[2]] for d in p.devices) if p.ok else 0
    if len(_SIM_MEMO) >= _SIM_MEMO_LIMIT:
        _SIM_MEMO.clear()
    _SIM_MEMO[key] = hit
    return hit
