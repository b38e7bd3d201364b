"""The GPU topology of one node: GPUs, the link code between every pair, and what is free.

This is the model the node agent publishes (as the `toposcale.io/gpu-topology` annotation), the extender
scores and the simulator replays. Pure data, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import IntEnum

# Link codes exactly as the `nvidia-smi topo -m` legend prints them. NV<n> carries a bond count.
PCIE_CODES = ("SYS", "NODE", "PHB", "PXB", "PIX")
SELF = "X"
_NV = re.compile(r"NV([1-9][0-9]*)")  # fullmatch ("^...$" takes "NV4\n"); NV0 is no link: none printed


class Tier(IntEnum):
    """How well a set of GPUs is connected, best first (lower is better).

    Ordered as the product card states: one NVLink/NVSwitch domain > one PCIe switch > one host bridge >
    one NUMA node > across sockets. UNKNOWN sorts last: nothing is promised about it.
    """

    NVLINK = 0
    PCIE_SWITCH = 1  # PIX / PXB: peer-to-peer under PCIe switches, never through the CPU
    HOST_BRIDGE = 2  # PHB
    NUMA = 3  # NODE: crosses host bridges, stays on one NUMA node / socket
    CROSS_SOCKET = 4  # SYS: crosses the SMP interconnect
    UNKNOWN = 5

    @property
    def label(self) -> str:
        return _TIER_LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Tier:
        for tier, name in _TIER_LABELS.items():
            if name == label:
                return tier
        raise ValueError(f"unknown tier {label!r}; expected one of {', '.join(_TIER_LABELS.values())}")


_TIER_LABELS = {
    Tier.NVLINK: "nvlink",
    Tier.PCIE_SWITCH: "pcie-switch",
    Tier.HOST_BRIDGE: "host-bridge",
    Tier.NUMA: "numa",
    Tier.CROSS_SOCKET: "cross-socket",
    Tier.UNKNOWN: "unknown",
}


def is_valid_link(code: str) -> bool:
    return code in PCIE_CODES or code == SELF or bool(_NV.fullmatch(code))


def nvlink_count(code: str) -> int:
    m = _NV.fullmatch(code)
    return int(m.group(1)) if m else 0


def link_tier(code: str) -> Tier:
    """The tier of a single GPU pair's link."""
    if _NV.fullmatch(code):
        return Tier.NVLINK
    return {
        "PIX": Tier.PCIE_SWITCH,
        "PXB": Tier.PCIE_SWITCH,
        "PHB": Tier.HOST_BRIDGE,
        "NODE": Tier.NUMA,
        "SYS": Tier.CROSS_SOCKET,
    }.get(code, Tier.UNKNOWN)


@dataclass(frozen=True, slots=True)
class GPU:
    id: str  # the device-plugin ID (UUID by default, index with deviceIDStrategy=index)
    index: int
    uuid: str | None = None
    pci: str | None = None
    model: str | None = None
    memory: int | None = None  # bytes
    numa: int = -1  # -1 = unknown, never "node 0"
    cpus: str | None = None  # cpuset string, e.g. "0-51,104-155"
    mig: bool | None = None


@dataclass(slots=True)
class Topology:
    """GPUs of one node and the symmetric link-code matrix between them.

    `links[i][j]` is the code between gpus[i] and gpus[j], "X" on the diagonal.
    """

    gpus: list[GPU]
    links: list[list[str]]
    resource: str = "nvidia.com/gpu"
    unknown: list[str] = field(default_factory=list)  # what discovery could not learn, for humans
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.gpus)
        if len(self.links) != n or any(len(row) != n for row in self.links):
            raise ValueError(f"links must be a {n}x{n} matrix for {n} GPUs")
        for i in range(n):
            if self.links[i][i] != SELF:
                raise ValueError(f"links[{i}][{i}] must be 'X', got {self.links[i][i]!r}")
            for j in range(n):
                code = self.links[i][j]
                if not is_valid_link(code):
                    raise ValueError(f"links[{i}][{j}]: {code!r} is not an nvidia-smi topo -m link code")
                if code == SELF and i != j:
                    raise ValueError(f"links[{i}][{j}]: 'X' (the GPU itself) only belongs on the diagonal")
                if code != self.links[j][i]:
                    other = self.links[j][i]
                    raise ValueError(f"links is not symmetric at [{i}][{j}]: {code!r} vs {other!r}")
        ids = [g.id for g in self.gpus]
        if len(set(ids)) != len(ids):
            raise ValueError("GPU ids must be unique")
        indexes = [g.index for g in self.gpus]
        if len(set(indexes)) != len(indexes):
            raise ValueError("GPU index values must be unique")

    def __len__(self) -> int:
        return len(self.gpus)

    @property
    def fingerprint(self) -> str:
        """Identifies the wiring (not the ids): identical boxes share a fingerprint, hence memoized scores."""
        if self._fingerprint is None:
            numa = ",".join(str(g.numa) for g in self.gpus)
            cpus = ",".join(g.cpus or "" for g in self.gpus)
            text = "|".join(";".join(r) for r in self.links) + "#" + numa + "#" + cpus
            self._fingerprint = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        return self._fingerprint

    def index_of(self, gpu_id: str) -> int | None:
        for i, g in enumerate(self.gpus):
            if g.id == gpu_id or g.uuid == gpu_id:
                return i
        return None
