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


@dataclass(frozen=True, slots=True)
class PodValue:
    """One pod's own value (a custom.metrics.k8s.io MetricValue item)."""

    namespace: str
    pod: str
    value: float
    timestamp: float
    window_seconds: int | None = None


DEFAULT_MIN_ANSWERED_SHARE = 0.5
_NAMED_FAILURES = 5


@dataclass(frozen=True, slots=True)
class Coverage:
    """Of the targets a value needs (`expected`: Running and Ready pods, every listed target, the GPU
    exporters), which could not be read: `failed` describes each ("ml/vllm-1 (http://...): HTTP 500")."""

    expected: int
    failed: tuple[str, ...] = ()

    @property
    def answered(self) -> int:
        return self.expected - len(self.failed)


def _named(failed: Sequence[str]) -> str:
    shown = "; ".join(failed[:_NAMED_FAILURES])
    more = len(failed) - _NAMED_FAILURES
    return shown + (f"; and {more} more" if more > 0 else "")


def check_coverage(rule: Rule, coverage: Coverage, default_share: float = DEFAULT_MIN_ANSWERED_SHARE) -> None:
    """Raise SourceUnavailable (503, naming the failed targets) when the value must not be served: no target
    answered, `on_missing: error` and one failed, or fewer answered than the rule's `min_answered_share`
    (else `default_share`) of those expected. A pod that could not be read must never pull a value down
    silently: the HPA would scale down exactly when a pod is too loaded to answer."""
    n, answered, failed = coverage.expected, coverage.answered, coverage.failed
    if not failed or n <= 0:
        return
    if answered <= 0:
        raise SourceUnavailable(f"{rule.name}: all {n} targets failed: {_named(failed)}")
    if rule.on_missing == "error":
        raise SourceUnavailable(
            f"{rule.name}: {len(failed)} of {n} targets failed (on_missing: error): {_named(failed)}"
        )
    share = default_share if rule.min_answered_share is None else rule.min_answered_share
    if answered < share * n:
        raise SourceUnavailable(
            f"{rule.name}: only {answered} of {n} targets answered, below min_answered_share {share:g}: "
            f"{_named(failed)}"
        )


def value_series(rule: Rule) -> list[str]:
    """The series names a target must expose to count towards the rule: a histogram's buckets, else every
    generation of its series and its denominators."""
    if rule.aggregation == "histogram_quantile":
        return [rule.series[0] + "_bucket"]
    return list(dict.fromkeys([*rule.series, *rule.denominator]))


def exposes(rule: Rule, samples: Iterable[Sample]) -> bool:
    names = set(value_series(rule))
    return any(s.name in names for s in samples)


def negative(rule: Rule, samples: Iterable[Sample]) -> Sample | None:
    """A sample of the rule's series below 0, if any. What the rules read is a count (queue length, running
    requests), a usage or utilisation share, or a histogram's cumulative counts: none is below 0, so such a
    target is broken, never a reason to scale down (issue 28: a queue of -5)."""
    names = set(value_series(rule))
    return next((s for s in samples if s.name in names and s.value < 0), None)


def lacking(rule: Rule, who: str) -> str:
    """How a target that answered without any of the rule's series is named among the missing."""
    return f"{who}: exposes none of {', '.join(value_series(rule))}"


def series_absent(rule: Rule, answered: int) -> SourceUnavailable:
    """Targets answered, none with any of the rule's series: a series name no target exports (a typo, or an
    older vLLM) must not read as "the selector matched no pods" (200, `items: []`)."""
    names = value_series(rule)
    return SourceUnavailable(
        f"{rule.name}: none of the {answered} targets that answered exposes "
        f"{names[0] if len(names) == 1 else 'any of ' + ', '.join(names)}: the series is absent"
    )


def extrapolate(rule: Rule, value: float, coverage: Coverage) -> float:
    """The value over the expected targets from the value over those that answered: a sum is scaled by
    expected/answered (each missing pod counted as the mean of those that answered); an average, max, min,
    ratio (both sides would scale alike) or quantile (scaling every bucket moves no rank) is kept as it is."""
    if rule.aggregation != "sum" or not coverage.failed or coverage.answered <= 0:
        return value
    return value * coverage.expected / coverage.answered


def pick_generation(samples: Sequence[Sample], names: Sequence[str]) -> list[Sample]:
    """A pod's samples of the first series name it exposes (newer vLLM exposes both, older only the last)."""
    for name in names:
        chosen = [s for s in samples if s.name == name]
        if chosen:
            return chosen
    return []


def pod_value(rule: Rule, samples: Sequence[Sample]) -> float | None:
    """One pod's own value of a per-pod rule (custom.metrics.k8s.io): its series of the first generation it
    exposes combined with `per_pod` (`none`: the rule's aggregation); None when the pod has no such series."""
    own = [s.value for s in pick_generation(samples, rule.series)]
    if not own:
        return None
    return _combine(own, rule.aggregation if rule.per_pod == "none" else rule.per_pod)


def combine(values: Sequence[float], how: str) -> float:
    """sum/avg/max/min of `values` (not empty)."""
    return _combine(values, how)


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
        try:
            return histogram_quantile(rule.quantile, buckets)
        except SourceUnavailable as exc:  # pure, rule-less: the metric's name goes first, as in every 503
            raise SourceUnavailable(f"{rule.name}: {exc}") from None
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
