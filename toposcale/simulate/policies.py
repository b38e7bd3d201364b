"""Placement policies: each scores a node for a pod of k GPUs from the node's type and free-GPU mask.

The highest total wins; ties go uniformly at random, as kube-scheduler's selectHost does. Every policy filters
the same way (NodeResourcesFit: enough free GPUs); only scoring differs.

- `spread`: NodeResourcesFit LeastAllocated on the GPU count (kube-scheduler's default strategy).
- `binpack`: NodeResourcesFit MostAllocated.
- `random`: no preference among nodes that fit.
- `toposcale`: the shipped scheduler profile (deploy/extender/scheduler-config.yaml): NodeResourcesFit
  MostAllocated on the GPU count plus the extender's own 0..10 score (imported from the extender, see
  `extender_api`) times the extender weight (5), scaled as the scheduler does.
- With `--allocator dra-first-fit` the extender scores the set kube-scheduler's DRA allocator would give
  (`dra.score_prediction` on `dra.synth.first_fit_mask`) instead of the device plugin's candidates.
- `toposcale-spread` (not run by default): the same extender on top of kube-scheduler's default
  LeastAllocated, for a cluster that keeps the default NodeResourcesFit strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from toposcale.extender.topology.model import Topology

from .noderesources import extender_points, least_allocated, most_allocated

# (topology, free mask, free count, k) -> score; higher is better, negative: filtered out
ScoreFn = Callable[[Topology, int, int, int], int]

POLICIES = ("toposcale", "spread", "binpack", "random")  # the default comparison
EXTRA_POLICIES = ("toposcale-spread",)
DEFAULT_EXTENDER_WEIGHT = 5  # deploy/ configures the extender with weight 5 (up to 500 points beside 0..100)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    score: ScoreFn


def _spread(topo: Topology, free: int, nfree: int, k: int) -> int:
    n = len(topo)
    return least_allocated(n - nfree + k, n)


def _binpack(topo: Topology, free: int, nfree: int, k: int) -> int:
    n = len(topo)
    return most_allocated(n - nfree + k, n)


def _random(topo: Topology, free: int, nfree: int, k: int) -> int:
    return 0


def make_policy(
    name: str, *, extender_weight: int = DEFAULT_EXTENDER_WEIGHT, allocator: str = "device-plugin"
) -> Policy:
    if name == "spread":
        return Policy(name, _spread)
    if name == "binpack":
        return Policy(name, _binpack)
    if name == "random":
        return Policy(name, _random)
    if name in ("toposcale", "toposcale-spread"):
        from .extender_api import dra_node_score, node_score  # raises ExtenderUnavailable (module it needs)

        if allocator == "dra-first-fit":
            node_score = dra_node_score  # the extender scores the set DRA first-fit would give

        base = _binpack if name == "toposcale" else _spread  # the shipped profile is MostAllocated

        def _toposcale(topo: Topology, free: int, nfree: int, k: int) -> int:
            s = node_score(topo, free, k)
            if s is None:
                return -1
            return extender_points(s, extender_weight) + base(topo, free, nfree, k)

        return Policy(name, _toposcale)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + EXTRA_POLICIES)}")
