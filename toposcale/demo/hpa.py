"""The HorizontalPodAutoscaler controller's rule for External metrics, as pure code.

Follows kubernetes pkg/controller/podautoscaler: `replica_calculator.go` (GetExternalMetricReplicas,
GetExternalPerPodMetricReplicas, getUsageRatioReplicaCount) and `horizontal.go` (reconcileAutoscaler,
computeReplicasForMetrics, stabilizeRecommendationWithBehaviors, convertDesiredReplicasWithBehaviorRate,
calculateScaleUpLimitWithScalingRules, calculateScaleDownLimitWithBehaviors, getReplicasChangePerPeriod).
Values are compared as milli-units (int64), as the controller does with `Quantity.MilliValue()`. Time is the
caller's clock in seconds (the demo's compressed one), so windows and policy periods scale with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from toposcale.core.quantity import milli_value as core_milli_value

TargetType = Literal["Value", "AverageValue"]
DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance


class MetricError(Exception):
    """The metric could not be read: the HPA keeps its replicas (condition ScalingActive=False)."""


# `resource.Quantity.MilliValue()` of a served value (toposcale.core.quantity), trimmed as
# Quantity.UnmarshalJSON trims it; not a quantity is MetricError (the HPA holds).
milli_value = partial(core_milli_value, trim=True, error=MetricError)


@dataclass(frozen=True, slots=True)
class ExternalMetric:
    """One `type: External` entry of an autoscaling/v2 HPA's `spec.metrics`."""

    name: str
    selector: str  # metric.selector as a labelSelector query string
    target_type: TargetType
    target: str  # a Quantity, e.g. "4" or "500m"

    @property
    def target_milli(self) -> int:
        return milli_value(self.target)


@dataclass(frozen=True, slots=True)
class Policy:
    type: Literal["Pods", "Percent"]
    value: int
    period_s: float


@dataclass(frozen=True, slots=True)
class Rules:
    """HPAScalingRules."""

    window_s: float
    policies: tuple[Policy, ...]
    select: Literal["Max", "Min", "Disabled"] = "Max"


# autoscaling/v2 defaults (SetDefaults_HorizontalPodAutoscalerBehavior).
DEFAULT_SCALE_UP = Rules(0, (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DEFAULT_SCALE_DOWN = Rules(300, (Policy("Percent", 100, 15),))


@dataclass(frozen=True, slots=True)
class HPASpec:
    min_replicas: int
    max_replicas: int
    metrics: tuple[ExternalMetric, ...]
    scale_up: Rules = DEFAULT_SCALE_UP
    scale_down: Rules = DEFAULT_SCALE_DOWN
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= minReplicas <= maxReplicas")
        if not self.metrics:
            raise ValueError("an HPA needs at least one metric")
        for m in self.metrics:
            if m.target_milli <= 0:
                raise ValueError(f"metric {m.name}: target must be positive")


def within(ratio: float, tolerance: float) -> bool:
    """replica_calculator.go Tolerances.isWithin (1.37): (1 - tolerance) <= ratio <= (1 + tolerance), bounds
    included (a ratio of exactly 1.1 keeps the replicas; `abs(1 - ratio) > 0.1` would not, in float64)."""
    return 1.0 - tolerance <= ratio <= 1.0 + tolerance


def replicas_for_metric(
    metric: ExternalMetric,
    values_milli: list[int],
    spec_replicas: int,
    ready_pods: int,
    tolerance: float,
    *,
    status_replicas: int | None = None,
    pods: int | None = None,
) -> int:
    """The replica proposal for one External metric, given the milli-values of the items the API returned.

    As horizontal.go computeStatusForExternalMetric calls replica_calculator.go: an AverageValue target gets
    the scale target's status (current) replica count (GetExternalPerPodMetricReplicas(statusReplicas, ...)),
    a Value target its spec replica count (GetExternalMetricReplicas(specReplicas, ...)).
    `status_replicas` defaults to `spec_replicas` (a settled Deployment), `pods` (pods the HPA's selector
    lists, ready or not) to `ready_pods`. getReadyPodsCount fails only when the selector lists no pod at all;
    pods present but none ready count 0 ready pods, which proposes 0 replicas, not an error.
    """
    if not values_milli:
        raise MetricError("no metrics returned from external metrics API")
    status = spec_replicas if status_replicas is None else status_replicas
    listed = ready_pods if pods is None else pods
    usage = sum(values_milli)
    target = metric.target_milli
    if metric.target_type == "AverageValue":
        # GetExternalPerPodMetricReplicas(statusReplicas, ...): 0 replicas gives an infinite (or NaN) ratio,
        # never within tolerance
        ratio = usage / (target * status) if status else math.inf
        if not within(ratio, tolerance):
            return math.ceil(usage / target)
        return status
    # GetExternalMetricReplicas(specReplicas, ...) -> getUsageRatioReplicaCount
    ratio = usage / target
    if spec_replicas == 0:
        return math.ceil(ratio)
    if within(ratio, tolerance):
        return spec_replicas
    if listed <= 0:  # getReadyPodsCount: len(podList) == 0
        raise MetricError("no pods returned by selector while calculating replica count")
    return math.ceil(ratio * ready_pods)


@dataclass(frozen=True, slots=True)
class Decision:
    current: int
    desired: int
    proposal: int | None  # max over valid metrics before stabilisation and rate limits; None if unable
    reason: str
    proposals: dict[str, int | str]  # per metric: its replica proposal or the error text

    @property
    def able_to_scale(self) -> bool:
        return self.proposal is not None or self.reason in ("TooFewReplicas", "TooManyReplicas")


@dataclass(slots=True)
class HPAController:
    """One HPA's controller state: recent recommendations and scale events, as horizontal.go keeps them."""

    spec: HPASpec
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)

    def reconcile(
        self,
        now: float,
        spec_replicas: int,
        ready_pods: int,
        readings: dict[str, list[int] | Exception],
        *,
        status_replicas: int | None = None,
        pods: int | None = None,
    ) -> Decision:
        """One sync: `readings` maps each metric name to its items' milli-values or the error reading it.
        `status_replicas`: the scale target's status.replicas; `pods`: pods its selector lists (ready or
        not); see `replicas_for_metric` for their defaults."""
        s = self.spec
        proposals: dict[str, int | str] = {}
        if spec_replicas > s.max_replicas:
            return self._apply(now, spec_replicas, s.max_replicas, None, "TooManyReplicas", proposals)
        if spec_replicas < s.min_replicas:
            return self._apply(now, spec_replicas, s.min_replicas, None, "TooFewReplicas", proposals)
        best, invalid = 0, 0
        for metric in s.metrics:
            reading = readings.get(metric.name, MetricError("metric not read"))
            try:
                if isinstance(reading, Exception):
                    raise MetricError(str(reading))
                proposal = replicas_for_metric(
                    metric,
                    reading,
                    spec_replicas,
                    ready_pods,
                    s.tolerance,
                    status_replicas=status_replicas,
                    pods=pods,
                )
            except MetricError as exc:
                invalid += 1
                proposals[metric.name] = f"FailedGetExternalMetric: {exc}"
                continue
            proposals[metric.name] = proposal
            best = max(best, proposal)
        # computeReplicasForMetrics: all invalid, or some invalid and the rest would scale down -> no change.
        if invalid >= len(s.metrics) or (invalid > 0 and best < spec_replicas):
            return Decision(spec_replicas, spec_replicas, None, "FailedGetExternalMetric", proposals)
        desired = self._stabilize(now, spec_replicas, best)
        desired, reason = self._rate_limit(now, spec_replicas, desired)
        return self._apply(now, spec_replicas, desired, best, reason, proposals)

    def _apply(
        self,
        now: float,
        current: int,
        desired: int,
        proposal: int | None,
        reason: str,
        proposals: dict[str, int | str],
    ) -> Decision:
        if desired > current:
            self.scale_up_events.append((now, desired - current))
        elif desired < current:
            self.scale_down_events.append((now, current - desired))
        longest = max(
            (p.period_s for p in (*self.spec.scale_up.policies, *self.spec.scale_down.policies)), default=0
        )
        self.scale_up_events = [e for e in self.scale_up_events if e[0] > now - longest]
        self.scale_down_events = [e for e in self.scale_down_events if e[0] > now - longest]
        return Decision(current, desired, proposal, reason, proposals)

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        """stabilizeRecommendationWithBehaviors."""
        up_cut = now - self.spec.scale_up.window_s
        down_cut = now - self.spec.scale_down.window_s
        up, down = desired, desired
        for ts, rec in self.recommendations:
            if ts > up_cut:
                up = min(up, rec)
            if ts > down_cut:
                down = max(down, rec)
        keep = [(ts, rec) for ts, rec in self.recommendations if not (ts < up_cut and ts < down_cut)]
        self.recommendations = [*keep, (now, desired)]
        return min(max(current, up), down)

    def _rate_limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """convertDesiredReplicasWithBehaviorRate."""
        s = self.spec
        if desired > current:
            limit = max(self._limit(now, current, s.scale_up, up=True), current)
            allowed = min(s.max_replicas, limit)
            if desired > allowed:
                return allowed, "ScaleUpLimit" if limit < s.max_replicas else "TooManyReplicas"
        elif desired < current:
            limit = min(self._limit(now, current, s.scale_down, up=False), current)
            allowed = max(s.min_replicas, limit)
            if desired < allowed:
                return allowed, "ScaleDownLimit" if limit > s.min_replicas else "TooFewReplicas"
        return desired, "DesiredWithinRange"

    def _limit(self, now: float, current: int, rules: Rules, *, up: bool) -> int:
        if rules.select == "Disabled":
            return current
        results: list[int] = []
        for p in rules.policies:
            added = sum(c for ts, c in self.scale_up_events if ts > now - p.period_s)
            deleted = sum(c for ts, c in self.scale_down_events if ts > now - p.period_s)
            start = current - added + deleted
            if up:
                results.append(
                    start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
                )
            else:
                results.append(start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100)))
        if not results:
            return current
        # Max picks the biggest change: the highest limit going up, the lowest going down.
        biggest_change = max if up else min
        smallest_change = min if up else max
        return (biggest_change if rules.select == "Max" else smallest_change)(results)
