"""How well the GPUs a pod got are connected: the measures the report counts (and the demo prints).

The tier of a set is the extender's own `scoring.set_tier`: the set's weakest link, since a ring all-reduce
runs at its slowest hop. Four GPUs in NVLink pairs bridged by NODE are a `numa`-tier set, not an NVLink one.

One NUMA node and crossing sockets are one rule, so a set is never both:

- When the node tells its socket layout (a NUMA id on every GPU, or CPU affinities that differ between its
  GPUs), the span is the extender's `scoring.set_span` (NUMA nodes, else distinct CPU affinities, touched):
  single-NUMA is span 1, cross-socket is span above 1, whatever links nvidia-smi printed.
- When it does not (NUMA N/A and the same CPU affinity on every GPU, e.g. a box whose GPUs all list 0-95),
  the same affinity everywhere is no evidence of one NUMA node, so the links decide: a SYS pair crosses
  sockets, a set whose pairs are all better than SYS (NV#/PIX/PXB/PHB/NODE) stays on one NUMA node.

The extender's `set_span` counts an identical affinity as one socket (its `numa` scope accepts such a set);
these measures do not, which is why they look at the whole node first.
"""

from __future__ import annotations

from itertools import combinations

from toposcale.extender.topology.model import Tier, Topology

from .extender_api import set_span, set_tier, socket_keys


def indices(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def span_known(topo: Topology) -> bool:
    """Whether the node says which socket each GPU hangs off: a NUMA id on every GPU, or CPU affinities that
    are not all the same."""
    keys = socket_keys(topo)
    if not keys or None in keys:
        return False
    return all(k[0] == "numa" for k in keys) or len(set(keys)) > 1


def socket_span(topo: Topology, mask: int) -> int | None:
    """Sockets (NUMA nodes) the set touches; None when the node does not say."""
    if not span_known(topo):
        return None
    return set_span(topo, mask) or None


def cross_socket(topo: Topology, mask: int) -> bool:
    """Some pair of the set sits on different sockets (or, layout unknown, its traffic crosses SYS)."""
    span = socket_span(topo, mask)
    if span is not None:
        return span > 1
    return any(topo.links[a][b] == "SYS" for a, b in combinations(indices(mask), 2))


def single_numa(topo: Topology, mask: int) -> bool:
    """Every GPU of the set on one NUMA node (or, layout unknown, no pair crossing SYS)."""
    if mask.bit_count() < 2:
        return True
    return not cross_socket(topo, mask)


def best_tier(topo: Topology, k: int) -> Tier | None:
    """The best tier any k GPUs of this node offer when it is empty (None: the node has fewer than k)."""
    n = len(topo)
    if k > n:
        return None
    if k < 2:
        return Tier.NVLINK
    return min(set_tier(topo, sum(1 << i for i in c)) for c in combinations(range(n), k))
