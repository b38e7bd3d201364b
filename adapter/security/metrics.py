"""Security metrics, registered on the adapter's own CollectorRegistry (prefix toposcale_adapter_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SecurityMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.authentication = Counter(
            "toposcale_adapter_authentication_attempts_total",
            "Requests by authentication outcome (success, failure, none) and method.",
            ["result", "method"], registry=registry)
        self.authorization = Counter(
            "toposcale_adapter_authorization_decisions_total",
            "Authorization decisions (allow, deny, error) by source (group, path, cache, webhook).",
            ["decision", "source"], registry=registry)
        self.rejected = Counter(
            "toposcale_adapter_connections_rejected_total",
            "Requests or connections cut by a limit "
            "(inflight, header-timeout, idle-timeout, header-size, evicted, max-connections).",
            ["reason"], registry=registry)
        self.tls_reloads = Counter(
            "toposcale_adapter_tls_reloads_total",
            "Serving certificate and client-CA reloads by what changed and whether it was applied.",
            ["what", "result"], registry=registry)
        self.cert_expiry = Gauge(
            "toposcale_adapter_serving_certificate_expiration_timestamp_seconds",
            "notAfter of the serving certificate in use, as a Unix timestamp.", registry=registry)
