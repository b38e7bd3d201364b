"""kube-scheduler's NodeResourcesFit scores, applied to one resource: the GPU count.

Formulas from kubernetes pkg/scheduler/framework/plugins/noderesources (least_allocated.go,
most_allocated.go), integer arithmetic as in Go; `requested` already includes the pod being scheduled. With a
single resource of weight 1 the weighted average is the resource's own score. Ties between the best nodes are
broken uniformly at random (selectHost's reservoir sampling); the replay does the same.
"""

from __future__ import annotations

MAX_NODE_SCORE = 100  # framework.MaxNodeScore
MAX_EXTENDER_PRIORITY = 10  # extenderv1.MaxExtenderPriority


def least_allocated(requested: int, capacity: int) -> int:
    """LeastAllocated: favours the emptiest node (the default scoring strategy: "spread")."""
    if capacity == 0 or requested > capacity:
        return 0
    return ((capacity - requested) * MAX_NODE_SCORE) // capacity


def most_allocated(requested: int, capacity: int) -> int:
    """MostAllocated: favours the fullest node ("binpack")."""
    if capacity == 0:
        return 0
    requested = min(requested, capacity)
    return (requested * MAX_NODE_SCORE) // capacity


def extender_points(score: int, weight: int) -> int:
    """What one extender's 0..10 prioritize score adds to a node's total (scheduler's prioritizeNodes)."""
    return score * weight * (MAX_NODE_SCORE // MAX_EXTENDER_PRIORITY)
