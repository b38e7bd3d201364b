"""Autoscaling and placement dashboard: HPA (kube-state-metrics), adapter, scheduler extender, node agent.

kube-state-metrics names and labels are from kubernetes/kube-state-metrics internal/store/
horizontalpodautoscaler.go: every family carries `namespace` and `horizontalpodautoscaler`;
`..._spec_target_metric` adds `metric_name` and `metric_target_type` (value|utilization|average), the target
as a float (current releases convert the Quantity with MilliValue()/1000, so `750m` is 0.75; releases that
used AsInt64 skipped non-integer targets); `..._status_condition` adds `condition` and `status`
(true|false|unknown).
toposcale's own names are the ones its services register (adapter/metrics.py, extender/metrics.py,
extender/agent/metrics.py); the dashboard tests scrape the real services, so a rename breaks a test. The
labels Prometheus adds are the ones deploy/monitors sets up: `node` on the agents (from the pod's node), and
the adapter's own `namespace` label kept (honorLabels) on its served-value series.
"""

from __future__ import annotations

from typing import Any

from dashboards.grafana import (
    Row,
    bargauge_panel,
    common,
    dashboard,
    dashboard_links,
    models,
    query,
    query_variable,
    table_panel,
    timeseries_panel,
)

UID = "toposcale-autoscaling"
HPA = 'namespace=~"$namespace", horizontalpodautoscaler=~"$hpa"'
RI = "$__rate_interval"
HPA_LEGEND = "{{namespace}}/{{horizontalpodautoscaler}}"
KSM = "kube_horizontalpodautoscaler"
NS = 'namespace=~"$namespace"'
METRIC_ROUTE = 'route=~".*/namespaces/.*"'  # the adapter's metric GET, not discovery or health
SERVED = "toposcale_adapter_served_value"
SERVED_AT = "toposcale_adapter_served_timestamp_seconds"
ANSWERED = "toposcale_adapter_targets_answered"
EXPECTED = "toposcale_adapter_targets_expected"
AGENT = 'node=~"$node"'  # `node`: the agent PodMonitor's relabeling (deploy/monitors) adds it


def served(metric: str) -> str:
    """What the adapter last answered for `metric`, per namespace.

    Each adapter replica exports its own last answer (the HPA's requests reach either one through the
    Service), so take the series of the replica that answered most recently, not a sum over replicas.
    Prometheus must keep the metric's own `namespace` label (honorLabels on the adapter's monitor).
    """
    sel = f'metric="{metric}", {NS}'
    newest = (f"{SERVED_AT}{{{sel}}} == on (metric, namespace) group_left "
              f"max by (metric, namespace) ({SERVED_AT}{{{sel}}})")
    return f"max by (namespace) ({SERVED}{{{sel}}} and on (instance, metric, namespace) ({newest}))"


def build() -> dict[str, Any]:
    variables = [
        query_variable("namespace", "Namespace", f"{KSM}_status_current_replicas", "namespace"),
        query_variable("hpa", "HPA", f'{KSM}_status_current_replicas{{namespace=~"$namespace"}}',
                       "horizontalpodautoscaler"),
        query_variable("node", "Node (agents)", "toposcale_agent_gpus", "node"),
    ]
    hpa = Row("HorizontalPodAutoscaler", [
        timeseries_panel("Replicas: current, desired, min, max", [
            query(f"{KSM}_status_current_replicas{{{HPA}}}", legend=f"current {HPA_LEGEND}"),
            query(f"{KSM}_status_desired_replicas{{{HPA}}}", legend=f"desired {HPA_LEGEND}"),
            query(f"{KSM}_spec_min_replicas{{{HPA}}}", legend=f"min {HPA_LEGEND}"),
            query(f"{KSM}_spec_max_replicas{{{HPA}}}", legend=f"max {HPA_LEGEND}"),
        ], description="desired above current for long means new replicas are not starting: look at the "
                       "placement row (no node with 4 free GPUs) or at pending pods.",
                         width=16, min=0, decimals=0,
        ).override_by_regexp("^(min|max) .*", [
            models.DynamicConfigValue(id_val="custom.lineStyle",
                                      value=common.LineStyle(fill="dash", dash=[10, 10])),
        ]),
        table_panel("Can the HPA read its metrics?", [
            query(f"{KSM}_status_condition{{{HPA}, status=\"true\"}}", instant=True, table_format=True),
        ], description="ScalingActive=false usually means FailedGetExternalMetric: the adapter answered an "
                       "error (source down or stale), and the HPA keeps its replicas, by design, instead of "
                       "acting on a made-up value. AbleToScale / ScalingLimited explain the rest.",
                    width=8,
        ).with_transformation(models.DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True, "status": True},
            "renameByName": {"horizontalpodautoscaler": "HPA", "Value": "true (1) / not (0)"},
        })),
    ])
    signals = Row("What the HPA reads (the values the adapter served)", [
        timeseries_panel("vllm_requests_waiting vs the HPA's threshold", [
            query(served("vllm_requests_waiting"), legend="served {{namespace}}"),
            query(f'sum by (namespace) ({KSM}_spec_target_metric{{{HPA}, '
                  f'metric_name="vllm_requests_waiting", metric_target_type="average"}} '
                  f"* on (namespace, horizontalpodautoscaler) "
                  f"{KSM}_status_current_replicas{{{HPA}}})", legend="scale-out above {{namespace}}"),
        ], description="The value the adapter last answered for vllm_requests_waiting (requests queued in "
                       "vLLM over the pods the HPA selects), beside the AverageValue target times the "
                       "current replicas: above the line the HPA adds replicas.", width=8, min=0),
        timeseries_panel("vllm_kv_cache_usage vs the HPA's threshold", [
            query(served("vllm_kv_cache_usage"), legend="served {{namespace}}"),
            query(f'max by (namespace) ({KSM}_spec_target_metric{{{HPA}, '
                  f'metric_name="vllm_kv_cache_usage", metric_target_type="value"}})',
                  legend="scale-out above {{namespace}}"),
        ], description="The value the adapter last answered for vllm_kv_cache_usage (the mean over the "
                       "selected pods of each pod's KV-cache usage, vLLM's new name or the V0 one), beside "
                       "the HPA's Value target (kube-state-metrics: 750m is 0.75): above the line the HPA "
                       "adds replicas. Several HPAs in a namespace with different targets: the highest is "
                       "drawn.",
                         unit="percentunit", min=0, max=1, width=8),
        timeseries_panel("Age of the values served", [
            query(f"time() - max by (metric, namespace) ({SERVED_AT}{{{NS}}})",
                  legend="{{metric}} {{namespace}}"),
        ], description="Seconds since the newest sample behind each value the adapter answered. It grows "
                       "while the adapter answers errors (source down, stale, no pods): failed reads record "
                       "no value, the HPA holds its replicas, and the panels on the left show the last good "
                       "value. Normal: the HPA's 15 s poll plus the source's scrape interval.",
                         unit="s", min=0, width=8),
        timeseries_panel("vllm_desired_replicas vs the HPA's replicas", [
            query(served("vllm_desired_replicas"), legend="wanted {{namespace}}"),
            query(f"sum by (namespace) ({KSM}_status_current_replicas{{{HPA}}})",
                  legend="current {{namespace}}"),
        ], description="The replica count toposcale's own signal last answered (adapter/README.md, "
                       "vllm_desired_replicas: token demand over the capacity a replica sustains at the "
                       "SLO, the cold-start forecast, the waiting backlog, held for the scale-down window), "
                       "beside the current replicas of the selected HPAs (pick the one scaling on it). "
                       "Wanted above current for long: replicas are not starting (placement, quota). Its "
                       "reasons: GET /debug/desired on the adapter.",
                         min=0, decimals=0, width=12),
        timeseries_panel("Targets answered / expected", [
            query(f"min by (metric, namespace) ({ANSWERED}{{{NS}}} / {EXPECTED}{{{NS}}})",
                  legend="{{metric}} {{namespace}}"),
        ], description="The share of the targets a value needs (Running and Ready pods, the GPU exporters on "
                       "their nodes; in Prometheus mode the pods with an up series) whose metrics the "
                       "adapter's last computation could read. Below 1 a pod did not answer: sums are "
                       "scaled to the expected pods (on_missing: extrapolate) or the answer is a 503 "
                       "(on_missing: error); below the rule's min_answered_share (default 0.5) it is a 503 "
                       "naming the failed pods, and the HPA holds its replicas. With several adapter "
                       "replicas the lowest share is drawn.",
                         unit="percentunit", min=0, max=1, width=12),
    ])
    adapter = Row("Adapter (external.metrics.k8s.io)", [
        timeseries_panel("Metric requests /s by code", [
            query(f"sum by (code) (rate(toposcale_adapter_requests_total{{{METRIC_ROUTE}}}[{RI}]))",
                  legend="HTTP {{code}}"),
        ], description="GETs of external metric values (the HPA controller asks every 15 s per metric and "
                       "HPA). 503: the source was down, timed out or stale and the HPA held its replicas; "
                       "404/400: an HPA names an unknown metric or a bad selector.",
                         unit="reqps", min=0, width=6, stack=True),
        timeseries_panel("Metric request latency", [
            query(f"histogram_quantile({q}, sum by (le) "
                  f"(rate(toposcale_adapter_request_duration_seconds_bucket{{{METRIC_ROUTE}}}[{RI}])))",
                  legend=f"p{round(q * 100)}") for q in (0.5, 0.99)
        ], unit="s", min=0, width=6),
        timeseries_panel("Source errors /s", [
            query(f"sum by (source, kind) (rate(toposcale_adapter_source_errors_total[{RI}]))",
                  legend="{{source}} {{kind}}"),
        ], description="Failures talking to Prometheus or to scraped pods, by kind (timeout, target, stale, "
                       "garbage...). An unreachable pod fails a metric only below its min_answered_share (or "
                       "with on_missing: error); see Targets answered / expected.",
                         unit="ops", min=0, width=6),
        timeseries_panel("Cache outcomes", [
            query(f"sum by (result) (rate(toposcale_adapter_cache_requests_total[{RI}]))",
                  legend="{{result}}"),
        ], description="hit: answered from the short cache; coalesced: joined a query already in flight; "
                       "miss: asked the source. Many HPAs on one metric should be mostly hits.",
                         unit="ops", min=0, width=6, stack=True),
    ])
    placement = Row("Placement (scheduler extender and node agent)", [
        timeseries_panel("Decision latency by verb", [
            query(f"histogram_quantile({q}, sum by (le, verb) "
                  f"(rate(toposcale_extender_decision_seconds_bucket[{RI}])))",
                  legend=f"p{round(q * 100)} {{{{verb}}}}") for q in (0.5, 0.99)
        ], description="kube-scheduler waits for this on every GPU pod (httpTimeout, default 5 s).",
                         unit="s", min=0, width=8),
        bargauge_panel("Topology tier of the GPU sets chosen", [
            query("sum by (tier) (increase(toposcale_extender_chosen_set_tier_total[$__range]))",
                  legend="{{tier}}", instant=True),
        ], description="Tier of the GPU set predicted on the best-scored node of each prioritize call, "
                       "over the dashboard's time range, by its weakest link: nvlink > pcie-switch > "
                       "host-bridge > numa > cross-socket. A growing share of numa/cross-socket means the "
                       "fleet is fragmented.",
                       unit="short", min=0, decimals=0, width=8),
        timeseries_panel("Nodes judged /s", [
            query(f"sum by (verb) (rate(toposcale_extender_nodes_scored_total[{RI}]))", legend="{{verb}}"),
            query(f"sum by (outcome) (rate(toposcale_extender_filter_outcomes_total[{RI}]))",
                  legend="filter {{outcome}}"),
        ], unit="short", min=0, width=8),
        timeseries_panel("Nodes with unknown topology /s", [
            query(f"sum by (reason) (rate(toposcale_extender_unknown_topology_nodes_total[{RI}]))",
                  legend="{{reason}}"),
        ], description="Nodes the extender judged without a usable toposcale.io/gpu-topology or allocation "
                       "annotation: they pass with a neutral score. Check the node agent on them.",
                         unit="short", min=0, width=8),
        timeseries_panel("Node agents: GPUs seen", [
            query(f"sum by (node) (toposcale_agent_gpus{{{AGENT}}})", legend="{{node}}"),
        ], unit="short", min=0, decimals=0, width=8, stack=True),
        timeseries_panel("Node agents: errors /s", [
            query(f"sum by (node) (rate(toposcale_agent_publish_errors_total{{{AGENT}}}[{RI}]))",
                  legend="{{node}} Node patch failed"),
            query(f"sum by (node) (rate(toposcale_agent_kubelet_errors_total{{{AGENT}}}[{RI}]))",
                  legend="{{node}} kubelet unreachable"),
            query(f"sum by (node) (rate(toposcale_agent_discovery_errors_total{{{AGENT}}}[{RI}]))",
                  legend="{{node}} NVML discovery failed"),
        ], description="Per node. Patch failures leave the extender scoring that node on stale annotations; "
                       "kubelet errors leave its allocation unknown; discovery errors publish nothing.",
                         unit="ops", min=0, width=8),
        timeseries_panel("Replicas held back: the cluster is the limit", [
            query(f"sum by (namespace, reason) (toposcale_unplaceable_replicas{{{NS}}})",
                  legend="{{namespace}} {{reason}}"),
        ], description="Replicas vllm_desired_replicas wanted beyond ready + starting + placeable + the "
                       "rule's provisioning allowance (adapter --extender-url; the extender's /placeable): "
                       "no-gpu (no node has the GPUs free), no-topology-slot (GPUs free, not as a set of "
                       "the asked tier), required-scope (no free set meets the pods' "
                       "toposcale.io/required-scope). Above 0: add nodes (or let the node autoscaler), "
                       "not replicas. GET /debug/desired on the adapter names the nodes and the cap.",
                         min=0, decimals=0, width=24, stack=True),
    ])
    return dashboard(
        uid=UID,
        title="toposcale / Autoscaling and placement",
        description="HPA replicas and targets (kube-state-metrics), what the toposcale adapter serves, "
                    "scheduler-extender decisions and the topology tier of the GPUs it chose, node agents.",
        tags=["toposcale", "autoscaling", "scheduling"],
        variables=variables,
        rows=[hpa, signals, adapter, placement],
        links=dashboard_links(),
    )
