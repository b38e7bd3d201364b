"""The event loop's bookkeeping: waiting pods, departures, stranded GPUs, first 4-GPU miss, determinism."""

from __future__ import annotations

import pytest
from toposcale.extender.topology.model import Tier

from toposcale.simulate.compare import compare
from toposcale.simulate.report import to_json
from toposcale.simulate.workload import PodSpec, generate


def test_a_pod_that_found_no_node_is_placed_when_a_departure_frees_one(fleet_of) -> None:
    fleet = fleet_of(a100_4gpu_bridged_pairs_two_sockets=1)
    pods = [
        PodSpec("a", 0.0, 4, 10.0),  # fills the box until t=10
        PodSpec("b", 1.0, 4, 10.0),  # finds no node: waits
        PodSpec("c", 2.0, 2, 5.0),  # waits as well
        PodSpec("d", 15.0, 1, 1.0),
    ]
    (r,) = compare(fleet, pods, ["spread"], seed=1)
    # At t=10 "a" leaves and the earliest waiting pod that fits, "b", gets the whole box until t=20;
    # at t=15 (the run's end) "c" and "d" are still waiting.
    assert (r.placed, r.pending) == (2, 2)
    assert r.first_4gpu_miss_load == pytest.approx(1.0)

    pods[-1] = PodSpec("d", 25.0, 1, 1.0)  # "b" leaves at t=20: "c" gets 2 GPUs, then "d" arrives and fits
    (r,) = compare(fleet, pods, ["spread"], seed=1)
    assert (r.placed, r.pending) == (4, 0)


def test_stranded_gpus_count_free_gpus_a_4_gpu_pod_cannot_use(fleet_of) -> None:
    # One 8-GPU box. From t=0 to t=10 one 1-GPU pod runs: 7 free, 4 usable by a 4-GPU pod, 3 stranded.
    # From t=10 to t=20 a 4-GPU pod joins: 3 free, all stranded. Time-weighted mean: (3*10 + 3*10)/20 = 3.
    fleet = fleet_of(hgx_h100_nvswitch_8gpu=1)
    pods = [PodSpec("one", 0.0, 1, 100.0), PodSpec("four", 10.0, 4, 100.0), PodSpec("last", 20.0, 2, 1.0)]
    (r,) = compare(fleet, pods, ["binpack"], seed=1)
    assert r.stranded_mean == pytest.approx(3.0)
    # 1 GPU for 10 s, then 5 for 10 s, of 8: mean utilisation (10 + 50) / 20 / 8
    assert r.utilization_mean == pytest.approx(60 / 20 / 8)
    # the series samples the state just before each arrival, and ends with the state after the last one
    assert r.series[0] == (0.0, 0, 0, 0, 0)  # empty box: 8 free, two 4-GPU pods fit
    assert r.series[-1] == (20.0, 1, 7, 2, 2)  # "last" took 2 of the 3 free: 1 left, stranded
    # shares are over multi-GPU pods only: "four" and "last", both NVLink on an NVSwitch box
    assert r.multi == 2 and r.tier_share(Tier.NVLINK) == 1.0 and r.best_tier_share == 1.0


def test_shares_over_no_multi_gpu_pod_are_undefined_not_zero(fleet_of) -> None:
    fleet = fleet_of(l40s_4gpu_two_per_socket=1)
    (r,) = compare(fleet, [PodSpec("a", 0.0, 1, 5.0)], ["random"], seed=1)
    doc = to_json([r])["policies"]["random"]
    assert doc["placed"] == 1
    assert doc["single_numa_share"] is None
    assert doc["best_tier_share"] is None
    assert doc["cross_socket_share"] is None


def test_the_same_seed_gives_the_same_run_and_another_seed_another(fleet_of) -> None:
    fleet = fleet_of(
        a6000_8gpu_nvlink_bridge_pairs=6, pcie_8gpu_two_switch_trees=4, l40s_4gpu_two_per_socket=5
    )
    policies = ["toposcale", "spread", "binpack", "random"]

    def run(seed: int) -> dict:
        pods = generate(600, seed=seed, fleet_gpus=fleet.gpus)
        doc = to_json(compare(fleet, pods, policies, seed=seed))
        for p in doc["policies"].values():
            assert p["decisions_per_s"] > 0
            p.pop("decisions_per_s")  # wall-clock speed, the only thing allowed to differ
        return doc

    first = run(7)
    assert run(7) == first
    assert run(8) != first
    assert all(p["placed"] + p["pending"] == 600 for p in first["policies"].values())


def test_fleet_entries_with_the_same_wiring_behave_as_one(tmp_path) -> None:
    # The same box listed twice (say, two racks) is the same fleet as one entry with both counts.
    from toposcale.simulate.fleet import load_fleet

    from .conftest import TOPOLOGIES

    topo = TOPOLOGIES / "a6000-8gpu-nvlink-bridge-pairs.txt"
    (tmp_path / "split.yaml").write_text(
        f"nodes:\n  - {{topology: {topo}, count: 3, name: rack-a}}\n"
        f"  - {{topology: {topo}, count: 2, name: rack-b}}\n"
    )
    (tmp_path / "one.yaml").write_text(f"nodes:\n  - {{topology: {topo}, count: 5}}\n")
    pods = generate(400, seed=4, fleet_gpus=40)
    runs = []
    for name in ("split", "one"):
        doc = to_json(compare(load_fleet(tmp_path / f"{name}.yaml"), pods, ["toposcale", "spread"], seed=4))
        for p in doc["policies"].values():
            p.pop("decisions_per_s")
        runs.append(doc)
    assert runs[0] == runs[1]


def test_the_figures_best_tier_share_is_over_the_pods_placed_in_each_window() -> None:
    from toposcale.simulate.metrics import Sample
    from toposcale.simulate.plot import windowed_best_share

    series = [
        Sample(3600.0 * i, 0, 0, multi, best)
        for i, (multi, best) in enumerate([(0, 0), (4, 4), (8, 5), (8, 5)])
    ]
    # window 1: 4 of 4 pods best, then 1 of 4; no pod placed in the last window: no point rather than 0
    assert windowed_best_share(series, window=1) == ([1.0, 2.0], [100.0, 25.0])
    assert windowed_best_share(series, window=2) == ([2.0, 3.0], [62.5, 25.0])
