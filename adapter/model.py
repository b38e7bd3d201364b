"""What a metric is made of and how its value is computed from samples: pure logic, no I/O.

Samples reach here per pod: a workload rule gets the pod's own series (one per vLLM engine), a GPU rule
gets
the
GPU series whose owner labels name the pod. The value is the rule's aggregation over pods, with `per_pod`
first
combining a pod's own series, mirroring the PromQL the Prometheus source generates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import SourceUnavailable
from .rules import Rule


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(slots=True)
class PodSamples:
    namespace: str
    pod: str
    samples: list[Sample] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One ExternalMetricValue: the aggregate over the selected pods."""

    value: float
    timestamp: float
    window_seconds: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def pick_generation(samples: Sequence[Sample], names: Sequence[str]) -> list[Sample]:
    """A pod's samples of the first series name it exposes (newer vLLM exposes both, older only the last)."""
    for name in names:
        chosen = [s for s in samples if s.name == name]
        if chosen:
            return chosen
    return []


def _combine(values: Sequence[float], how: str) -> float:
    if how == "sum":
        return math.fsum(values)
    if how == "avg":
        return math.fsum(values) / len(values)
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    raise ValueError(f"unknown aggregation {how!r}")


def aggregate(rule: Rule, pods: Iterable[PodSamples]) -> float | None:
    """The rule's value over `pods`, or None when no pod has the series (an empty answer, not a zero).

    Histogram rules expect bucket samples that already hold increases over the window (see `bucket_increase`).
    """
    pods = list(pods)
    if rule.aggregation == "histogram_quantile":
        assert rule.quantile is not None
        buckets: dict[float, float] = {}
        name = rule.series[0] + "_bucket"
        seen = False
        for p in pods:
            for s in p.samples:
                if s.name == name:
                    seen = True
                    le = parse_le(s.labels.get("le"))
                    buckets[le] = buckets.get(le, 0.0) + s.value
        if not seen:
            return None
        return histogram_quantile(rule.quantile, buckets)
    if rule.aggregation == "ratio":
        num = [s.value for p in pods for s in pick_generation(p.samples, rule.series)]
        den = [s.value for p in pods for s in p.samples if s.name in rule.denominator]
        if not num or not den:
            return None
        total = math.fsum(den)
        if total == 0:
            raise SourceUnavailable(f"{rule.name}: denominator {'+'.join(rule.denominator)} is 0")
        return math.fsum(num) / total
    if rule.per_pod == "none":
        values = [s.value for p in pods for s in pick_generation(p.samples, rule.series)]
    else:
        values = []
        for p in pods:
            own = [s.value for s in pick_generation(p.samples, rule.series)]
            if own:
                values.append(_combine(own, rule.per_pod))
    if not values:
        return None
    return _combine(values, rule.aggregation)


def parse_le(text: str | None) -> float:
    if text is None:
        raise SourceUnavailable("histogram bucket without an 'le' label")
    try:
        return float(text)
    except ValueError as exc:
        raise SourceUnavailable(f"histogram bucket with le={text!r}") from exc


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts keyed by upper bound (promql/quantile.go).

    No observations (or no +Inf bucket) has no quantile: that is an error, not 0.
    """
    if math.inf not in buckets:
        raise SourceUnavailable("histogram has no +Inf bucket")
    if len(buckets) < 2:
        raise SourceUnavailable("histogram needs at least two buckets for a quantile")
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # counts from separate pods/scrapes can be slightly non-monotonic
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0:
        raise SourceUnavailable("no observations in the window: the quantile is undefined")
    rank = q * total
    i = next(k for k, c in enumerate(counts) if c >= rank)
    if i == len(bounds) - 1:
        return bounds[-2]
    lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    upper = bounds[i]
    in_bucket = counts[i] - below
    if in_bucket == 0:
        return upper
    return lower + (upper - lower) * ((rank - below) / in_bucket)


def bucket_increase(now: Mapping[float, float], then: Mapping[float, float]) -> dict[float, float]:
    """Per-bucket increase between two scrapes of one histogram; a counter reset counts from zero."""
    if any(now.get(le, 0.0) < c for le, c in then.items()):
        return dict(now)
    return {le: c - then.get(le, 0.0) for le, c in now.items()}
