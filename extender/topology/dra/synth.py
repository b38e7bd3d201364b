"""Synthesis for tests, the demo and the simulator, never on the extender's request path: ResourceSlices
and DeviceClasses as NVIDIA's DRA driver publishes them, made from a topology, and the simulator's DRA
node (`first_fit_mask`: what first-fit gives on such a slice)."""

from __future__ import annotations

from collections.abc import Sequence

from ..allocator import mask_of
from ..model import Topology
from .pools import prepare_pools
from .requests import extended_resource_requests
from .search import predict
from .values import DRIVER, PCIE_ROOT, Obj

GPU_CLASS_SELECTOR = f"device.driver == '{DRIVER}' && device.attributes['{DRIVER}'].type == 'gpu'"


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
