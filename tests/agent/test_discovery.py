"""NVML discovery, driven by the replay backend over real captures (tests/fixtures/nvml/*, each SOURCE.md).

Where a test needs a failure the machines did not show (a lost GPU, NoPermission), it takes the real capture
and changes the one answer it is about, so everything else is still what the hardware said.
"""

from __future__ import annotations

import json

import pytest
from toposcale.extender.agent.cpuset import format_cpuset, from_mask_words, parse_cpuset
from toposcale.extender.agent.discovery import DiscoveryError, discover
from toposcale.extender.agent.nvml import normalize_bus_id
from toposcale.extender.agent.replay import ReplayBackend, load_capture
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    topology_from_doc,
    topology_to_doc,
)
from toposcale.extender.topology.topo_text import parse_topo_text

from .conftest import VM1, X4, X4_UUIDS, X4B, load_x4


def load_x4b() -> dict:
    return json.loads((X4B / "nvml_capture.json").read_text())


def test_h100_x4_nvswitch_capture_gives_nv18_between_every_pair() -> None:
    found = discover(ReplayBackend(load_x4()))
    topo = found.topology
    assert [g.uuid for g in topo.gpus] == X4_UUIDS
    assert [g.id for g in topo.gpus] == X4_UUIDS  # deviceIDStrategy=uuid, the plugin's default
    assert [g.pci for g in topo.gpus] == ["0000:00:06.0", "0000:00:07.0", "0000:00:08.0", "0000:00:09.0"]
    assert {g.model for g in topo.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.memory for g in topo.gpus} == {85520809984}
    assert {g.mig for g in topo.gpus} == {False}
    for i in range(4):
        for j in range(4):
            assert topo.links[i][j] == ("X" if i == j else "NV18")
    assert found.unhealthy == frozenset()
    assert found.driver == "580.159.04"


def test_h100_x4_numa_comes_from_memory_affinity_when_nvml_and_sysfs_do_not_know() -> None:
    # There: NumaNodeId NotSupported, sysfs numa_node -1, memory affinity {0}; the VM has one NUMA node.
    topo = discover(ReplayBackend(load_x4())).topology
    assert [g.numa for g in topo.gpus] == [0, 0, 0, 0]
    assert [g.cpus for g in topo.gpus] == ["0-63"] * 4
    assert topo.unknown == []


@pytest.mark.parametrize("machine", [X4, X4B], ids=lambda p: p.name)
def test_nvml_path_and_topo_m_parser_give_the_same_model_for_real_4gpu_machines(machine) -> None:
    nvml = discover(ReplayBackend.from_file(machine / "nvml_capture.json")).topology
    text = parse_topo_text((machine / "topo_m.txt").read_text(), ids=[g.id for g in nvml.gpus])
    assert text.links == nvml.links
    assert [(g.id, g.index, g.numa, g.cpus) for g in text.gpus] == [
        (g.id, g.index, g.numa, g.cpus) for g in nvml.gpus
    ]
    assert text.fingerprint == nvml.fingerprint  # the extender memoizes scores per fingerprint


def test_replay_reproduces_what_the_agent_printed_with_real_nvml_on_that_machine() -> None:
    # agent_once.json was printed by `toposcale agent --once` through PynvmlBackend on the machine itself.
    real = json.loads((X4B / "agent_once.json").read_text())
    replayed = topology_to_doc(discover(ReplayBackend.from_file(X4B / "nvml_capture.json")).topology)
    assert replayed == real[TOPOLOGY_ANNOTATION]
    assert real[ALLOCATION_ANNOTATION]["allocated"] is None  # that machine has no kubelet


def test_without_memory_affinity_numa_stays_unknown_never_node_0() -> None:
    cap = load_x4()
    for dev in cap["devices"]:
        dev["memory_affinity_numa_nodes"] = {"error": "NotSupported"}
    topo = discover(ReplayBackend(cap)).topology
    assert [g.numa for g in topo.gpus] == [-1] * 4
    assert "gpu0.numa: nvml NotSupported, sysfs -1, memory affinity NotSupported" in topo.unknown


def test_memory_affinity_naming_several_nodes_is_not_a_numa_node() -> None:
    cap = load_x4()
    for dev in cap["devices"]:
        dev["memory_affinity_numa_nodes"] = {"value": "0-1"}
    assert {g.numa for g in discover(ReplayBackend(cap)).topology.gpus} == {-1}


def test_h100_vm_1gpu_capture_records_what_it_could_not_learn() -> None:
    found = discover(ReplayBackend.from_file(VM1 / "nvml_probe.json"))
    topo = found.topology
    (gpu,) = topo.gpus
    assert gpu.id == gpu.uuid == "GPU-90ef4900-6f7f-5542-665c-a90ea1c84b18"
    assert gpu.pci == "0000:00:06.0"
    assert gpu.numa == -1
    assert gpu.cpus is None  # the first probe printed a ctypes repr: not in the capture, not guessed
    assert topo.links == [["X"]]
    assert any(u.startswith("gpu0.numa:") for u in topo.unknown)
    assert "gpu0.cpus: NotCaptured" in topo.unknown
    assert "gpu0.nvlink0: NotSupported" in topo.unknown
    topology_from_doc(topology_to_doc(topo))  # still a valid document for the extender


def test_h100_vm_1gpu_topo_m_differs_from_nvml_only_in_what_the_capture_lacks() -> None:
    nvml = discover(ReplayBackend.from_file(VM1 / "nvml_probe.json")).topology
    text = parse_topo_text((VM1 / "topo_m.txt").read_text())
    assert text.links == nvml.links
    # nvidia-smi printed CPU affinity 0-15 and NUMA affinity 0 (from the memory affinity the first probe lost)
    assert (text.gpus[0].cpus, text.gpus[0].numa) == ("0-15", 0)
    assert (nvml.gpus[0].cpus, nvml.gpus[0].numa) == (None, -1)


def test_index_device_id_strategy() -> None:
    topo = discover(ReplayBackend(load_x4()), id_strategy="index").topology
    assert [g.id for g in topo.gpus] == ["0", "1", "2", "3"]
    assert [g.uuid for g in topo.gpus] == X4_UUIDS


def test_lost_gpu_stays_in_the_model_and_is_reported_unhealthy() -> None:
    cap = load_x4()
    dev = cap["devices"][2]
    for key in ("name", "memory_total", "numa_node_id", "cpu_affinity", "mig_mode"):
        dev[key] = {"error": "GpuIsLost"}
    dev["nvlinks"] = [{"link": 0, "state": {"error": "GpuIsLost"}}]
    for pair in ("2,0", "2,1", "2,3", "0,2", "1,2", "3,2"):
        cap["common_ancestor"][pair] = {"error": "GpuIsLost"}
    found = discover(ReplayBackend(cap))
    assert found.unhealthy == {X4_UUIDS[2]}
    topo = found.topology
    assert len(topo) == 4
    assert topo.gpus[2].id == X4_UUIDS[2] and topo.gpus[2].model is None
    assert topo.links[0][1] == "NV18"
    # links to the lost GPU could not be measured: the weakest code, and the gap is written down
    assert topo.links[2][0] == topo.links[0][2] == "SYS"
    assert any(u.startswith("links[0][2]: not learned") for u in topo.unknown)
    assert "gpu2.model: GpuIsLost" in topo.unknown


def test_lost_gpu_whose_uuid_is_unreadable_is_named_by_index() -> None:
    cap = load_x4()
    cap["devices"][1]["handle"] = {"error": "GpuIsLost"}
    found = discover(ReplayBackend(cap))
    assert found.unhealthy == {"GPU1"}
    assert [g.id for g in found.topology.gpus] == [X4_UUIDS[0], "GPU1", X4_UUIDS[2], X4_UUIDS[3]]


def test_no_permission_for_cpu_affinity_keeps_the_rest() -> None:
    cap = load_x4()
    cap["devices"][0]["cpu_affinity"] = {"error": "NoPermission"}
    topo = discover(ReplayBackend(cap)).topology
    assert topo.gpus[0].cpus is None and topo.gpus[1].cpus == "0-63"
    assert "gpu0.cpus: NoPermission" in topo.unknown
    assert topo.links[0][1] == "NV18"


def test_without_nvlink_the_pcie_common_ancestor_decides() -> None:
    cap = load_x4()
    for dev in cap["devices"]:
        dev["nvlinks"] = [{"link": 0, "state": {"error": "NotSupported"}}]
    topo = discover(ReplayBackend(cap)).topology
    assert topo.links[0][1] == "PHB"  # NVML answered HOSTBRIDGE (30) for every pair there


def test_direct_gpu_to_gpu_nvlinks_are_counted_per_pair() -> None:
    # An NVLink-bridged pair: GPU0 <-> GPU1 over 4 links to a GPU, GPU2/GPU3 with NVLink off.
    cap = load_x4()
    buses = [d["pci_bus_id"]["value"] for d in cap["devices"]]
    for i, dev in enumerate(cap["devices"]):
        peer = {0: 1, 1: 0}.get(i)
        links = []
        for link in range(18):
            if peer is not None and link < 4:
                links.append(
                    {
                        "link": link,
                        "state": {"value": 1},
                        "remote_type": {"value": 0},
                        "remote_pci": {"value": buses[peer]},
                    }
                )
            else:
                links.append({"link": link, "state": {"value": 0}})
        dev["nvlinks"] = links
    topo = discover(ReplayBackend(cap)).topology
    assert topo.links[0][1] == "NV4"
    assert topo.links[0][2] == topo.links[2][3] == "PHB"


def test_two_baseboards_with_disjoint_switches_are_one_fabric() -> None:
    # HGX-2 / DGX-2: each GPU reaches only its own baseboard's NVSwitches, the baseboards are bridged switch
    # to switch, and nvidia-smi prints NV<n> for every pair. Disjoint switch bus ids prove nothing.
    cap = load_x4()
    for i, dev in enumerate(cap["devices"]):
        for entry in dev["nvlinks"]:
            if "remote_pci" in entry:
                entry["remote_pci"] = {"value": "0000:a1:00.0" if i < 2 else "0000:b1:00.0"}
    topo = discover(ReplayBackend(cap)).topology
    assert {topo.links[i][j] for i in range(4) for j in range(4) if i != j} == {"NV18"}


def _fabric(cluster: str, clique: int, state: int = 3) -> dict:
    return {"value": {"call": "nvmlDeviceGetGpuFabricInfoV/v3", "state": state, "status": 0,
                      "cliqueId": clique, "clusterUuid": cluster}}


def test_fabric_manager_cliques_split_switch_attached_gpus_into_domains() -> None:
    cap = load_x4b()
    for i, dev in enumerate(cap["devices"]):
        dev["fabric"] = _fabric("ab" * 16, 1 if i < 2 else 2)
    topo = discover(ReplayBackend(cap)).topology
    assert topo.links[0][1] == "NV18" and topo.links[2][3] == "NV18"
    assert topo.links[1][2] == "PHB"  # NVML's common ancestor on that machine


def test_unregistered_fabric_says_nothing_and_switches_stay_one_fabric() -> None:
    cap = load_x4b()
    for i, dev in enumerate(cap["devices"]):
        dev["fabric"] = _fabric("ab" * 16, i, state=2)  # IN_PROGRESS: clique ids not assigned yet
    topo = discover(ReplayBackend(cap)).topology
    assert {topo.links[i][j] for i in range(4) for j in range(4) if i != j} == {"NV18"}


def test_real_capture_fabric_is_one_registered_clique() -> None:
    # h100-x4-vm-nvswitch-b: nvmlDeviceGetGpuFabricInfoV said Completed/Success, cliqueId 0, zero cluster.
    backend = ReplayBackend(load_x4b())
    assert {backend.fabric(i) for i in range(4)} == {("0" * 32, 0)}


def test_nvml_that_cannot_start_is_an_error_not_an_empty_node() -> None:
    with pytest.raises(DiscoveryError, match="LibraryNotFound"):
        discover(ReplayBackend({"format": "toposcale-nvml-capture/1", "init": {"error": "LibraryNotFound"}}))


def test_replay_never_invents_an_answer() -> None:
    cap = load_x4()
    del cap["devices"][0]["uuid"]
    backend = ReplayBackend(cap)
    with pytest.raises(Exception, match="NotCaptured"):
        backend.uuid(0)


def test_not_a_capture_is_rejected(tmp_path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an NVML capture"):
        load_capture(p)


@pytest.mark.parametrize(
    ("words", "text"),
    [([0xFFFFFFFFFFFFFFFF], "0-63"), ([0xF, 0x1], "0-3,64"), ([0], ""), ([0b1010_0111], "0-2,5,7")],
)
def test_cpu_affinity_masks_become_cpusets(words: list[int], text: str) -> None:
    cpus = from_mask_words(words)
    assert format_cpuset(cpus) == text
    assert parse_cpuset(text) == cpus


@pytest.mark.parametrize("bad", ["a-b", "3-1", "1,,2", "<pynvml.c_ulong_Array_4 object at 0x7f6b78e148d0>"])
def test_bad_cpusets_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cpuset(bad)


def test_bus_ids_are_normalised_to_sysfs_form() -> None:
    assert normalize_bus_id(b"00000000:18:00.0\x00") == "0000:18:00.0"
    assert normalize_bus_id("0000:AB:00.0") == "0000:ab:00.0"


def test_socket_groups_from_cpu_affinity_when_numa_is_unknown() -> None:
    cap = load_x4()
    for i, dev in enumerate(cap["devices"]):
        dev["memory_affinity_numa_nodes"] = {"error": "NotSupported"}
        dev["cpu_affinity"] = {"value": "0-31" if i in (0, 2) else "32-63"}
    found = discover(ReplayBackend(cap))
    assert {g.numa for g in found.topology.gpus} == {-1}
    assert found.socket_groups == [[0, 2], [1, 3]]
    assert [g.cpus for g in found.topology.gpus] == ["0-31", "32-63", "0-31", "32-63"]


def test_socket_groups_need_every_gpus_affinity() -> None:
    cap = load_x4()
    cap["devices"][3]["cpu_affinity"] = {"error": "NoPermission"}
    assert discover(ReplayBackend(cap)).socket_groups == []
