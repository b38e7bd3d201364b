"""The extender's Prometheus metrics (`/metrics`), one registry per service: what admission counts (requests,
latency), what the answers count (nodes judged, outcomes, unknown nodes, tiers, follow-ups) and what the
listener counts (connections cut)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .state import ClusterState


class ExtenderMetrics:
    def __init__(self, state: ClusterState | None) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "toposcale_extender_decision_seconds",
            "Time to answer one scheduler call, by verb",
            ["verb"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.requests = Counter(
            "toposcale_extender_requests",
            "Requests answered, by verb and HTTP code",
            ["verb", "code"],
            registry=r,
        )
        self.nodes = Counter("toposcale_extender_nodes_scored", "Nodes judged, by verb", ["verb"], registry=r)
        self.unknown = Counter(
            "toposcale_extender_unknown_topology_nodes",
            "Nodes answered without a usable topology or allocation, by reason",
            ["reason"],
            registry=r,
        )
        self.tier = Counter(
            "toposcale_extender_chosen_set_tier",
            "Tier of the GPU set predicted on the best-scored node of each prioritize call",
            ["tier"],
            registry=r,
        )
        self.outcome = Counter(
            "toposcale_extender_filter_outcomes", "Filter outcomes per node", ["outcome"], registry=r
        )
        self.followup = Counter(
            "toposcale_extender_prioritize_from_filter",
            "Prioritize calls answered from the filter call before them (same pod, nodes and cache)",
            registry=r,
        )
        self.cut = Counter(
            "toposcale_extender_connections_cut",
            "Connections closed by a bound: header-timeout, idle-timeout, header-size, evicted, "
            "max-connections",
            ["reason"],
            registry=r,
        )
        g_nodes = Gauge("toposcale_extender_cached_nodes", "Nodes in the watch cache", registry=r)
        g_nodes.set_function(lambda: len(state.base) if state is not None else 0)
        g_assumed = Gauge("toposcale_extender_assumed_pods", "Bound GPU pods the extender tracks", registry=r)
        g_assumed.set_function(lambda: len(state.pods) if state is not None else 0)
