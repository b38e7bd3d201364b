"""How well the GPUs a pod got are connected: the measures the report counts.

The tier and the socket span of a set are the extender's own (`scoring.set_tier`: the set's weakest link,
since a ring all-reduce runs at its slowest hop; `scoring.set_span`: NUMA nodes, else distinct CPU
affinities, touched). Four GPUs in NVLink pairs bridged by NODE are a `numa`-tier set, not an NVLink one.
`cross-socket` means some pair's traffic crosses the SMP interconnect (SYS), whatever NVLink the set also has.

Single NUMA node: the set touches one socket key (span 1). Where nvidia-smi printed neither NUMA node nor CPU
affinity (span 0), a set whose pairs are all PIX/PXB/PHB/NODE still counts (those paths never leave one NUMA
node); otherwise unknown is not counted as single-NUMA.
"""

from __future__ import annotations

from itertools import combinations

from toposcale.extender.topology.model import Tier, Topology

from .extender_api import set_span, set_tier

_SAME_NUMA_CODES = frozenset({"PIX", "PXB", "PHB", "NODE"})


def indices(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def single_numa(topo: Topology, mask: int) -> bool:
    span = set_span(topo, mask)
    if span:
        return span == 1
    return all(topo.links[a][b] in _SAME_NUMA_CODES for a, b in combinations(indices(mask), 2))


def best_tier(topo: Topology, k: int) -> Tier | None:
    """The best tier any k GPUs of this node offer when it is empty (None: the node has fewer than k)."""
    n = len(topo)
    if k > n:
        return None
    if k < 2:
        return Tier.NVLINK
    return min(set_tier(topo, sum(1 << i for i in c)) for c in combinations(range(n), k))
