"""NVIDIA's real go-gpuallocator as a peer: the program `scripts/gpuallocator.sh bin` builds from
tests/gpuallocator (go-gpuallocator's best-effort policy over go-nvml's mock), and the NVML answers it is fed,
either straight from an NVML capture or made to match how toposcale models a `nvidia-smi topo -m` topology.
Used by tests/extender/test_allocator_vs_go.py, the GPU kubelet (lab/kube/gpu_kubelet.py) and the scheduler
harness (lab/peers/scheduler.py)."""

from __future__ import annotations

import json
import random
import subprocess
from typing import Any

import pytest
from toposcale.extender.topology.allocator import socket_keys
from toposcale.extender.topology.model import Topology, nvlink_count

from lab import ROOT
from lab.builds import gpuallocator_bin

SCRIPT = ROOT / "scripts" / "gpuallocator.sh"
GO_MOD = ROOT / "tests" / "gpuallocator" / "go.mod"
SEED = 20261203  # the what-if draws per topology (and the differential test's sampling)

# nvmlGpuTopologyLevel_t (nvml.h) for each `nvidia-smi topo -m` legend code.
NVML_LEVEL = {"PIX": 10, "PXB": 20, "PHB": 30, "NODE": 40, "SYS": 50}
NVSWITCH_BUS = "FFFFFFFF:FF:FF.0"  # the remote end of every NVSwitch link in the real captures
LINKS_PER_GPU = 18
NVSWITCH_FIXTURES = {"dgx-a100-nvswitch-8gpu", "hgx-h100-nvswitch-8gpu"}


def _links(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Active links as given, disabled ones up to the real H100's 18, then InvalidArgument (as captured)."""
    out = list(entries)
    out += [{"state": 0}] * max(0, LINKS_PER_GPU - len(out))
    out.append({"error": "InvalidArgument"})
    return out


def nvml_of_model(name: str, topo: Topology, switched: bool, nv_pcie: str | None = None) -> dict[str, Any]:
    """NVML's answers on a machine wired as toposcale models `topo` (nv_pcie: the PCIe level under every
    NVLinked pair instead of toposcale's estimate; "random": one drawn per pair)."""
    n = len(topo)
    draw = random.Random(f"{SEED}:{name}")
    keys = socket_keys(topo)
    buses = [f"00000000:{0x18 + 0x10 * i:02X}:00.0" for i in range(n)]
    ancestor = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            code = topo.links[i][j]
            if i == j:
                continue
            if code in NVML_LEVEL:
                ancestor[i][j] = NVML_LEVEL[code]
            elif j < i:
                ancestor[i][j] = ancestor[j][i]
            elif nv_pcie == "random":
                ancestor[i][j] = NVML_LEVEL[draw.choice(sorted(NVML_LEVEL))]
            else:  # NV<n>: topo -m hides the PCIe level; allocator.py assumes NODE within a socket, else SYS
                same = keys[i] is not None and keys[i] == keys[j]
                ancestor[i][j] = NVML_LEVEL[nv_pcie or ("NODE" if same else "SYS")]
    gpus = []
    for i in range(n):
        active: list[dict[str, Any]] = []
        if switched:
            width = max(nvlink_count(topo.links[i][j]) for j in range(n) if j != i)
            active = [{"remotePci": NVSWITCH_BUS}] * width
        else:
            for j in range(n):
                if j != i:
                    active += [{"remotePci": buses[j]}] * nvlink_count(topo.links[i][j])
        gpus.append(
            {"uuid": f"GPU-{name}-{i}", "busId": buses[i], "name": "model", "nvlinks": _links(active)}
        )
    return {"name": name, "gpus": gpus, "commonAncestor": ancestor}


def _answer(a: dict[str, Any]) -> tuple[Any, str | None]:
    return (None, str(a["error"])) if "error" in a else (a.get("value"), None)


def nvml_of_capture(name: str, cap: dict[str, Any]) -> dict[str, Any]:
    """The Go program's input straight from a capture's NVML answers."""
    gpus = []
    for dev in cap["devices"]:
        links = []
        for link in sorted(dev.get("nvlinks", []), key=lambda x: x.get("link", 0)):
            state, state_err = _answer(link.get("state") or {"error": "NotSupported"})
            entry: dict[str, Any] = {"error": state_err} if state_err else {"state": int(state)}
            remote, remote_err = _answer(link.get("remote_pci") or {"error": "NotSupported"})
            entry |= {"remotePciError": remote_err} if remote_err else {"remotePci": str(remote)}
            links.append(entry)
        gpus.append(
            {
                "uuid": str(dev["uuid"]["value"]),
                "busId": str(dev["pci_bus_id"]["value"]),
                "name": str(dev["name"]["value"]),
                "nvlinks": links,
            }
        )
    n = len(gpus)
    ancestor = [[0] * n for _ in range(n)]
    for key, a in cap.get("common_ancestor", {}).items():
        i, j = (int(x) for x in key.split(","))
        value, err = _answer(a)
        assert err is None, f"{name}: common ancestor {key} is {err}: go-gpuallocator would refuse the box"
        ancestor[i][j] = int(value)
    return {"name": name, "gpus": gpus, "commonAncestor": ancestor}


def go_binary() -> str:
    """The go-gpuallocator program (scripts/gpuallocator.sh bin, cached)."""
    return str(gpuallocator_bin())


def run_go(binary: str, doc: dict[str, Any]) -> dict[str, Any]:
    r = subprocess.run([binary], input=json.dumps(doc), capture_output=True, text=True, timeout=300)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"the go-gpuallocator program failed (exit {r.returncode}): {r.stderr[-4000:]}")
    if r.returncode != 0 or out.get("error"):
        pytest.fail(
            f"the go-gpuallocator program refused the input (exit {r.returncode}): "
            f"{out.get('error')} {r.stderr[-2000:]}"
        )
    return out
