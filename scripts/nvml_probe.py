#!/usr/bin/env python3
"""Record what NVML answers on this machine, errors included, as a capture the agent's replay backend replays.

Standalone on purpose (pynvml + stdlib only): it records what the driver said, not what toposcale made of it,
and runs on a GPU box where toposcale is not installed.

    python3 scripts/nvml_probe.py > capture.json

Every answer is `{"value": ...}` or `{"error": "<NVML error name>"}`. CPU and memory affinity are written as
real cpusets (and the raw mask words in hex), NVLink per link (state, remote PCI bus id, remote device type,
version), the common ancestor for every ordered pair, NUMA from NVML and from sysfs, MIG mode. Format: see
extender/agent/replay.py.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml as nv

FORMAT = "toposcale-nvml-capture/1"


def _names() -> dict[int, str]:
    out = {}
    for attr in dir(nv):
        if attr.startswith("NVML_ERROR_"):
            out[getattr(nv, attr)] = "".join(w.capitalize() for w in attr[11:].lower().split("_"))
    return out


ERRORS = _names()


def text(v: Any) -> Any:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def ask(fn: Any, *args: Any, conv: Any = None) -> dict[str, Any]:
    try:
        v = fn(*args)
    except nv.NVMLError as exc:
        return {"error": ERRORS.get(exc.value, f"Error{exc.value}")}
    except Exception as exc:  # a binding without the function, a ctypes surprise: record it, keep going
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        return {"value": conv(v) if conv else v}
    except Exception as exc:
        return {"error": f"convert {type(exc).__name__}: {exc}"}


def bits(words: Any) -> list[int]:
    out = []
    for k, w in enumerate(list(words)):
        w = int(w)
        for b in range(64):
            if w >> b & 1:
                out.append(64 * k + b)
    return out


def cpuset(ids: list[int]) -> str:
    ids = sorted(set(ids))
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def hexwords(words: Any) -> list[str]:
    return [f"{int(w):#x}" for w in list(words)]


def bus(info: Any) -> str:
    return text(info.busId)


def sysfs_numa(pci: str) -> dict[str, Any]:
    dom, _, rest = pci.lower().partition(":")
    path = Path("/sys/bus/pci/devices") / f"{dom[-4:]}:{rest}" / "numa_node"
    try:
        return {"value": int(path.read_text().strip()), "path": str(path)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "path": str(path)}


def fabric(h: Any) -> dict[str, Any]:
    """NVSwitch fabric registration. The versioned call first: the legacy struct read all zeros on a 4x H100
    VM whose `nvidia-smi -q` said State Completed / Status Success."""
    if hasattr(nv, "c_nvmlGpuFabricInfo_v3_t") and hasattr(nv, "nvmlDeviceGetGpuFabricInfoV"):
        info = nv.c_nvmlGpuFabricInfo_v3_t()
        info.version = nv.nvmlGpuFabricInfo_v3

        def get_v() -> dict[str, Any]:
            nv.nvmlDeviceGetGpuFabricInfoV(h, nv.byref(info))
            return {"call": "nvmlDeviceGetGpuFabricInfoV/v3", "state": int(info.state),
                    "status": int(info.status), "cliqueId": int(info.cliqueId),
                    "clusterUuid": bytes(info.clusterUuid).hex()}

        got = ask(get_v)
        if "value" in got:
            return got
    if not hasattr(nv, "c_nvmlGpuFabricInfo_t"):
        return {"error": "FunctionNotFound"}
    legacy = nv.c_nvmlGpuFabricInfo_t()

    def get() -> dict[str, Any]:
        nv.nvmlDeviceGetGpuFabricInfo(h, nv.byref(legacy))
        return {"call": "nvmlDeviceGetGpuFabricInfo", "state": int(legacy.state),
                "status": int(legacy.status), "cliqueId": int(legacy.cliqueId)}

    return ask(get)


def main() -> int:
    cap: dict[str, Any] = {
        "format": FORMAT,
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.machine(), "kernel": platform.release(), "cpu_count": os.cpu_count()},
    }
    init = ask(nv.nvmlInit)
    cap["init"] = init
    if "error" in init:
        json.dump(cap, sys.stdout, indent=1)
        return 1
    cap["driver_version"] = ask(nv.nvmlSystemGetDriverVersion, conv=text)
    cap["nvml_version"] = ask(nv.nvmlSystemGetNVMLVersion, conv=text)
    cap["cuda_driver_version"] = ask(nv.nvmlSystemGetCudaDriverVersion)
    count = ask(nv.nvmlDeviceGetCount)
    cap["device_count"] = count
    n = count.get("value", 0)
    words = max(1, ((os.cpu_count() or 64) + 63) // 64)
    handles: list[Any] = []
    devices = []
    max_links = getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)
    for i in range(n):
        hd = ask(nv.nvmlDeviceGetHandleByIndex, i)
        h = hd.get("value")
        handles.append(h)
        handle = {"error": hd["error"]} if "error" in hd else {"value": "ok"}
        d: dict[str, Any] = {"index": i, "handle": handle}
        if h is None:
            devices.append(d)
            continue
        d["name"] = ask(nv.nvmlDeviceGetName, h, conv=text)
        d["uuid"] = ask(nv.nvmlDeviceGetUUID, h, conv=text)
        d["pci_bus_id"] = ask(nv.nvmlDeviceGetPciInfo, h, conv=bus)
        d["memory_total"] = ask(nv.nvmlDeviceGetMemoryInfo, h, conv=lambda m: int(m.total))
        d["numa_node_id"] = ask(nv.nvmlDeviceGetNumaNodeId, h)
        d["sysfs_numa_node"] = sysfs_numa(d["pci_bus_id"]["value"]) if "value" in d["pci_bus_id"] else {
            "error": "NoPciBusId"
        }
        d["cpu_affinity"] = ask(nv.nvmlDeviceGetCpuAffinity, h, words, conv=lambda m: cpuset(bits(m)))
        d["cpu_affinity_words"] = ask(nv.nvmlDeviceGetCpuAffinity, h, words, conv=hexwords)
        d["cpu_affinity_socket_scope"] = ask(
            nv.nvmlDeviceGetCpuAffinityWithinScope, h, words, 1, conv=lambda m: cpuset(bits(m))
        )
        d["memory_affinity_numa_nodes"] = ask(
            nv.nvmlDeviceGetMemoryAffinity, h, 1, 0, conv=lambda m: cpuset(bits(m))
        )
        d["mig_mode"] = ask(nv.nvmlDeviceGetMigMode, h, conv=list)
        d["fabric"] = fabric(h)
        links = []
        for link in range(max_links):
            state = ask(nv.nvmlDeviceGetNvLinkState, h, link)
            entry: dict[str, Any] = {"link": link, "state": state}
            if "value" in state:
                entry["remote_pci"] = ask(nv.nvmlDeviceGetNvLinkRemotePciInfo, h, link, conv=bus)
                entry["remote_type"] = ask(nv.nvmlDeviceGetNvLinkRemoteDeviceType, h, link, conv=int)
                entry["version"] = ask(nv.nvmlDeviceGetNvLinkVersion, h, link)
            links.append(entry)
            if state.get("error") in ("InvalidArgument", "NotSupported"):
                break  # past the device's links, or no NVLink at all
        d["nvlinks"] = links
        devices.append(d)
    cap["devices"] = devices
    pairs = {}
    for i in range(n):
        for j in range(n):
            if i != j and handles[i] is not None and handles[j] is not None:
                fn = nv.nvmlDeviceGetTopologyCommonAncestor
                pairs[f"{i},{j}"] = ask(fn, handles[i], handles[j], conv=int)
    cap["common_ancestor"] = pairs
    ask(nv.nvmlShutdown)
    json.dump(cap, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
