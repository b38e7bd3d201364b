"""The adapter's own /metrics (its own CollectorRegistry, so several services can share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AdapterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
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

    def source_error(self, source: str, kind: str) -> None:
        self.source_errors.labels(source, kind).inc()
