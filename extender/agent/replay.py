"""An `NvmlBackend` that answers from a capture of a real machine, so CI runs discovery without a GPU.

Capture format (`toposcale-nvml-capture/1`, written by `scripts/nvml_probe.py` on the machine itself): every
NVML answer is `{"value": v}` or `{"error": "<NVML error name>"}`:

    {"format": ..., "driver_version": A, "device_count": A,
     "devices": [{"index": 0, "handle": A, "name": A, "uuid": A, "pci_bus_id": A, "memory_total": A,
                  "numa_node_id": A, "sysfs_numa_node": A, "cpu_affinity": A (cpuset),
                  "memory_affinity_numa_nodes": A (node list, cpuset syntax), "mig_mode": A ([cur, pending]),
                  "nvlinks": [{"link": 0, "state": A, "remote_pci": A, "remote_type": A}, ...]}],
     "common_ancestor": {"0,1": A, ...}}

The older probe format of `h100-vm-1gpu` (one GPU in a VM, taken before this one existed) is read too. A call
the capture holds no answer for fails as `NotCaptured`: the replay never invents an answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .cpuset import parse_cpuset
from .files import read_bounded
from .nvml import NvmlError, fabric_identity, normalize_bus_id

FORMAT = "toposcale-nvml-capture/1"
_NOT_CAPTURED = {"error": "NotCaptured"}


MAX_CAPTURE_BYTES = 16 * 1024 * 1024  # a 64-GPU capture is a few MiB


def load_capture(path: str | Path) -> dict[str, Any]:
    raw = read_bounded(str(path), MAX_CAPTURE_BYTES, "an NVML capture")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not an NVML capture (not a JSON object)")
    if doc.get("format") == FORMAT:
        return doc
    if "gpus" in doc and "driver" in doc:
        return _from_first_probe(doc)
    raise ValueError(f"{path}: not an NVML capture (no format {FORMAT!r}, nor the first probe's layout)")


def _error_name(text: str) -> str:
    # first probe wrote "NVMLError_NotSupported: Not Supported"
    head = text.split(":", 1)[0]
    return head.removeprefix("NVMLError_") or "Unknown"


def _answer(v: Any) -> dict[str, Any]:
    if isinstance(v, dict) and "error" in v:
        return {"error": _error_name(str(v["error"]))}
    return {"value": v}


def _from_first_probe(doc: dict[str, Any]) -> dict[str, Any]:
    """The first probe (shared/fixtures/nvml/h100-vm-1gpu) kept pynvml's raw answers; CPU affinity was printed
    as a ctypes repr there, so it is not in the capture and replays as NotCaptured."""
    devices = []
    for g in doc["gpus"]:
        sysfs = str(g.get("sysfs_numa_node", ""))
        links = [
            {"link": nl.get("link", k), "state": _answer(nl.get("state", nl))}
            for k, nl in enumerate(g.get("nvlinks", []))
        ]
        devices.append(
            {
                "index": g["index"],
                "handle": {"value": "ok"},
                "name": {"value": g["name"]},
                "uuid": {"value": g["uuid"]},
                "pci_bus_id": {"value": g["pci"]["busId"]},
                "memory_total": {"value": g["memory_total"]},
                "numa_node_id": _answer(g.get("numa_node_nvml", _NOT_CAPTURED)),
                "sysfs_numa_node": {"value": int(sysfs)} if sysfs.lstrip("-").isdigit() else _NOT_CAPTURED,
                "cpu_affinity": _NOT_CAPTURED,
                "memory_affinity_numa_nodes": _NOT_CAPTURED,
                "mig_mode": {"value": list(g["mig_mode"])} if "mig_mode" in g else _NOT_CAPTURED,
                "nvlinks": links,
            }
        )
    pairs = {
        f"{p['a']},{p['b']}": _answer(p.get("common_ancestor")) for p in doc.get("pairs", []) if "a" in p
    }
    return {
        "format": FORMAT,
        "driver_version": {"value": doc["driver"]},
        "device_count": {"value": len(devices)},
        "devices": devices,
        "common_ancestor": pairs,
    }


class ReplayBackend:
    """Replays one capture. Stateless apart from init/shutdown, like NVML itself."""

    def __init__(self, capture: dict[str, Any]) -> None:
        self.capture = capture
        self._initialised = False

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayBackend:
        return cls(load_capture(path))

    def _value(self, answer: dict[str, Any] | None, call: str) -> Any:
        answer = answer or _NOT_CAPTURED
        if "error" in answer:
            raise NvmlError(str(answer["error"]), call)
        return answer["value"]

    def _dev(self, i: int, call: str) -> dict[str, Any]:
        devices = self.capture.get("devices", [])
        if not 0 <= i < len(devices):
            raise NvmlError("InvalidArgument", call)
        dev = devices[i]
        self._value(dev.get("handle", {"value": "ok"}), call)
        return dev

    def _field(self, i: int, key: str, call: str) -> Any:
        return self._value(self._dev(i, call).get(key), call)

    def init(self) -> None:
        self._value(self.capture.get("init", {"value": None}), "init")
        self._initialised = True

    def shutdown(self) -> None:
        self._initialised = False

    def driver_version(self) -> str:
        return str(self._value(self.capture.get("driver_version"), "driver_version"))

    def device_count(self) -> int:
        return int(self._value(self.capture.get("device_count"), "device_count"))

    def name(self, i: int) -> str:
        return str(self._field(i, "name", f"name({i})"))

    def uuid(self, i: int) -> str:
        return str(self._field(i, "uuid", f"uuid({i})"))

    def pci_bus_id(self, i: int) -> str:
        return normalize_bus_id(str(self._field(i, "pci_bus_id", f"pci({i})")))

    def memory_total(self, i: int) -> int:
        return int(self._field(i, "memory_total", f"memory({i})"))

    def numa_node_id(self, i: int) -> int:
        return int(self._field(i, "numa_node_id", f"numa_node_id({i})"))

    def sysfs_numa_node(self, i: int) -> int:
        answer = self._dev(i, f"sysfs_numa_node({i})").get("sysfs_numa_node")
        if answer and "error" in answer:
            raise NvmlError("NotFound", f"sysfs_numa_node({i})")
        return int(self._value(answer, f"sysfs_numa_node({i})"))

    def cpu_affinity(self, i: int) -> list[int]:
        return parse_cpuset(str(self._field(i, "cpu_affinity", f"cpu_affinity({i})")))

    def memory_affinity(self, i: int) -> list[int]:
        return parse_cpuset(str(self._field(i, "memory_affinity_numa_nodes", f"memory_affinity({i})")))

    def mig_mode(self, i: int) -> int:
        return int(self._field(i, "mig_mode", f"mig_mode({i})")[0])

    def _link(self, i: int, link: int, key: str, call: str) -> Any:
        links = self._dev(i, call).get("nvlinks", [])
        for entry in links:
            if entry.get("link") == link:
                return self._value(entry.get(key), call)
        # The probe stops scanning at the first NotSupported / InvalidArgument: past it NVML says the same.
        if links and "error" in links[-1].get("state", {}) and link > links[-1]["link"]:
            raise NvmlError(links[-1]["state"]["error"], call)
        raise NvmlError("NotCaptured", call)

    def nvlink_state(self, i: int, link: int) -> bool:
        return bool(self._link(i, link, "state", f"nvlink_state({i},{link})"))

    def nvlink_remote_pci(self, i: int, link: int) -> str:
        return normalize_bus_id(str(self._link(i, link, "remote_pci", f"nvlink_remote_pci({i},{link})")))

    def nvlink_remote_type(self, i: int, link: int) -> int:
        return int(self._link(i, link, "remote_type", f"nvlink_remote_type({i},{link})"))

    def fabric(self, i: int) -> tuple[str, int] | None:
        v = self._field(i, "fabric", f"fabric({i})")
        if not isinstance(v, dict) or "clusterUuid" not in v:
            return None  # the first probe's legacy call: no clusterUuid captured, so no identity to compare
        return fabric_identity(int(v.get("state", 0)), int(v.get("status", -1)), str(v["clusterUuid"]),
                               int(v.get("cliqueId", 0)))

    def common_ancestor(self, i: int, j: int) -> int:
        call = f"common_ancestor({i},{j})"
        self._dev(i, call)
        self._dev(j, call)
        return int(self._value(self.capture.get("common_ancestor", {}).get(f"{i},{j}"), call))
