"""GPU topology discovery over an `NvmlBackend`: the model the agent publishes, and what it could not learn.

No I/O of its own: the backend is the only source (the real driver, or a replayed capture). Any single NVML
answer may be missing; discovery records each gap in `Topology.unknown` and goes on. A GPU that NVML reports
lost stays in the model (the scheduler must not count on it) and is listed as unhealthy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from toposcale.extender.topology.model import GPU, SELF, Topology

from .cpuset import format_cpuset
from .nvml import (
    ANCESTOR_CODES,
    MAX_NVLINKS,
    NVLINK_DEVICE_GPU,
    NVLINK_DEVICE_SWITCH,
    UNKNOWN_BUS_ID,
    NvmlBackend,
    NvmlError,
)

IdStrategy = Literal["uuid", "index"]
MAX_GPUS = 64  # annotations.schema.json: gpuTopology.gpus maxItems
T = TypeVar("T")


class DiscoveryError(RuntimeError):
    """NVML itself is unusable (no driver, no library, no permission to enumerate): nothing to publish."""


@dataclass(slots=True)
class Discovery:
    topology: Topology
    unhealthy: frozenset[str]
    driver: str | None = None
    socket_groups: list[list[int]] = field(default_factory=list)  # GPU indices sharing a CPU affinity


@dataclass(slots=True)
class _Links:
    direct: Counter[str] = field(default_factory=Counter)  # remote GPU bus id -> bonded links
    switch_links: int = 0
    fabric: tuple[str, int] | None = None  # (clusterUuid, cliqueId) from the fabric manager, when registered


def device_id(strategy: IdStrategy, index: int, uuid: str | None) -> str:
    """The ID the NVIDIA device plugin advertises for this GPU (deviceIDStrategy)."""
    if strategy == "index":
        return str(index)
    return uuid if uuid else f"GPU{index}"


def discover(
    backend: NvmlBackend, *, resource: str = "nvidia.com/gpu", id_strategy: IdStrategy = "uuid"
) -> Discovery:
    try:
        backend.init()
    except NvmlError as exc:
        raise DiscoveryError(f"NVML init failed ({exc.name}): is the NVIDIA driver loaded?") from None
    try:
        return _discover(backend, resource, id_strategy)
    finally:
        try:
            backend.shutdown()
        except NvmlError:
            pass


class _Gaps:
    """What discovery could not learn (for `Topology.unknown`) and which GPUs NVML reported lost."""

    def __init__(self) -> None:
        self.unknown: list[str] = []
        self.lost: set[int] = set()

    def ask(self, i: int | None, what: str, fn: Callable[..., T], *args: Any, blame: bool = True) -> T | None:
        """`fn(*args)`, or None with the gap recorded. `blame`: a GpuIsLost answer marks GPU `i` lost."""
        try:
            return fn(*args)
        except NvmlError as exc:
            self.note(i, what, exc.name)
            if exc.lost and i is not None and blame:
                self.lost.add(i)
            return None

    def note(self, i: int | None, what: str, why: str) -> None:
        self.unknown.append(f"{'node' if i is None else f'gpu{i}'}.{what}: {why}")


def _discover(backend: NvmlBackend, resource: str, id_strategy: IdStrategy) -> Discovery:
    gaps = _Gaps()
    ask = gaps.ask
    unknown = gaps.unknown
    lost = gaps.lost

    driver = ask(None, "driver_version", backend.driver_version)
    try:
        n = backend.device_count()
    except NvmlError as exc:
        raise DiscoveryError(f"NVML could not count GPUs ({exc.name})") from None
    if not 0 <= n <= MAX_GPUS:
        raise DiscoveryError(f"NVML counted {n} GPUs; the annotation contract holds 0..{MAX_GPUS}")

    gpus: list[GPU] = []
    buses: list[str | None] = []
    links: list[_Links] = []
    for i in range(n):
        uuid = ask(i, "uuid", backend.uuid, i)
        pci = ask(i, "pci", backend.pci_bus_id, i)
        name = ask(i, "model", backend.name, i)
        memory = ask(i, "memory", backend.memory_total, i)
        numa = _numa(backend, i, gaps)
        cpus = ask(i, "cpus", backend.cpu_affinity, i)
        mig = ask(i, "mig", backend.mig_mode, i)
        links.append(_nvlinks(backend, i, gaps))
        if links[-1].switch_links:
            links[-1].fabric = _fabric(backend, i, gaps)
        gpus.append(
            GPU(
                id=device_id(id_strategy, i, uuid),
                index=i,
                uuid=uuid,
                pci=pci,
                model=name,
                memory=memory,
                numa=numa,
                cpus=format_cpuset(cpus) if cpus else None,
                mig=None if mig is None else bool(mig),
            )
        )
        buses.append(pci)

    matrix = [[SELF if i == j else "" for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            code = _nv_code(links[i], links[j], buses[i], buses[j])
            if code is None:
                # A pair query failing with GpuIsLost does not say which of the two is lost.
                level = ask(i, f"link.gpu{j}", backend.common_ancestor, i, j, blame=False)
                if level is None:
                    level = ask(j, f"link.gpu{i}", backend.common_ancestor, j, i, blame=False)
                if level is None or level not in ANCESTOR_CODES:
                    # SYS promises the least; the gap is recorded so a person can see it was not measured.
                    unknown.append(f"links[{i}][{j}]: not learned (ancestor {level}); published as SYS")
                    code = "SYS"
                else:
                    code = ANCESTOR_CODES[level]
            matrix[i][j] = matrix[j][i] = code

    groups = socket_groups(gpus)
    topo = Topology(gpus=gpus, links=matrix, resource=resource, unknown=unknown)
    return Discovery(
        topology=topo,
        unhealthy=frozenset(gpus[i].id for i in lost),
        driver=driver,
        socket_groups=groups,
    )


def _numa(backend: NvmlBackend, i: int, gaps: _Gaps) -> int:
    """NVML's NUMA id, else the kernel's (sysfs), else the one node NVML's memory affinity names (what
    nvidia-smi prints as "NUMA Affinity"); -1 when none of them knows. Gaps are recorded only when the answer
    stays unknown: a VM with one NUMA node answers NotSupported and -1 first, then node 0."""
    tried: list[str] = []
    for what, fn in (("nvml", backend.numa_node_id), ("sysfs", backend.sysfs_numa_node)):
        try:
            node = fn(i)
        except NvmlError as exc:
            tried.append(f"{what} {exc.name}")
            continue
        if node >= 0:
            return int(node)
        tried.append(f"{what} {node}")
    try:
        nodes = backend.memory_affinity(i)
    except NvmlError as exc:
        tried.append(f"memory affinity {exc.name}")
    else:
        if len(nodes) == 1:
            return nodes[0]
        tried.append(f"memory affinity names {len(nodes)} nodes")
    gaps.note(i, "numa", ", ".join(tried))
    return -1  # unknown, never "node 0"


def _nvlinks(backend: NvmlBackend, i: int, gaps: _Gaps) -> _Links:
    out = _Links()
    for link in range(MAX_NVLINKS):
        try:
            active = backend.nvlink_state(i, link)
        except NvmlError as exc:
            end = exc.name in ("InvalidArgument", "NotSupported")
            if link == 0 or not end:  # past the last link NVML answers InvalidArgument: that is no gap
                gaps.note(i, f"nvlink{link}", exc.name)
            if exc.lost:
                gaps.lost.add(i)
            if end or exc.lost:
                break
            continue
        if not active:
            continue
        kind = gaps.ask(i, f"nvlink{link}.remote_type", backend.nvlink_remote_type, i, link)
        remote = gaps.ask(i, f"nvlink{link}.remote_pci", backend.nvlink_remote_pci, i, link)
        if remote == UNKNOWN_BUS_ID:
            remote = None  # NVML cannot see the far end (NVSwitch not passed through to this VM)
        if kind == NVLINK_DEVICE_SWITCH:
            out.switch_links += 1
        elif kind in (NVLINK_DEVICE_GPU, None):
            if remote:
                out.direct[remote] += 1
            else:
                gaps.note(i, f"nvlink{link}.peer", "far end unknown; link not counted")
    return out


def _fabric(backend: NvmlBackend, i: int, gaps: _Gaps) -> tuple[str, int] | None:
    """The fabric manager's (clusterUuid, cliqueId); None when NVML has none (NotSupported on most drivers,
    not registered yet). Only a missing answer on a switch-attached GPU is worth recording."""
    try:
        return backend.fabric(i)
    except NvmlError as exc:
        if exc.name not in ("NotSupported", "FunctionNotFound", "NotCaptured"):
            gaps.note(i, "fabric", exc.name)
        return None


def _nv_code(a: _Links, b: _Links, bus_a: str | None, bus_b: str | None) -> str | None:
    bonded = max(a.direct[bus_b] if bus_b else 0, b.direct[bus_a] if bus_a else 0)
    if bonded:
        return f"NV{bonded}"
    if a.switch_links and b.switch_links:
        # All NVSwitches of one node form one fabric: on two-baseboard systems (HGX-2, DGX-2) each GPU's
        # links reach only its own baseboard's switches, yet nvidia-smi prints NV<n> for every pair because
        # the baseboards are bridged switch to switch. Switch bus ids therefore prove nothing; only the
        # fabric manager's identity (clusterUuid, cliqueId), when both GPUs have one, can tell domains apart.
        if a.fabric is not None and b.fabric is not None and a.fabric != b.fabric:
            return None
        # Every GPU pair on an NVSwitch fabric talks at the bandwidth of the fewer switch links, which is
        # what nvidia-smi prints (NV18 between every pair of an HGX H100).
        return f"NV{min(a.switch_links, b.switch_links)}"
    return None


def socket_groups(gpus: list[GPU]) -> list[list[int]]:
    """GPU indices grouped by CPU affinity, in order of first appearance; [] when affinity is unknown.

    Where NUMA is unknown (VMs, firmware without SRAT proximity), GPUs whose CPU affinities differ sit on
    different sockets: this grouping is what is left to tell them apart.
    """
    if any(g.cpus is None for g in gpus):
        return []
    groups: dict[str, list[int]] = {}
    for g in gpus:
        groups.setdefault(g.cpus or "", []).append(g.index)
    return list(groups.values())
