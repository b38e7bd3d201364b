"""One NUMA node and crossing sockets are one rule: no set counts as both (tests/fixtures/topologies, real
`nvidia-smi topo -m` outputs, each headed by its source)."""

from __future__ import annotations

import dataclasses
from itertools import combinations

from toposcale.extender.topology.model import Topology

from toposcale.simulate.fleet import topology_from_text
from toposcale.simulate.tiers import cross_socket, single_numa, socket_span, span_known

from .conftest import TOPOLOGIES


def topology(stem: str) -> Topology:
    return topology_from_text((TOPOLOGIES / f"{stem}.txt").read_text(), stem)


def sets(topo: Topology, k: int) -> list[int]:
    return [sum(1 << i for i in c) for c in combinations(range(len(topo)), k)]


def test_pcie_switch_trees_with_one_affinity_everywhere_fall_back_to_the_links() -> None:
    # Every GPU lists CPU affinity 0-95 and NUMA N/A; SYS between the two switch trees. The same affinity on
    # every GPU says nothing about NUMA, so the links decide: only the two whole trees stay on one NUMA node.
    topo = topology("pcie-8gpu-two-switch-trees")
    assert {g.cpus for g in topo.gpus} == {"0-95"} and {g.numa for g in topo.gpus} == {-1}
    assert not span_known(topo)
    four = sets(topo, 4)
    assert len(four) == 70
    assert [m for m in four if single_numa(topo, m) and cross_socket(topo, m)] == []
    assert sorted(m for m in four if single_numa(topo, m)) == [0b0000_1111, 0b1111_0000]
    assert sum(cross_socket(topo, m) for m in four) == 68
    assert socket_span(topo, 0b0000_1111) is None  # unknown, not 1


def test_known_numa_ids_decide_whatever_the_links_say() -> None:
    # All-SYS RTX 4090 box, NUMA 0 for GPUs 0-3 and 1 for 4-7: four GPUs of one socket are one NUMA node
    # although every pair is SYS; a set over both sockets crosses them.
    topo = topology("rtx4090-8gpu-all-sys")
    assert span_known(topo)
    assert single_numa(topo, 0b0000_1111) and not cross_socket(topo, 0b0000_1111)
    assert cross_socket(topo, 0b0001_0111) and not single_numa(topo, 0b0001_0111)
    assert socket_span(topo, 0b1111_1111) == 2
    # NVLink across NUMA nodes still spans them: one GPU per NUMA node
    h100 = topology("h100-4gpu-nv6-numa-per-gpu")
    assert cross_socket(h100, 0b11) and socket_span(h100, 0b1111) == 4


def test_cpu_affinities_that_differ_between_gpus_are_the_socket_layout() -> None:
    # The same 4-GPU box with its NUMA ids removed: the two affinities still tell the sockets apart.
    topo = topology("l40s-4gpu-two-per-socket")
    gpus = [dataclasses.replace(g, numa=-1) for g in topo.gpus]
    topo = dataclasses.replace(topo, gpus=gpus, _fingerprint=None)  # a new wiring, not the memo of the old
    assert span_known(topo)
    assert single_numa(topo, 0b0011) and cross_socket(topo, 0b0101)


def test_no_set_of_any_real_topology_is_both() -> None:
    for path in sorted(TOPOLOGIES.glob("*.txt")):
        topo = topology(path.stem)
        for k in range(2, len(topo) + 1):
            for m in sets(topo, k):
                assert single_numa(topo, m) != cross_socket(topo, m), (path.stem, bin(m))
