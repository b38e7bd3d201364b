"""The small NVML surface the agent needs, behind one interface, and its real implementation over pynvml.

Discovery (`discovery.py`) talks only to `NvmlBackend`; `PynvmlBackend` asks the driver,
`replay.ReplayBackend` answers from a capture of a real machine, so CI drives the same discovery code
without a GPU.

Every call may fail the way NVML fails (NotSupported in VMs, NoPermission in unprivileged containers,
GpuIsLost when a GPU falls off the bus): each failure is an `NvmlError` carrying NVML's own error name.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

# NVML's topology levels (nvmlGpuTopologyLevel_t) and the `nvidia-smi topo -m` code each one prints.
TOPOLOGY_INTERNAL = 0
TOPOLOGY_SINGLE = 10
TOPOLOGY_MULTIPLE = 20
TOPOLOGY_HOSTBRIDGE = 30
TOPOLOGY_NODE = 40  # NVML_TOPOLOGY_CPU is the same value
TOPOLOGY_SYSTEM = 50
ANCESTOR_CODES = {
    TOPOLOGY_INTERNAL: "PIX",  # same board: nvidia-smi has no code for it, PIX is the closest promise
    TOPOLOGY_SINGLE: "PIX",
    TOPOLOGY_MULTIPLE: "PXB",
    TOPOLOGY_HOSTBRIDGE: "PHB",
    TOPOLOGY_NODE: "NODE",
    TOPOLOGY_SYSTEM: "SYS",
}

# nvmlNvLinkDeviceType_t
NVLINK_DEVICE_GPU = 0
NVLINK_DEVICE_IBMNPU = 1
NVLINK_DEVICE_SWITCH = 2
NVLINK_DEVICE_UNKNOWN = 255

# NVML_NVLINK_MAX_LINKS grew over driver generations (6, 12, 18; 36 in nvidia-ml-py 13). Asking past a
# device's last link answers InvalidArgument, which ends the scan: on real H100s that came at link 18.
MAX_NVLINKS = 36

SYSFS_PCI = Path("/sys/bus/pci/devices")

# What NVML answers for the far end of an NVLink it cannot see: seen on a real 4x H100 VM (NVSwitches not
# passed through), on every link of every GPU, with remote type SWITCH.
UNKNOWN_BUS_ID = "ffff:ff:ff.0"


class NvmlError(Exception):
    """An NVML call failed. `name`: NVML's error name, unprefixed (NotSupported, NoPermission, GpuIsLost)."""

    def __init__(self, name: str, call: str = "") -> None:
        super().__init__(f"{call}: {name}" if call else name)
        self.name = name
        self.call = call

    @property
    def lost(self) -> bool:
        return self.name in ("GpuIsLost", "GpuNotFound")


class NvmlBackend(Protocol):
    """What discovery asks of NVML, by GPU index. Every method may raise `NvmlError`."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def device_count(self) -> int: ...
    def name(self, i: int) -> str: ...
    def uuid(self, i: int) -> str: ...
    def pci_bus_id(self, i: int) -> str: ...
    def memory_total(self, i: int) -> int: ...
    def numa_node_id(self, i: int) -> int: ...
    def sysfs_numa_node(self, i: int) -> int: ...
    def cpu_affinity(self, i: int) -> list[int]: ...
    def memory_affinity(self, i: int) -> list[int]: ...
    def mig_mode(self, i: int) -> int: ...
    def nvlink_state(self, i: int, link: int) -> bool: ...
    def nvlink_remote_pci(self, i: int, link: int) -> str: ...
    def nvlink_remote_type(self, i: int, link: int) -> int: ...
    def common_ancestor(self, i: int, j: int) -> int: ...
    def fabric(self, i: int) -> tuple[str, int] | None: ...


# nvmlGpuFabricState_t COMPLETED: the GPU is registered with the fabric manager, clusterUuid/cliqueId are set.
FABRIC_STATE_COMPLETED = 3


def fabric_identity(state: int, status: int, cluster_uuid: str, clique_id: int) -> tuple[str, int] | None:
    """(clusterUuid, cliqueId) of a registered GPU; None when the GPU is not (yet) registered, so the answer
    says nothing about which NVLink domain it is in."""
    if state != FABRIC_STATE_COMPLETED or status != 0:
        return None
    return (cluster_uuid.lower(), int(clique_id))


def normalize_bus_id(bus_id: str | bytes) -> str:
    """NVML prints `00000000:18:00.0` (32-bit domain), sysfs and nvidia-smi topo use `0000:18:00.0`."""
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode(errors="replace")
    bus_id = bus_id.strip().strip("\x00").lower()
    domain, sep, rest = bus_id.partition(":")
    if sep and len(domain) > 4 and rest.count(":") == 1:
        domain = domain[-4:]
        return f"{domain}:{rest}"
    return bus_id


def read_sysfs_numa_node(pci: str, root: Path = SYSFS_PCI) -> int:
    """The kernel's NUMA node for a PCI device; -1 when the kernel does not know (VMs, some firmware)."""
    try:
        return int((root / normalize_bus_id(pci) / "numa_node").read_text().strip())
    except FileNotFoundError:
        raise NvmlError("NotFound", f"sysfs numa_node({pci})") from None
    except (OSError, ValueError) as exc:
        raise NvmlError("OperatingSystem", f"sysfs numa_node({pci}): {exc}") from None


def _error_names(pynvml: Any) -> dict[int, str]:
    names = {}
    for attr in dir(pynvml):
        if attr.startswith("NVML_ERROR_"):
            words = attr.removeprefix("NVML_ERROR_").lower().split("_")
            names[getattr(pynvml, attr)] = "".join(w.capitalize() for w in words)
    names[getattr(pynvml, "NVML_ERROR_GPU_IS_LOST", 15)] = "GpuIsLost"
    names[getattr(pynvml, "NVML_ERROR_NO_PERMISSION", 4)] = "NoPermission"
    names[getattr(pynvml, "NVML_ERROR_NOT_SUPPORTED", 3)] = "NotSupported"
    return names


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class PynvmlBackend:
    """The real thing: pynvml (from nvidia-ml-py) against the driver's libnvidia-ml.so.

    NVML is process-global and not documented as thread-safe for init/shutdown: calls are serialised.
    """

    def __init__(self, sysfs_root: Path = SYSFS_PCI) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the `pynvml` shim package warns on import
            import pynvml
        self._nv = pynvml
        self._errors = _error_names(pynvml)
        self._lock = threading.Lock()
        self._handles: dict[int, Any] = {}
        self._sysfs_root = sysfs_root

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            with self._lock:
                return fn(*args)
        except self._nv.NVMLError as exc:
            raise NvmlError(self._errors.get(exc.value, f"Error{exc.value}"), what) from None

    def _h(self, i: int) -> Any:
        if i not in self._handles:
            self._handles[i] = self._call(f"handle({i})", self._nv.nvmlDeviceGetHandleByIndex, i)
        return self._handles[i]

    def init(self) -> None:
        self._call("init", self._nv.nvmlInit)

    def shutdown(self) -> None:
        self._handles.clear()
        self._call("shutdown", self._nv.nvmlShutdown)

    def driver_version(self) -> str:
        return _text(self._call("driver_version", self._nv.nvmlSystemGetDriverVersion))

    def device_count(self) -> int:
        return int(self._call("device_count", self._nv.nvmlDeviceGetCount))

    def name(self, i: int) -> str:
        return _text(self._call(f"name({i})", self._nv.nvmlDeviceGetName, self._h(i)))

    def uuid(self, i: int) -> str:
        return _text(self._call(f"uuid({i})", self._nv.nvmlDeviceGetUUID, self._h(i)))

    def pci_bus_id(self, i: int) -> str:
        info = self._call(f"pci({i})", self._nv.nvmlDeviceGetPciInfo, self._h(i))
        return normalize_bus_id(info.busId)

    def memory_total(self, i: int) -> int:
        return int(self._call(f"memory({i})", self._nv.nvmlDeviceGetMemoryInfo, self._h(i)).total)

    def numa_node_id(self, i: int) -> int:
        return int(self._call(f"numa_node_id({i})", self._nv.nvmlDeviceGetNumaNodeId, self._h(i)))

    def sysfs_numa_node(self, i: int) -> int:
        return read_sysfs_numa_node(self.pci_bus_id(i), self._sysfs_root)

    def cpu_affinity(self, i: int) -> list[int]:
        from .cpuset import from_mask_words

        words = max(1, ((os.cpu_count() or 64) + 63) // 64)
        mask = self._call(f"cpu_affinity({i})", self._nv.nvmlDeviceGetCpuAffinity, self._h(i), words)
        return from_mask_words(list(mask))

    def memory_affinity(self, i: int) -> list[int]:
        """NUMA nodes the GPU's memory affinity names (NVML_AFFINITY_SCOPE_NODE): what nvidia-smi prints as
        "NUMA Affinity"."""
        from .cpuset import from_mask_words

        mask = self._call(f"memory_affinity({i})", self._nv.nvmlDeviceGetMemoryAffinity, self._h(i), 1, 0)
        return from_mask_words(list(mask))

    def mig_mode(self, i: int) -> int:
        current, _pending = self._call(f"mig_mode({i})", self._nv.nvmlDeviceGetMigMode, self._h(i))
        return int(current)

    def nvlink_state(self, i: int, link: int) -> bool:
        fn = self._nv.nvmlDeviceGetNvLinkState
        return bool(self._call(f"nvlink_state({i},{link})", fn, self._h(i), link))

    def nvlink_remote_pci(self, i: int, link: int) -> str:
        info = self._call(
            f"nvlink_remote_pci({i},{link})", self._nv.nvmlDeviceGetNvLinkRemotePciInfo, self._h(i), link
        )
        return normalize_bus_id(info.busId)

    def nvlink_remote_type(self, i: int, link: int) -> int:
        fn = self._nv.nvmlDeviceGetNvLinkRemoteDeviceType
        return int(self._call(f"nvlink_remote_type({i},{link})", fn, self._h(i), link))

    def common_ancestor(self, i: int, j: int) -> int:
        fn = self._nv.nvmlDeviceGetTopologyCommonAncestor
        return int(self._call(f"common_ancestor({i},{j})", fn, self._h(i), self._h(j)))

    def fabric(self, i: int) -> tuple[str, int] | None:
        """nvmlDeviceGetGpuFabricInfoV (v3 struct where the binding has it, else the V struct): on a real
        4x H100 VM the legacy call read all zeros while `nvidia-smi -q` said Completed/Success."""
        nv = self._nv
        fn = getattr(nv, "nvmlDeviceGetGpuFabricInfoV", None)
        if fn is None:
            raise NvmlError("FunctionNotFound", f"fabric({i})")
        if hasattr(nv, "c_nvmlGpuFabricInfo_v3_t"):
            info = nv.c_nvmlGpuFabricInfo_v3_t()
            info.version = nv.nvmlGpuFabricInfo_v3
        else:
            info = nv.c_nvmlGpuFabricInfoV_t()
        self._call(f"fabric({i})", fn, self._h(i), nv.byref(info))
        return fabric_identity(int(info.state), int(info.status), bytes(info.clusterUuid).hex(),
                               int(info.cliqueId))
