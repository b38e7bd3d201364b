"""The agent's own /metrics (its own registry, so several services can share a test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.gpus = Gauge("toposcale_agent_gpus", "GPUs seen on this node at the last discovery", registry=r)
        self.gpus_unhealthy = Gauge("toposcale_agent_gpus_unhealthy", "GPUs NVML reports lost", registry=r)
        self.discovery_errors = Counter("toposcale_agent_discovery_errors_total",
                                        "Discoveries that could not learn the topology at all", registry=r)
        self.unknown_facts = Gauge("toposcale_agent_unknown_facts",
                                   "Facts the last discovery could not learn (Topology.unknown)", registry=r)
        self.kubelet_errors = Counter("toposcale_agent_kubelet_errors_total",
                                      "Observations where the kubelet pod-resources API could not be asked, "
                                      "or named devices that are not the discovered GPUs", registry=r)
        self.allocation_known = Gauge("toposcale_agent_allocation_known",
                                      "1: last allocation came from the kubelet, 0: unknown", registry=r)
        self.publishes = Counter("toposcale_agent_publishes_total", "Node patches sent", ["reason"],
                                 registry=r)
        self.publish_errors = Counter("toposcale_agent_publish_errors_total",
                                      "Node reads or patches that failed", registry=r)
        self.overwritten = Counter("toposcale_agent_annotations_overwritten_total",
                                   "Invalid or hand-edited Node annotations replaced", registry=r)
        self.last_publish = Gauge("toposcale_agent_last_publish_timestamp_seconds",
                                  "Unix time of the last successful Node patch", registry=r)
