"""Placement policies on small fleets of real topologies, where the right answer is known by hand.

Every run goes through the extender's own scoring and device-plugin prediction (imported, not copied).
"""

from __future__ import annotations

import dataclasses

import pytest
from toposcale.extender.topology.model import Tier

from toposcale.simulate.compare import compare
from toposcale.simulate.noderesources import extender_points, least_allocated, most_allocated

from .conftest import in_order

SEEDS = range(1, 9)


def by_policy(results):
    return {r.policy: r for r in results}


def test_node_resources_fit_scores_follow_the_kube_scheduler_formulas() -> None:
    # leastRequestedScore = (capacity - requested) * 100 / capacity in integers; requested includes the pod
    assert least_allocated(requested=2, capacity=8) == 75
    assert least_allocated(requested=3, capacity=8) == 62  # 62.5 truncated, as in Go
    assert least_allocated(requested=9, capacity=8) == 0  # over capacity scores 0
    assert most_allocated(requested=3, capacity=8) == 37
    assert most_allocated(requested=9, capacity=8) == 100  # clamped to capacity
    assert least_allocated(requested=1, capacity=0) == most_allocated(requested=1, capacity=0) == 0
    # An extender's 0..10 score times its weight, scaled to MaxNodeScore 100 / MaxExtenderPriority 10
    assert extender_points(7, weight=5) == 350


@pytest.mark.parametrize("seed", SEEDS)
def test_a_one_gpu_pod_joins_the_half_used_pair_box_so_the_4_gpu_pod_still_fits(fleet_of, seed: int) -> None:
    # Two 4-GPU boxes, each two NVLink pairs on different sockets. A 2-GPU pod takes a pair of box A. Spread
    # sends the next 1-GPU pod to the emptier box B, so the 4-GPU pod finds no box with 4 free GPUs. The
    # toposcale policy puts the 1-GPU pod on A's other pair and keeps B whole for the 4-GPU pod.
    fleet = fleet_of(a100_4gpu_bridged_pairs_two_sockets=2)
    res = by_policy(compare(fleet, in_order(2, 1, 4), ["toposcale", "spread"], seed=seed))
    assert (res["toposcale"].placed, res["toposcale"].pending) == (3, 0)
    assert (res["spread"].placed, res["spread"].pending) == (2, 1)
    assert res["spread"].first_4gpu_miss_load == pytest.approx(3 / 8)
    assert res["toposcale"].first_4gpu_miss_load is None
    # The 2-GPU pod got an NVLink pair under both; the 4-GPU pod spans the sockets (all this box has).
    assert res["toposcale"].tiers[Tier.NVLINK] == res["spread"].tiers[Tier.NVLINK] == 1
    assert res["toposcale"].best_tier == res["toposcale"].multi == 2


def test_toposcale_keeps_whole_sockets_of_pair_boxes_for_4_gpu_pods_spread_does_not(fleet_of) -> None:
    # Two 8-GPU boxes of NVLink-bridged pairs, two pairs per socket. A 4-GPU pod takes one socket of box A.
    # Spread sends the next two 1-GPU pods to the empty box B, where the device plugin takes any GPU; the
    # second 4-GPU pod then lands on B and, unless both 1-GPU pods hit the same socket, spans the sockets.
    # The toposcale policy stacks the 1-GPU pods on A's free socket, so both 4-GPU pods get one socket each
    # (a NUMA-tier set: the best four GPUs of this box when empty).
    fleet = fleet_of(a6000_8gpu_nvlink_bridge_pairs=2)
    spread_missed = 0
    for seed in SEEDS:
        res = by_policy(compare(fleet, in_order(4, 1, 1, 4), ["toposcale", "spread"], seed=seed))
        topo, spread = res["toposcale"], res["spread"]
        assert topo.multi == spread.multi == 2
        assert topo.best_tier == topo.single_numa == 2
        assert topo.tiers[Tier.NUMA] == 2 and topo.cross_socket_share == 0
        spread_missed += spread.tiers[Tier.CROSS_SOCKET]
        assert spread.best_tier + spread.tiers[Tier.CROSS_SOCKET] == 2
    assert spread_missed > 0  # spread has no such guarantee: over these seeds it split a socket


@pytest.mark.parametrize("seed", SEEDS)
def test_binpack_fills_one_box_spread_spreads(fleet_of, seed: int) -> None:
    fleet = fleet_of(a100_4gpu_bridged_pairs_two_sockets=2)
    res = by_policy(compare(fleet, in_order(2, 2, 4), ["binpack", "spread", "random"], seed=seed))
    assert (res["binpack"].placed, res["binpack"].pending) == (3, 0)
    assert (res["spread"].placed, res["spread"].pending) == (2, 1)
    assert res["random"].placed + res["random"].pending == 3


def test_pods_only_go_where_they_fit(fleet_of) -> None:
    # One 4-GPU box and one 8-GPU box: an 8-GPU pod fits only the 8-GPU box, a second one nowhere.
    fleet = fleet_of(l40s_4gpu_two_per_socket=1, hgx_h100_nvswitch_8gpu=1)
    for policy in ("toposcale", "spread", "binpack", "random"):
        (r,) = compare(fleet, in_order(8, 8, 4, 1), [policy], seed=3)
        assert (r.placed, r.pending) == (2, 2), policy  # 8 on the HGX, 4 on the L40S; 8 and 1 wait
        assert r.tiers[Tier.NVLINK] == 1 and r.tiers[Tier.CROSS_SOCKET] == 1


def test_toposcale_prefers_the_nvlink_box_for_a_tensor_parallel_pod(fleet_of) -> None:
    # A PCIe-only box and an NVSwitch box, both empty: spread and binpack score them the same (8 GPUs each)
    # and pick at random; the extender steers the 4-GPU pod to NVLink every time.
    fleet = fleet_of(rtx4090_8gpu_node_per_socket=1, dgx_a100_nvswitch_8gpu=1)
    tiers = {"toposcale": set(), "spread": set()}
    for seed in SEEDS:
        for r in compare(fleet, in_order(4), ["toposcale", "spread"], seed=seed):
            tiers[r.policy].add(Tier(r.tiers.index(1)))
    assert tiers["toposcale"] == {Tier.NVLINK}
    assert tiers["spread"] == {Tier.NVLINK, Tier.NUMA}


def test_the_toposcale_policy_and_the_gpu_pick_are_the_extenders_own_functions(fleet_of, monkeypatch) -> None:
    # Not a copy: patching the extender's functions changes what the simulator does.
    from toposcale.extender.topology import allocator, scoring

    seen = {"score": 0, "candidates": 0}
    real_score, real_candidates = scoring.score_node, allocator.candidates

    def score_node(topo, free, k, scope="any"):
        seen["score"] += 1
        return real_score(topo, free, k, scope)

    def candidates(topo, free, k):
        seen["candidates"] += 1
        return real_candidates(topo, free, k)

    monkeypatch.setattr(scoring, "score_node", score_node)
    monkeypatch.setattr(allocator, "candidates", candidates)
    fleet = fleet_of(rtx4090_8gpu_node_per_socket=1, dgx_a100_nvswitch_8gpu=1)
    (r,) = compare(fleet, in_order(4), ["toposcale"], seed=1)
    assert seen["score"] == 2 and seen["candidates"] == 1  # both boxes scored, the chosen one allocated
    assert r.tiers[Tier.NVLINK] == 1

    # An extender that preferred the PCIe box would move the pod there.
    def prefer_pcie(topo, free, k, scope="any"):
        d = real_score(topo, free, k, scope)
        nvlink = topo.links[0][1].startswith("NV")
        return dataclasses.replace(d, score=0 if nvlink else 10)

    monkeypatch.setattr(scoring, "score_node", prefer_pcie)
    (r,) = compare(fleet, in_order(4), ["toposcale"], seed=1)
    assert r.tiers[Tier.NUMA] == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_the_shipped_profile_keeps_a_box_free_for_an_8_gpu_pod_the_spread_variant_does_not(
    fleet_of, seed: int
) -> None:
    # Two NVSwitch boxes: every set is NVLink, so the extender scores the boxes alike and NodeResourcesFit
    # decides. `toposcale` is the shipped profile (MostAllocated + extender): the second 4-GPU pod scores
    # 100 on the half-full box against 50 on the empty one, so both share a box and the 8-GPU pod gets the
    # other. `toposcale-spread` (LeastAllocated + extender) puts them one per box: the 8-GPU pod finds none.
    fleet = fleet_of(hgx_h100_nvswitch_8gpu=2)
    res = by_policy(compare(fleet, in_order(4, 4, 8), ["toposcale", "toposcale-spread"], seed=seed))
    assert (res["toposcale"].placed, res["toposcale"].pending) == (3, 0)
    assert (res["toposcale-spread"].placed, res["toposcale-spread"].pending) == (2, 1)
    assert res["toposcale"].tier_share(Tier.NVLINK) == 1.0


def test_toposcale_is_most_allocated_plus_the_extender_toposcale_spread_least_allocated() -> None:
    # The shipped profile's arithmetic on one node: extender score x weight 5 x 10 plus NodeResourcesFit.
    from toposcale.simulate.extender_api import node_score
    from toposcale.simulate.fleet import topology_from_text
    from toposcale.simulate.policies import make_policy

    from .conftest import TOPOLOGIES

    topo = topology_from_text((TOPOLOGIES / "hgx-h100-nvswitch-8gpu.txt").read_text(), "hgx")
    free = 0b1111_0000  # GPUs 4..7 free: a 4-GPU pod fills the box
    ext = node_score(topo, free, 4)
    assert ext is not None
    assert make_policy("toposcale").score(topo, free, 4, 4) == ext * 50 + most_allocated(8, 8)
    assert make_policy("toposcale-spread").score(topo, free, 4, 4) == ext * 50 + least_allocated(8, 8)
    assert most_allocated(8, 8) == 100 and least_allocated(8, 8) == 0
