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

API (this package re-exports it; the modules, in the order a prediction uses them):

    values.py    DRIVER, PCIE_ROOT, DeviceID, DraUnknown, CelRuntimeError, parse_quantity, Version
    pools.py     prepare_pools(slices, node_name) -> Pools       # a node's ResourceSlices, allocator order
                 allocated_devices(claims) -> set[DeviceID]       # every device in claims' allocations
    cel.py       compile_selector(expr) -> Selector               # the CEL subset above
    requests.py  claim_requests(claim_spec) / extended_resource_requests(pod, resource, class_name)
                 class_for_extended_resource(classes, resource) -> DeviceClass dict | None
    search.py    predict(pools, allocated, requests, constraints, classes) -> Prediction
    score.py     join_topology(topo, devices) -> list[int | None]  # GPU per device: uuid, else pcieBusID
                 score_prediction(topo, free_mask, chosen_mask, k, scope) -> NodeDecision

Not re-exported, never on the request path: `synth.py`, fake ResourceSlices and DeviceClasses made from a
topology (tests, the demo, the simulator) and the simulator's DRA node (`first_fit_mask`).
"""

from .cel import CEL_MAX_LENGTH, CEL_MAX_NESTING, Selector, compile_selector
from .pools import Device, Pools, allocated_devices, prepare_pools
from .requests import (
    IMPLICIT_EXTENDED_PREFIX,
    Request,
    claim_requests,
    class_for_extended_resource,
    extended_resource_requests,
)
from .score import join_topology, neutral, predicted_mask, score_prediction
from .search import Prediction, predict
from .values import (
    DRIVER,
    EXTENDED_RESOURCE_CLAIM_ANNOTATION,
    PCIE_ROOT,
    CelRuntimeError,
    DeviceID,
    DraUnknown,
    Obj,
    Version,
    parse_quantity,
)

__all__ = [
    "CEL_MAX_LENGTH",
    "CEL_MAX_NESTING",
    "DRIVER",
    "EXTENDED_RESOURCE_CLAIM_ANNOTATION",
    "IMPLICIT_EXTENDED_PREFIX",
    "PCIE_ROOT",
    "CelRuntimeError",
    "Device",
    "DeviceID",
    "DraUnknown",
    "Obj",
    "Pools",
    "Prediction",
    "Request",
    "Selector",
    "Version",
    "allocated_devices",
    "claim_requests",
    "class_for_extended_resource",
    "compile_selector",
    "extended_resource_requests",
    "join_topology",
    "neutral",
    "parse_quantity",
    "predict",
    "predicted_mask",
    "prepare_pools",
    "score_prediction",
]
