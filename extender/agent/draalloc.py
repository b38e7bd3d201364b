"""Which GPUs are held on a DRA node: devices from the kubelet's dynamic resources (or the ResourceClaims),
mapped to the GPUs of the agent's topology.

With dynamic resource allocation (NVIDIA's k8s-dra-driver-gpu, driver `gpu.nvidia.com`), kube-scheduler
allocates devices named `gpu-<minor>` in the node's ResourceSlice pool; the kubelet's pod-resources `List`
reports them per container as `dynamic_resources[].claim_resources[]{driver_name, pool_name, device_name}`
(extended-resource claims included: kubelet cm/dra GetContainerClaimInfos follows
`pod.status.extendedResourceClaimStatus`), and `GetAllocatableResources` lists no DRA devices at all.

A device becomes a GPU of the topology through this node's ResourceSlice (its `uuid`, else `pcieBusID`
attribute; `topology.dra.join_topology`, the one join the extender uses too). Only when no slice of its
pool is known (slices unreadable, incomplete or being republished) is the name used: `gpu-<N>` is taken
as NVML index N (the driver's N is the /dev/nvidiaN minor number, which follows PCI order as NVML's index
does on the machines we know, but is not promised to; a log line says so).
A device of another driver, or one that joins no GPU, is logged once and not counted: it is not one of the
GPUs the topology describes.

Where the kubelet cannot be asked, the held devices come from the ResourceClaims' `status.allocation`
(what the scheduler itself counts as taken) for this node's pools; if those cannot be read either, the
allocation stays unknown.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toposcale.extender.topology import dra
from toposcale.extender.topology.model import Topology

from .podresources.client import Snapshot

logger = logging.getLogger(__name__)

DeviceID = tuple[str, str, str]  # (driver, pool, device), as the allocator names a device
Obj = dict[str, Any]
_NAME = re.compile(r"gpu-([0-9]{1,4})")
MAX_LIST_BYTES = 64 * 1024 * 1024  # one LIST answer; a bigger one is an error, not a partial read


class OnceLog:
    """Logs a problem the first time it is seen, then stays quiet about it (the agent observes every 15 s)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, key: str, message: str, **extra: Any) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        logger.warning(message, extra=extra)


@dataclass(slots=True)
class Mapped:
    """Held devices as topology GPU ids, and what was left out (device -> why)."""

    gpus: dict[str, str] = field(default_factory=dict)  # GPU id -> holder
    skipped: dict[DeviceID, str] = field(default_factory=dict)


def node_pools(slices: Iterable[Obj] | None, node: str, once: OnceLog) -> dra.Pools | None:
    """This node's devices in its ResourceSlices; None when unknown (slices unread or not modelled)."""
    if slices is None:
        return None
    try:
        return dra.prepare_pools(list(slices), node)
    except (dra.DraUnknown, ValueError, TypeError, KeyError, AttributeError) as exc:
        once.warn(f"slices:{exc}", "this node's ResourceSlices are not understood; DRA devices mapped by "
                  "name", error=str(exc))
        return None


def map_devices(topo: Topology, held: Mapping[DeviceID, str], pools: dra.Pools | None,
                once: OnceLog) -> Mapped:
    """The GPUs of `topo` that the held DRA devices are (`pools` None: slices unknown, names decide)."""
    out = Mapped()
    slice_devs = [(d, pools.device_index[d]) for d in held if pools is not None and d in pools.device_index]
    joined = dict(zip((d for d, _ in slice_devs), dra.join_topology(topo, (x for _, x in slice_devs)),
                      strict=True))
    by_index = {g.index: i for i, g in enumerate(topo.gpus)}
    # Pools the slices describe: a device of such a pool that is not in them is not counted; a device of a
    # pool no slice describes (slices unread, being republished, incomplete) is placed by its name.
    described = {(d.driver, d.pool) for d in pools.devices} if pools is not None else set()
    for dev, holder in sorted(held.items()):
        driver, pool, name = dev
        if driver != dra.DRIVER:
            why = f"driver {driver!r} is not {dra.DRIVER}"
            idx = None
        elif dev in joined:
            idx = joined[dev]
            why = "its ResourceSlice uuid/pcieBusID match no GPU of the topology"
        elif (driver, pool) in described:
            idx = None
            why = "not in this node's ResourceSlices"
        else:
            m = _NAME.fullmatch(name)
            idx = by_index.get(int(m.group(1))) if m else None
            why = "no GPU of the topology has that index" if m else "not a gpu-<minor> name (MIG or other)"
            if idx is not None:
                once.warn(f"by-name:{pool}", "no ResourceSlice of this pool known: DRA device gpu-<N> taken "
                          "as NVML index N", pool=pool, device=name)
        if idx is None:
            out.skipped[dev] = why
            once.warn(f"skip:{dev}", "DRA device not counted as a GPU of this node",
                      device=f"{driver}/{pool}/{name}", reason=why, holder=holder)
            continue
        out.gpus[topo.gpus[idx].id] = holder
    return out


def claimed_devices(claims: Iterable[Obj], pools: set[tuple[str, str]]) -> dict[DeviceID, str]:
    """Devices that ResourceClaims' allocations hold in `pools` ((driver, pool) of this node)."""
    held: dict[DeviceID, str] = {}
    for c in claims:
        meta = c.get("metadata") or {}
        alloc = (c.get("status") or {}).get("allocation") or {}
        for r in (alloc.get("devices") or {}).get("results") or []:
            if not isinstance(r, Mapping):
                continue
            dev = (str(r.get("driver", "")), str(r.get("pool", "")), str(r.get("device", "")))
            if (dev[0], dev[1]) in pools:
                held[dev] = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    return held


class DraSource:
    """The apiserver side: this node's ResourceSlices and, when the kubelet is unreachable, the claims."""

    def __init__(self, api: Any, node: str, *, request_timeout: float = 10.0) -> None:
        self.api = api
        self.node = node
        self.request_timeout = request_timeout
        self.once = OnceLog()

    async def _list(self, what: str, **kw: Any) -> list[Obj]:
        import aiohttp
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        api = client.ResourceV1Api(self.api)
        fn = (api.list_resource_slice if what == "resourceslices"
              else api.list_resource_claim_for_all_namespaces)
        try:
            resp = await fn(_preload_content=False, _request_timeout=self.request_timeout, **kw)
            try:
                if resp.status != 200:
                    raise ApiException(status=resp.status, reason=resp.reason)
                chunks: list[bytes] = []
                size = 0
                while chunk := await resp.content.read(1 << 16):  # read(n) gives what has arrived
                    size += len(chunk)
                    if size > MAX_LIST_BYTES:
                        raise RuntimeError(f"listing {what}: answer larger than {MAX_LIST_BYTES} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
            finally:
                resp.release()
        except ApiException as exc:
            raise RuntimeError(f"listing {what}: HTTP {exc.status} {exc.reason}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RuntimeError(f"listing {what}: {type(exc).__name__}: {exc}") from None
        try:
            items = json.loads(body).get("items") or []
        except (ValueError, AttributeError) as exc:
            raise RuntimeError(f"listing {what}: not a list: {exc}") from None
        return [i for i in items if isinstance(i, dict)]

    async def slices(self) -> list[Obj] | None:
        try:
            return await self._list("resourceslices", field_selector=f"spec.nodeName={self.node}")
        except RuntimeError as exc:
            self.once.warn(f"slices-err:{exc}", "cannot read this node's ResourceSlices", error=str(exc))
            return None

    async def resolve(self, topo: Topology, snap: Snapshot) -> Snapshot:
        """`snap` with the DRA devices held on this node added as GPU ids (unchanged on a non-DRA node)."""
        return await resolve(topo, snap, self.node, self.once, self.slices if self.api else None,
                             self._claims if self.api else None)

    async def _claims(self, pools: set[tuple[str, str]]) -> dict[DeviceID, str]:
        return claimed_devices(await self._list("resourceclaims"), pools)


async def resolve(topo: Topology, snap: Snapshot, node: str, once: OnceLog, read_slices: Any = None,
                  read_claims: Any = None) -> Snapshot:
    """The allocation snapshot in the topology's GPU ids, DRA devices included.

    A DRA node is one whose ResourceSlices carry `gpu.nvidia.com` devices, or whose kubelet reports such
    devices. There, `GetAllocatableResources` (device plugins only) says nothing about health: its empty
    list must not make every GPU unhealthy, so `allocatable` is dropped unless a device plugin filled it."""
    if snap.allocatable and not snap.dynamic_holders:
        return snap  # a device plugin serves this node's GPUs: no apiserver call every observation
    slices = await read_slices() if read_slices is not None else None
    pools = node_pools(slices, node, once)
    dra_node = any(d.driver == dra.DRIVER for d in (pools.devices if pools else ())) or any(
        d[0] == dra.DRIVER for d in snap.dynamic_holders
    )
    if not dra_node:
        return snap
    if snap.error is None:
        held, source = dict(snap.dynamic_holders), "kubelet-dra"
    elif read_claims is None or pools is None:
        return snap  # the kubelet is unreachable and the claims cannot be matched to this node: unknown
    else:
        mine = {(d.driver, d.pool) for d in pools.devices}
        try:
            held, source = await read_claims(mine), "resourceclaims"
        except RuntimeError as exc:
            return Snapshot(error=f"{snap.error}; and the ResourceClaims: {exc}")
    mapped = map_devices(topo, held, pools, once)
    holders = {**snap.holders, **mapped.gpus}
    allocatable = snap.allocatable if snap.allocatable else None
    return Snapshot(allocatable=allocatable, allocated=frozenset(holders), holders=holders, source=source)
