"""The demo's pure parts: traffic curve, serving model, fleet annotations, the scheduler's reading of
extender answers."""

from __future__ import annotations

import random

import pytest
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    allocation_from_doc,
    topology_from_doc,
)

from toposcale.demo.fleet import DEFAULT_FLEET, build_fleet, has_free_single_numa_set, single_numa
from toposcale.demo.placement import NoAllocation, predict_allocation, set_tier
from toposcale.demo.scheduler import ExtenderError, parse_filter, parse_priorities, pick
from toposcale.demo.serving import ReplicaModel, ServingParams, new_replica, new_request
from toposcale.demo.traffic import TrafficCurve, poisson


def test_traffic_rises_holds_and_falls_back() -> None:
    c = TrafficCurve(600, base_rps=2, peak_rps=20, noise=0)
    assert c.rate(0) == pytest.approx(2)
    assert c.rate(0.36 * 600) == pytest.approx(20)  # plateau
    assert c.rate(0.9 * 600) == pytest.approx(2)  # back to base
    rising = [c.rate(t) for t in range(int(0.08 * 600), int(0.28 * 600), 10)]
    assert rising == sorted(rising)


def test_traffic_is_reproducible_per_seed() -> None:
    a, b, c = TrafficCurve(600, seed=1), TrafficCurve(600, seed=1), TrafficCurve(600, seed=2)
    ts = range(0, 600, 7)
    assert [a.rate(t) for t in ts] == [b.rate(t) for t in ts]
    assert [a.rate(t) for t in ts] != [c.rate(t) for t in ts]


def test_traffic_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        TrafficCurve(0)
    with pytest.raises(ValueError):
        TrafficCurve(100, rise_start=0.5, rise_end=0.2)


def test_poisson_mean() -> None:
    rng = random.Random(3)
    draws = [poisson(rng, 2.5) for _ in range(5000)]
    assert sum(draws) / len(draws) == pytest.approx(2.5, rel=0.05)
    assert poisson(rng, 0) == 0


# The demo's profile with the KV cache of a replica sharing its GPUs (60k tokens), so concurrency fills it.
SMALL_CACHE = ServingParams(kv_capacity_tokens=60_000)


def drive(rps: float, seconds: float, seed: int = 1, dt: float = 0.2) -> ReplicaModel:
    m, rng, t = new_replica(SMALL_CACHE), random.Random(seed), 0.0
    while t < seconds:
        t += dt
        for _ in range(poisson(rng, rps * dt)):
            m.submit(new_request(rng, t, SMALL_CACHE))
        m.step(t, dt)
    return m


def test_kv_cache_fills_with_concurrency() -> None:
    light, heavy = drive(1.0, 300), drive(4.0, 300)
    assert 0 < light.kv_usage < heavy.kv_usage <= 1
    assert len(light.running) < len(heavy.running)
    assert not light.waiting and not heavy.waiting  # both under capacity


def test_overload_fills_the_kv_cache_and_builds_a_queue() -> None:
    m = drive(10.0, 200)
    assert len(m.waiting) > 50
    assert m.kv_usage > 0.9
    assert m.preemptions_total > 0  # generation outgrew the cache: sequences were recomputed
    assert len(m.running) <= m.profile.max_num_seqs


def test_the_batch_limit_holds_when_the_cache_is_large() -> None:
    params = ServingParams(max_num_seqs=8, kv_capacity_tokens=10**7)
    m, rng, t = new_replica(params), random.Random(1), 0.0
    while t < 60:
        t += 0.2
        for _ in range(poisson(rng, 2.0)):
            m.submit(new_request(rng, t, params))
        m.step(t, 0.2)
    assert len(m.running) == 8 and m.waiting


def test_finished_requests_have_ordered_latencies() -> None:
    m = drive(3.0, 120)
    done = m.drain_finished()
    assert done and m.success_total == len(done)
    for f in done:
        assert 0 <= f.queue_s <= f.ttft_s <= f.e2e_s
    assert m.drain_finished() == []
    assert m.generation_tokens_total > 0 and m.prompt_tokens_total > 0


def test_fleet_nodes_carry_valid_annotations() -> None:
    nodes = build_fleet()
    assert [n.name for n in nodes] == [s.name for s in DEFAULT_FLEET]
    for node in nodes:
        obj = node.node_object()
        ann = obj["metadata"]["annotations"]
        topo = topology_from_doc(ann[TOPOLOGY_ANNOTATION])
        assert [g.id for g in topo.gpus] == [g.id for g in node.topology.gpus]
        alloc = allocation_from_doc(ann[ALLOCATION_ANNOTATION])
        assert alloc.allocated == frozenset(node.allocated)
        assert obj["status"]["allocatable"]["nvidia.com/gpu"] == str(len(topo.gpus))


def test_fleet_allocation_and_release() -> None:
    node = build_fleet()[0]
    ids = node.free_ids()[:4]
    node.allocate("p", ids, "demo")
    with pytest.raises(ValueError, match="already allocated"):
        node.allocate("q", ids[:1], "demo")
    assert allocation_from_doc(node.node_object()["metadata"]["annotations"][ALLOCATION_ANNOTATION]).allocated
    assert sorted(node.release("p")) == sorted(ids)
    assert len(node.free_ids()) == node.capacity


def test_single_numa_sets() -> None:
    by = {n.name: n for n in build_fleet()}
    # the RTX 4090 box has GPUs 0 and 5 taken: three free per socket, no single-NUMA set of four
    assert not has_free_single_numa_set(by["gpu-rtx4090-0"], 4)
    assert has_free_single_numa_set(by["gpu-a6000-0"], 4)  # GPU 4 taken, socket 0 still whole
    topo = by["gpu-hgx-h100-0"].topology
    assert single_numa(topo, [0, 1, 2, 3]) is True
    assert single_numa(topo, [2, 3, 4, 5]) is False


def test_the_demo_and_the_simulator_say_the_same_of_the_pcie_box() -> None:
    # NUMA N/A and CPU affinity 0-95 on every GPU, SYS between the two switch trees: the same affinity is no
    # evidence of one NUMA node, so each whole tree is single-NUMA and the other 68 four-GPU sets cross.
    from itertools import combinations

    from toposcale.simulate.tiers import cross_socket

    by = {n.name: n for n in build_fleet()}
    node = by["gpu-pcie-l40s-0"]
    four = [list(c) for c in combinations(range(8), 4)]
    assert [c for c in four if single_numa(node.topology, c)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for c in four:
        assert single_numa(node.topology, c) is not cross_socket(node.topology, sum(1 << i for i in c))
    assert has_free_single_numa_set(node, 4)
    node.allocate("p", [node.topology.gpus[i].id for i in (0, 4)], "demo")
    assert not has_free_single_numa_set(node, 4)  # each tree has three free: only sets across SYS are left


def test_device_plugin_prediction_keeps_a_whole_group() -> None:
    by = {n.name: n for n in build_fleet()}
    a6000 = by["gpu-a6000-0"]
    ids = predict_allocation(a6000.topology, a6000.free_ids(), 4, random.Random(0))
    idx = a6000.indices(ids)
    assert idx == [0, 1, 2, 3]  # socket 1 is broken by the batch job on GPU 4
    assert set_tier(a6000.topology, idx).label == "numa"
    hgx = by["gpu-hgx-h100-0"]
    assert (
        set_tier(
            hgx.topology, hgx.indices(predict_allocation(hgx.topology, hgx.free_ids(), 4, random.Random(0)))
        ).label
        == "nvlink"
    )
    with pytest.raises(NoAllocation):
        predict_allocation(a6000.topology, a6000.free_ids()[:3], 4, random.Random(0))


NODES = ["a", "b", "c"]


def test_filter_answer_pascal_and_lower_case() -> None:
    pascal = {
        "Nodes": {"items": [{"metadata": {"name": "a"}}]},
        "FailedNodes": {"b": "busy"},
        "FailedAndUnresolvableNodes": {"c": "never"},
        "Error": "",
    }
    ans = parse_filter(pascal, NODES)
    assert ans.passed == ["a"] and ans.failed == {"b": "busy", "c": "never"}
    lower = {"nodenames": ["b"], "failedNodes": {}, "error": ""}
    assert parse_filter(lower, NODES).passed == ["b"]
    assert parse_filter({"Error": ""}, NODES).passed == []  # neither Nodes nor NodeNames: all rejected


def test_filter_errors() -> None:
    with pytest.raises(ExtenderError, match="boom"):
        parse_filter({"Error": "boom"}, NODES)
    with pytest.raises(ExtenderError, match="not sent"):
        parse_filter({"NodeNames": ["zzz"]}, NODES)
    with pytest.raises(ExtenderError):
        parse_filter([], NODES)


def test_priorities_and_pick() -> None:
    scores = parse_priorities([{"Host": "a", "Score": 3}, {"host": "b", "score": 9}])
    assert scores == {"a": 3, "b": 9}
    assert pick(["a", "b"], scores, 5, random.Random(0)) == ("b", 9 * 5 * 10)
    with pytest.raises(ExtenderError):
        parse_priorities({"Host": "a"})
    ties = {pick(["a", "b"], {"a": 4, "b": 4}, 1, random.Random(s))[0] for s in range(20)}
    assert ties == {"a", "b"}  # ties broken at random, as selectHost does
