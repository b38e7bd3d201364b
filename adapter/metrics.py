"""The adapter's own /metrics (its own CollectorRegistry, so several services can share a test process)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DEFAULT_SERVED_NAMESPACES = 100


class ServedValues(Collector):
    """The last value answered per (metric, namespace): what the HPA read, as a gauge Prometheus can keep;
    and, per (metric, namespace), how many of the targets the last computation expected could be read.

    Metric names come from the rules (bounded); namespaces come from callers, so only the `max_namespaces`
    most recently served namespaces keep their series, and a namespace pushed out takes all its series with
    it. Only successful answers with at least one item are recorded as values (an error or an empty list
    gives the HPA no value, so there is none to show); answered/expected targets are recorded by every
    computation that found targets, a 503 for too few answering included (that is when it matters).
    """

    def __init__(self, max_namespaces: int = DEFAULT_SERVED_NAMESPACES,
                 evictions: Counter | None = None) -> None:
        if max_namespaces < 1:
            raise ValueError("max_namespaces must be at least 1")
        self.max_namespaces = max_namespaces
        self._evictions = evictions
        self._lock = threading.Lock()
        # namespace -> metric -> (value, timestamp); order = least recently served first
        self._by_namespace: OrderedDict[str, dict[str, tuple[float, float]]] = OrderedDict()
        # namespace -> metric -> (answered, expected); same namespaces, same order
        self._coverage: dict[str, dict[str, tuple[int, int]]] = {}

    def _entries(self, namespace: str) -> dict[str, tuple[float, float]]:
        entries = self._by_namespace.get(namespace)
        if entries is None:
            if len(self._by_namespace) >= self.max_namespaces:
                gone, _ = self._by_namespace.popitem(last=False)
                self._coverage.pop(gone, None)
                if self._evictions is not None:
                    self._evictions.inc()
            entries = self._by_namespace[namespace] = {}
        else:
            self._by_namespace.move_to_end(namespace)
        return entries

    def record(self, metric: str, namespace: str, value: float, timestamp: float) -> None:
        with self._lock:
            self._entries(namespace)[metric] = (value, timestamp)

    def record_coverage(self, metric: str, namespace: str, answered: int, expected: int) -> None:
        """Targets of `metric` in `namespace` read (answered) out of those the value needs (expected)."""
        with self._lock:
            self._entries(namespace)
            self._coverage.setdefault(namespace, {})[metric] = (answered, expected)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "toposcale_adapter_served_value",
                "Last value answered for an external metric in a namespace (the sum of the items, as the "
                "HPA adds them up); failed and empty answers are not recorded",
                labels=["metric", "namespace"],
            ),
            GaugeMetricFamily(
                "toposcale_adapter_served_timestamp_seconds",
                "Unix time of the newest sample behind the last value answered (the items' timestamp)",
                labels=["metric", "namespace"],
            ),
            GaugeMetricFamily(
                "toposcale_adapter_targets_answered",
                "Targets (pods, GPU exporters) whose metrics the last computation of a metric in a namespace "
                "could read",
                labels=["metric", "namespace"],
            ),
            GaugeMetricFamily(
                "toposcale_adapter_targets_expected",
                "Targets the last computation of a metric in a namespace needed: Running and Ready pods (the "
                "selected ones, or the GPU exporters on their nodes), every listed target in "
                "--scrape-targets mode, pods with an up series in Prometheus mode",
                labels=["metric", "namespace"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        value, stamp, answered, expected = self._families()
        with self._lock:
            rows = [(ns, m, v, t) for ns, entries in self._by_namespace.items()
                    for m, (v, t) in entries.items()]
            cover = [(ns, m, a, e) for ns, entries in self._coverage.items() for m, (a, e) in entries.items()]
        for ns, m, v, t in rows:
            value.add_metric([m, ns], v)
            stamp.add_metric([m, ns], t)
        for ns, m, a, e in cover:
            answered.add_metric([m, ns], a)
            expected.add_metric([m, ns], e)
        yield value
        yield stamp
        yield answered
        yield expected


class AdapterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *,
                 served_namespaces: int = DEFAULT_SERVED_NAMESPACES) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "toposcale_adapter_requests", "HTTP requests served", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "toposcale_adapter_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.source_errors = Counter(
            "toposcale_adapter_source_errors",
            "Failures talking to metric sources (kind: target, stale, garbage, timeout, ...)",
            ["source", "kind"],
            registry=self.registry,
        )
        self.cache = Counter(
            "toposcale_adapter_cache_requests",
            "Metric value lookups by cache outcome (hit, miss, coalesced)",
            ["result"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "toposcale_adapter_inflight_requests", "Metric requests being answered", registry=self.registry
        )
        served_evictions = Counter(
            "toposcale_adapter_served_namespaces_evicted",
            "Namespaces whose served-value series were dropped to keep at most --served-value-namespaces",
            registry=self.registry,
        )
        self.served = ServedValues(served_namespaces, served_evictions)
        self.registry.register(self.served)

    def source_error(self, source: str, kind: str) -> None:
        self.source_errors.labels(source, kind).inc()
