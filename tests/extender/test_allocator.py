"""Prediction of the NVIDIA device plugin's choice (go-gpuallocator best-effort policy) on real topologies.

The reference below is a line-by-line port of gpuallocator/besteffort_policy.go (iterateGPUPartitions,
calculateGPUPartitionScore, the first-best-wins loops), run over the device orders the kubelet may pass
(`available.UnsortedList()` is Go map order). `candidates` must be exactly the sets it can return.
"""

from __future__ import annotations

import random
from itertools import combinations, permutations
from pathlib import Path

import pytest
from toposcale.extender.topology.allocator import (
    candidates,
    indices_of,
    mask_of,
    pair_score,
    set_score,
)
from toposcale.extender.topology.topo_text import parse_topo_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topologies"


def topo(name: str):
    return parse_topo_text((FIXTURES / f"{name}.txt").read_text())


def go_allocate(t, order: list[int], size: int) -> tuple[int, ...] | None:
    """besteffort_policy.go Allocate(available=order, required=nil, size)."""
    if size == 1:
        return (order[0],)  # every partition scores 0; the first one found wins

    def pscore(a, b):
        return 0 if a is None or b is None else pair_score(t, a, b)

    def sscore(s):
        return sum(pscore(a, b) for a, b in combinations(s, 2))

    devices: list[int | None] = list(order)
    while len(devices) % size:
        devices.append(None)
    padding = devices.count(None)
    best: list[list[int | None]] | None = None
    best_score = 0

    def iterate(devs, accum):
        nonlocal best, best_score
        if size == len(devs):
            cand = [*accum, devs]
            score = sum(sscore(s) for s in cand)
            if score > best_score or best is None:
                best, best_score = cand, score
            return
        for rest in combinations(devs[1:], size - 1):
            s = [devs[0], *rest]
            p = s.count(None)
            if not (p == 0 or p == padding):
                continue
            remaining = list(devs)
            for d in s:
                remaining.remove(d)
            iterate(remaining, [*accum, s])

    iterate(devices, [])
    assert best is not None
    chosen = best[0]
    hi = sscore(chosen)
    for s in best[1:]:
        if sscore(s) > hi:
            chosen, hi = s, sscore(s)
    if None in chosen:
        return None  # the Go code would hand back a nil device; allocator.py documents it never predicts this
    return tuple(sorted(chosen))  # type: ignore[arg-type]


def reachable(t, free: list[int], k: int, orders: int | None) -> set[tuple[int, ...]]:
    out: set[tuple[int, ...]] = set()
    if orders is None:
        seqs = permutations(free)
    else:
        rng = random.Random(7)
        seqs = (rng.sample(free, len(free)) for _ in range(orders))
    for order in seqs:
        got = go_allocate(t, list(order), k)
        if got is not None:
            out.add(got)
    return out


@pytest.mark.parametrize(
    "name", ["a100-4gpu-bridged-pairs-two-sockets", "l40s-4gpu-two-per-socket", "h100-4gpu-nv6-numa-per-gpu"]
)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_candidates_are_exactly_what_the_plugin_can_return_4gpu(name: str, k: int) -> None:
    t = topo(name)
    free = list(range(4))
    want = reachable(t, free, k, orders=None)
    got = {indices_of(m) for m in candidates(t, mask_of(free), k)}
    assert got == want


@pytest.mark.parametrize(
    ("name", "used", "k"),
    [
        ("a6000-8gpu-nvlink-bridge-pairs", [], 2),
        ("a6000-8gpu-nvlink-bridge-pairs", [0], 2),
        ("a6000-8gpu-nvlink-bridge-pairs", [0, 5], 3),
        ("pcie-8gpu-two-switch-trees", [], 4),
        ("pcie-8gpu-two-switch-trees", [1, 6], 2),
        ("rtx4090-8gpu-node-per-socket", [2], 4),
        ("hgx-h100-nvswitch-8gpu", [0, 5], 4),
    ],
)
def test_plugin_choices_over_random_orders_are_all_predicted_8gpu(name: str, used: list[int], k: int) -> None:
    t = topo(name)
    free = [i for i in range(len(t)) if i not in used]
    seen = reachable(t, free, k, orders=120)
    got = {indices_of(m) for m in candidates(t, mask_of(free), k)}
    assert seen <= got  # everything the plugin did return was predicted
    assert len(seen) >= min(len(got), 2)  # and the prediction is not a blanket "anything"


def test_pair_scores_follow_besteffort_policy() -> None:
    pcie = topo("pcie-8gpu-two-switch-trees")
    assert pair_score(pcie, 0, 1) == 50  # PIX
    assert pair_score(pcie, 0, 2) == 40  # PXB
    assert pair_score(pcie, 0, 4) == 10  # SYS
    a6000 = topo("a6000-8gpu-nvlink-bridge-pairs")
    assert pair_score(a6000, 0, 2) == 20  # NODE
    assert pair_score(a6000, 0, 1) == 4 * 100 + 20  # NV4 + the PCIe part estimated from the shared NUMA node
    hgx = topo("hgx-h100-nvswitch-8gpu")
    assert pair_score(hgx, 0, 4) == 18 * 100 + 10  # other socket
    assert set_score(a6000, mask_of([0, 1, 2])) == 420 + 20 + 20


def test_known_answers() -> None:
    a100 = topo("a100-4gpu-bridged-pairs-two-sockets")
    assert [indices_of(m) for m in candidates(a100, 0b1111, 2)] == [(0, 1)]  # NV12 beats the NODE pair
    pcie = topo("pcie-8gpu-two-switch-trees")
    assert [indices_of(m) for m in candidates(pcie, 0xFF, 2)] == [(0, 1), (4, 5)]  # the PIX pairs
    sys8 = topo("rtx4090-8gpu-all-sys")
    # All pairs SYS: the plugin ignores CPU affinity (go-gpuallocator #17), any 4 may come out.
    assert len(candidates(sys8, 0xFF, 4)) == 70
    assert candidates(a100, 0b0011, 4) == ()
    assert candidates(a100, 0b1111, 0) == ()
