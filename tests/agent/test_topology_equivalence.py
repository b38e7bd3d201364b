"""The NVML path and the `nvidia-smi topo -m` parser must give the same model on non-uniform machines too.

The real captures (4x H100 NVSwitch VMs) only show NV18 between every pair, which a wrong mapping of PCIe
levels, bonded-link counts or NUMA could still pass. So each public `nvidia-smi topo -m` fixture (NVLink
pairs, PCIe switch trees, two sockets, one GPU per NUMA node, all-SYS) is turned into a replay capture
*derived from the real capture*: the real device entries (names, memory, MIG mode, NVML's error answers)
with that machine's wiring written in as NVML would answer it, using NVML's documented
nvmlGpuTopologyLevel_t values and nvmlNvLinkDeviceType_t (a table written here, not the agent's), read from
the text by a reader written here (not the product's parser). Discovery over the capture must then equal the
parser over the text.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from toposcale.extender.agent.discovery import discover
from toposcale.extender.agent.replay import ReplayBackend
from toposcale.extender.topology.topo_text import parse_topo_text

from .conftest import TOPOLOGIES, X4B

# nvmlGpuTopologyLevel_t (nvml.h): what NVML's common-ancestor call answers for each legend code.
NVML_LEVEL = {"PIX": 10, "PXB": 20, "PHB": 30, "NODE": 40, "SYS": 50}
NVLINK_TO_GPU, NVLINK_TO_SWITCH = 0, 2  # nvmlNvLinkDeviceType_t
LINKS_PER_GPU = 18  # the real capture's H100s: InvalidArgument at link 18

FIXTURES = [
    "a100-4gpu-bridged-pairs-two-sockets",  # NV12 pairs, NODE/SYS, two sockets
    "a6000-8gpu-nvlink-bridge-pairs",  # NV4 pairs, NODE within a socket, SYS across
    "pcie-8gpu-two-switch-trees",  # PIX pairs under PXB, SYS across; NUMA N/A
    "l40s-4gpu-two-per-socket",  # NODE / SYS, no NVLink
    "h100-4gpu-nv6-numa-per-gpu",  # direct NV6 mesh, one GPU per NUMA node (3, 1, 7, 5)
    "rtx4090-8gpu-node-per-socket",
    "rtx4090-8gpu-all-sys",
    "dgx-a100-nvswitch-8gpu",  # NVSwitch: every pair NV12 through switches
    "hgx-h100-nvswitch-8gpu",
]


def read_matrix(text: str) -> tuple[list[list[str]], list[str], list[str]]:
    """(GPU link codes, CPU affinity, NUMA affinity) per GPU row of well-formed `topo -m` text."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("#", "$"))]
    header = next(ln.split() for ln in lines if "Affinity" in ln)
    columns = header[: header.index("CPU")]
    gpus = [c for c in columns if re.fullmatch(r"GPU\d+", c)]
    codes, cpus, numa = [], [], []
    for ln in lines:
        tokens = ln.split()
        if tokens[0] in gpus and "Affinity" not in ln:
            row = tokens[1:]
            codes.append(row[: len(gpus)])
            cpus.append(row[len(columns)])
            numa.append(row[len(columns) + 1])
    return codes, cpus, numa


def derived_capture(text: str, levels: dict[str, int] = NVML_LEVEL) -> dict[str, Any]:
    real = json.loads((X4B / "nvml_capture.json").read_text())
    codes, cpus, numa = read_matrix(text)
    n = len(codes)
    nv = {(i, j): int(c[2:]) for i, row in enumerate(codes) for j, c in enumerate(row) if c.startswith("NV")}
    switched = len(nv) == n * (n - 1) and len(set(nv.values())) == 1  # every pair the same NV<n>: NVSwitch
    buses = [f"00000000:{0x18 + 0x10 * i:02X}:00.0" for i in range(n)]
    devices = []
    for i in range(n):
        dev = copy.deepcopy(real["devices"][i % len(real["devices"])])
        dev.update(
            index=i,
            uuid={"value": f"GPU-derived-{i}"},
            pci_bus_id={"value": buses[i]},
            cpu_affinity={"value": cpus[i]},
            memory_affinity_numa_nodes={"error": "NotSupported"} if numa[i] == "N/A" else {"value": numa[i]},
        )
        links: list[dict[str, Any]] = []
        if switched:
            links = [{"link": k, "state": {"value": 1}, "remote_type": {"value": NVLINK_TO_SWITCH},
                      "remote_pci": {"value": "FFFFFFFF:FF:FF.0"}} for k in range(next(iter(nv.values())))]
        else:
            for j in range(n):
                for _ in range(nv.get((i, j), 0)):
                    links.append({"link": len(links), "state": {"value": 1},
                                  "remote_type": {"value": NVLINK_TO_GPU}, "remote_pci": {"value": buses[j]}})
        width = max(LINKS_PER_GPU, len(links))
        links += [{"link": k, "state": {"value": 0}} for k in range(len(links), width)]
        links.append({"link": width, "state": {"error": "InvalidArgument"}})
        dev["nvlinks"] = links
        devices.append(dev)
    real["devices"] = devices
    real["device_count"] = {"value": n}
    real["common_ancestor"] = {
        f"{i},{j}": {"value": levels.get(codes[i][j], NVML_LEVEL["SYS"])}
        for i in range(n) for j in range(n) if i != j
    }
    return real


@pytest.mark.parametrize("fixture", FIXTURES)
def test_nvml_path_and_parser_agree_on_a_capture_derived_for_this_wiring(fixture: str) -> None:
    text = (TOPOLOGIES / f"{fixture}.txt").read_text()
    nvml = discover(ReplayBackend(derived_capture(text))).topology
    parsed = parse_topo_text(text, ids=[g.id for g in nvml.gpus])
    assert nvml.links == parsed.links
    assert [(g.id, g.index, g.numa, g.cpus) for g in nvml.gpus] == [
        (g.id, g.index, g.numa, g.cpus) for g in parsed.gpus
    ]
    assert nvml.fingerprint == parsed.fingerprint


def test_the_comparison_fails_when_a_mapping_is_wrong() -> None:
    # Swapping two NVML levels in the capture (as a wrong level -> code table in the agent would) must show.
    text = (TOPOLOGIES / "pcie-8gpu-two-switch-trees.txt").read_text()
    swapped = dict(NVML_LEVEL, PIX=NVML_LEVEL["PXB"], PXB=NVML_LEVEL["PIX"])
    nvml = discover(ReplayBackend(derived_capture(text, swapped))).topology
    assert nvml.links != parse_topo_text(text, ids=[g.id for g in nvml.gpus]).links


def test_derived_captures_keep_the_real_answers_they_do_not_rewrite() -> None:
    cap = derived_capture((TOPOLOGIES / "a100-4gpu-bridged-pairs-two-sockets.txt").read_text())
    real = json.loads((X4B / "nvml_capture.json").read_text())
    assert cap["driver_version"] == real["driver_version"]
    assert cap["devices"][0]["numa_node_id"] == real["devices"][0]["numa_node_id"]  # NotSupported, as there
    found = discover(ReplayBackend(cap))
    assert {g.model for g in found.topology.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert found.socket_groups == [[0, 1], [2, 3]]
