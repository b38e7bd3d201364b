"""What the policies share: their context, and an HPA (or KEDA-made HPA) fed by a metric function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from toposcale.autoscale.cluster import ClusterView
from toposcale.autoscale.desired import Capacity
from toposcale.demo.hpa import HPAController, HPASpec, MetricError
from toposcale.serving.profile import Profile

HPA_SYNC_S = 15.0  # --horizontal-pod-autoscaler-sync-period


@dataclass(frozen=True, slots=True)
class PolicyContext:
    profile: Profile
    capacity: Capacity  # the profile's per-replica capacity at the SLO
    ttft_slo_s: float
    tpot_slo_s: float
    cold_start_s: float
    min_replicas: int
    max_replicas: int


Readings = dict[str, list[int] | Exception]


def milli(v: float) -> int:
    """A metric value as the HPA reads it (Quantity.MilliValue, rounded up)."""
    import math

    return math.ceil(v * 1000 - 1e-9)


class HPAPolicy:
    """The Kubernetes HPA controller (toposcale/demo/hpa.py, proven against the real one) on External
    metrics the `read` function serves; for KEDA, the HPA KEDA makes (AverageValue targets)."""

    interval_s = HPA_SYNC_S

    def __init__(self, name: str, spec: HPASpec, read: Callable[[float, ClusterView], Readings]) -> None:
        self.name = name
        self.hpa = HPAController(spec)
        self.read = read

    def decide(self, t: float, view: ClusterView) -> int:
        try:
            readings = self.read(t, view)
        except MetricError as exc:
            readings = {m.name: exc for m in self.hpa.spec.metrics}
        d = self.hpa.reconcile(
            t, view.spec_replicas, view.ready, readings, status_replicas=view.active, pods=view.pods
        )
        return d.desired
