"""`nvidia-smi topo -m` text -> Topology, on real outputs (tests/fixtures/topologies)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from toposcale.extender.topology.annotations import topology_from_doc, topology_to_doc
from toposcale.extender.topology.model import Tier, link_tier
from toposcale.extender.topology.topo_text import TopoTextError, parse_topo_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topologies"
ALL = sorted(FIXTURES.glob("*.txt"))


def text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


def test_fixtures_are_present_with_their_source_line() -> None:
    assert len(ALL) >= 10
    for path in ALL:
        assert path.read_text().startswith("# "), f"{path.name} lost its source line"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_every_real_output_parses_and_round_trips_through_the_annotation(path: Path) -> None:
    topo = parse_topo_text(path.read_text())
    n = len(topo)
    m = re.search(r"(\d+)gpu", path.stem)
    assert m is not None
    assert n == int(m.group(1))
    assert [g.id for g in topo.gpus] == [f"GPU{i}" for i in range(n)]
    # The agent publishes exactly this; the schema and the model's checks must accept it.
    again = topology_from_doc(topo_doc := topology_to_doc(topo))
    assert again.links == topo.links
    assert again.fingerprint == topo.fingerprint
    assert topo_doc["resource"] == "nvidia.com/gpu"


def test_nic_rows_and_columns_are_left_out_of_the_gpu_matrix() -> None:
    topo = parse_topo_text(text("h100-4gpu-nv6-numa-per-gpu"))
    assert topo.links == [
        ["X", "NV6", "NV6", "NV6"],
        ["NV6", "X", "NV6", "NV6"],
        ["NV6", "NV6", "X", "NV6"],
        ["NV6", "NV6", "NV6", "X"],
    ]
    # NUMA Affinity is read, "GPU NUMA ID" (N/A here) is not mistaken for it.
    assert [g.numa for g in topo.gpus] == [3, 1, 7, 5]
    assert [g.cpus for g in topo.gpus] == ["6,14,22,30", "4,12,20,28", "7,15,23,31", "5,13,21,29"]


def test_mlx_columns_and_bridged_pairs() -> None:
    topo = parse_topo_text(text("a100-4gpu-bridged-pairs-two-sockets"))
    assert topo.links[0] == ["X", "NV12", "SYS", "SYS"]
    assert topo.links[2] == ["SYS", "SYS", "X", "NODE"]
    assert [g.numa for g in topo.gpus] == [0, 0, 1, 1]
    assert topo.gpus[2].cpus == "28-55,84-111"


def test_numa_not_available_is_unknown_never_node_zero() -> None:
    topo = parse_topo_text(text("pcie-8gpu-two-switch-trees"))
    assert all(g.numa == -1 for g in topo.gpus)
    assert all(g.cpus == "0-95" for g in topo.gpus)
    assert any(u.startswith("numa:") for u in topo.unknown)
    assert link_tier(topo.links[0][1]) is Tier.PCIE_SWITCH
    assert topo.links[0][2] == "PXB"


def test_numa_na_keeps_distinct_cpu_affinity_for_socket_grouping() -> None:
    # The all-SYS RTX 4090 box with its NUMA column blanked, as VMs and some BIOSes print it.
    blanked = re.sub(r"(\d+,\d+-\d+)\t[01]\t", r"\1\tN/A\t", text("rtx4090-8gpu-all-sys"))
    assert "\tN/A\t\tN/A" in blanked
    topo = parse_topo_text(blanked)
    assert all(g.numa == -1 for g in topo.gpus)
    assert {g.cpus for g in topo.gpus[:4]} == {"0-55,112-167"}
    assert {g.cpus for g in topo.gpus[4:]} == {"56-111,168-223"}


def test_ansi_underlined_header_single_gpu_vm_capture() -> None:
    raw = text("h100-vm-1gpu")
    assert "\x1b[4m" in raw
    topo = parse_topo_text(raw)
    assert topo.links == [["X"]]
    assert topo.gpus[0].numa == 0
    assert topo.gpus[0].cpus == "0-15"


def test_tabs_and_spaces_and_indentation_give_the_same_topology() -> None:
    tabbed = text("rtx4090-8gpu-node-per-socket")
    spaced = "\n".join("    " + line.replace("\t", "   ") for line in tabbed.splitlines())
    assert "\t" not in spaced
    a, b = parse_topo_text(tabbed), parse_topo_text(spaced)
    assert a.links == b.links
    assert a.gpus == b.gpus
    assert a.links[0][:5] == ["X", "NODE", "NODE", "NODE", "SYS"]


def test_legend_and_nic_legend_are_not_read_as_rows() -> None:
    raw = text("l40s-4gpu-two-per-socket") + "\nLegend:\n\n  X    = Self\n\nNIC Legend:\n\n  NIC0: mlx5_0\n"
    topo = parse_topo_text(raw)
    assert len(topo) == 4
    assert topo.links[1] == ["NODE", "X", "SYS", "SYS"]


def test_device_plugin_ids_replace_the_index_names() -> None:
    uuids = [f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(4)]
    topo = parse_topo_text(text("l40s-4gpu-two-per-socket"), resource="nvidia.com/gpu.shared", ids=uuids)
    assert [g.id for g in topo.gpus] == uuids
    assert [g.index for g in topo.gpus] == [0, 1, 2, 3]
    assert topo.resource == "nvidia.com/gpu.shared"
    with pytest.raises(TopoTextError, match="no device id given for GPU index 3"):
        parse_topo_text(text("l40s-4gpu-two-per-socket"), ids=uuids[:3])


def test_old_soc_code_reads_as_sys() -> None:
    raw = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tSOC\t0-7\nGPU1\tSOC\t X \t8-15\n"
    topo = parse_topo_text(raw)
    assert topo.links[0][1] == "SYS"
    assert topo.gpus[1].cpus == "8-15"
    assert topo.gpus[1].numa == -1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "no header row"),
        ("nvidia-smi: command not found\n", "no header row"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\n", "no GPU1 row"),
        (
            "\tGPU0\tGPU1\tGPU2\nGPU0\t X \tNV4\tSYS\nGPU1\tNV4\t X\nGPU2\tSYS\tSYS\t X\n",
            "row GPU1 has 2 cells",
        ),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tPIX\t X\n", "not symmetric"),
        ("\tGPU0\tGPU1\nGPU0\t X \tFOO\nGPU1\tFOO\t X\n", "'FOO' is not a topo -m link code"),
        ("GPU0\t X \tNV4\n\tGPU0\tGPU1\n", "matrix row before the header"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU0\t X \tNV4\nGPU1\tNV4\t X\n", "row GPU0 appears twice"),
    ],
)
def test_malformed_text_is_a_clear_error(raw: str, message: str) -> None:
    with pytest.raises(TopoTextError, match=message):
        parse_topo_text(raw)
