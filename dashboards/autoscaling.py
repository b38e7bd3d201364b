"""Autoscaling and placement dashboard: HPA (kube-state-metrics), adapter, scheduler extender, node agent.

kube-state-metrics names and labels are from kubernetes/kube-state-metrics internal/store/
horizontalpodautoscaler.go: every family carries `namespace` and `horizontalpodautoscaler`;
`..._spec_target_metric` adds `metric_name` and `metric_target_type` (value|utilization|average) and is
emitted only for integer targets; `..._status_condition` adds `condition` and `status` (true|false|unknown).
toposcale's own names are the ones its services register (adapter/metrics.py, extender/metrics.py,
extender/agent/metrics.py); the dashboard tests scrape the real services, so a rename breaks a test.
"""

from __future__ import annotations

from typing import Any

from dashboards.grafana import Panel, Row, Target, Variable, dashboard, dashboard_links

UID = "toposcale-autoscaling"
HPA = 'namespace=~"$namespace", horizontalpodautoscaler=~"$hpa"'
RI = "$__rate_interval"
HPA_LEGEND = "{{namespace}}/{{horizontalpodautoscaler}}"
KSM = "kube_horizontalpodautoscaler"


def build() -> dict[str, Any]:
    variables = [
        Variable("namespace", "Namespace", f"{KSM}_status_current_replicas", "namespace"),
        Variable("hpa", "HPA", f'{KSM}_status_current_replicas{{namespace=~"$namespace"}}',
                 "horizontalpodautoscaler"),
    ]
    hpa = Row("HorizontalPodAutoscaler", [
        Panel("timeseries", "Replicas: current, desired, min, max", [
            Target(f"{KSM}_status_current_replicas{{{HPA}}}", legend=f"current {HPA_LEGEND}"),
            Target(f"{KSM}_status_desired_replicas{{{HPA}}}", legend=f"desired {HPA_LEGEND}"),
            Target(f"{KSM}_spec_min_replicas{{{HPA}}}", legend=f"min {HPA_LEGEND}"),
            Target(f"{KSM}_spec_max_replicas{{{HPA}}}", legend=f"max {HPA_LEGEND}"),
        ], description="desired above current for long means new replicas are not starting: look at the "
                       "placement row (no node with 4 free GPUs) or at pending pods.",
              width=16, min=0, decimals=0,
              overrides=[
                  {"matcher": {"id": "byRegexp", "options": "^(min|max) .*"},
                   "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]},
              ]),
        Panel("table", "Can the HPA read its metrics?", [
            Target(f"{KSM}_status_condition{{{HPA}, status=\"true\"}}",
                   instant=True, table=True),
        ], description="ScalingActive=false usually means FailedGetExternalMetric: the adapter answered an "
                       "error (source down or stale), and the HPA keeps its replicas, by design, instead of "
                       "acting on a made-up value. AbleToScale / ScalingLimited explain the rest.",
              width=8,
              transformations=[{"id": "organize", "options": {
                  "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True,
                                    "status": True},
                  "renameByName": {"horizontalpodautoscaler": "HPA", "Value": "true (1) / not (0)"},
              }}]),
        Panel("timeseries", "HPA targets", [
            Target(f"{KSM}_spec_target_metric{{{HPA}}}",
                   legend="{{horizontalpodautoscaler}} {{metric_name}} ({{metric_target_type}})"),
        ], description="What each HPA aims for (kube-state-metrics emits integer targets only: a 0.8 "
                       "KV-cache target does not show here).", width=12, min=0),
        Panel("timeseries", "Queue per replica vs target", [
            Target('sum by (namespace) (vllm:num_requests_waiting{namespace=~"$namespace"}) / on (namespace) '
                   f"group_left sum by (namespace) ({KSM}_status_current_replicas{{{HPA}}})",
                   legend="waiting per replica {{namespace}}"),
        ], description="The AverageValue the HPA computes from vllm_requests_waiting: sum over the pods, "
                       "divided by the current replicas.", width=12, min=0),
    ])
    adapter = Row("Adapter (external.metrics.k8s.io)", [
        Panel("timeseries", "Values served", [
            Target("toposcale_adapter_metric_value", legend="{{metric}} {{namespace}}"),
        ], description="The last value the adapter answered per external metric and namespace: exactly what "
                       "the HPA read.", width=12),
        Panel("timeseries", "Requests /s by metric and code", [
            Target(f"sum by (metric, code) (rate(toposcale_adapter_requests_total[{RI}]))",
                   legend="{{metric}} {{code}}"),
        ], unit="reqps", min=0, width=12, stack=True),
        Panel("timeseries", "Request latency", [
            Target(f"histogram_quantile({q}, sum by (le) "
                   f"(rate(toposcale_adapter_request_duration_seconds_bucket[{RI}])))",
                   legend=f"p{round(q * 100)}") for q in (0.5, 0.99)
        ], unit="s", min=0, width=8),
        Panel("timeseries", "Errors /s", [
            Target(f'sum by (code) (rate(toposcale_adapter_requests_total{{code=~"4..|5.."}}[{RI}]))',
                   legend="HTTP {{code}}"),
            Target(f"sum by (source, reason) (rate(toposcale_adapter_source_errors_total[{RI}]))",
                   legend="source {{source}} {{reason}}"),
        ], description="5xx: the source (Prometheus or a scraped pod) was down, timed out or stale; the HPA "
                       "then holds its replicas. 4xx: a bad selector or an unknown metric in an HPA spec.",
              unit="reqps", min=0, width=8),
        Panel("timeseries", "Cache hit ratio", [
            Target(f"sum(rate(toposcale_adapter_cache_hits_total[{RI}])) / "
                   f"(sum(rate(toposcale_adapter_cache_hits_total[{RI}])) "
                   f"+ sum(rate(toposcale_adapter_cache_misses_total[{RI}])))", legend="hit ratio"),
        ], unit="percentunit", min=0, max=1, width=8),
    ])
    placement = Row("Placement (scheduler extender and node agent)", [
        Panel("timeseries", "Decision latency by verb", [
            Target(f"histogram_quantile({q}, sum by (le, verb) "
                   f"(rate(toposcale_extender_decision_duration_seconds_bucket[{RI}])))",
                   legend=f"p{round(q * 100)} {{{{verb}}}}") for q in (0.5, 0.99)
        ], description="kube-scheduler waits for this on every GPU pod (httpTimeout, default 5 s).",
              unit="s", min=0, width=8),
        Panel("timeseries", "Topology tier of the GPU sets chosen", [
            Target(f"sum by (tier) (increase(toposcale_extender_chosen_tier_total[{RI}]))",
                   legend="{{tier}}"),
        ], description="Best tier first: nvlink > pcie-switch > host-bridge > numa > system. A rising share "
                       "of numa/system placements means the fleet is fragmented.",
              unit="short", min=0, width=8, stack=True),
        Panel("timeseries", "Nodes scored /s", [
            Target(f"sum by (verb) (rate(toposcale_extender_nodes_scored_total[{RI}]))", legend="{{verb}}"),
        ], unit="short", min=0, width=8),
        Panel("stat", "Nodes with unknown topology", [
            Target("max(toposcale_extender_unknown_topology_nodes)"),
        ], description="GPU nodes without a valid toposcale.io/gpu-topology annotation: the extender passes "
                       "them with a neutral score. Check the node agent DaemonSet on them.",
              width=8, height=6, thresholds=((None, "green"), (1, "orange"))),
        Panel("timeseries", "Agent publish errors /s", [
            Target(f"sum by (node) (rate(toposcale_agent_publish_errors_total[{RI}]))", legend="{{node}}"),
        ], description="Failed Node annotation patches: the extender keeps scoring that node on stale data.",
              unit="ops", min=0, width=8, height=6),
        Panel("stat", "GPUs seen by the agents", [
            Target("sum(toposcale_agent_gpus)"),
        ], width=8, height=6),
    ])
    return dashboard(
        uid=UID,
        title="toposcale / Autoscaling and placement",
        description="HPA replicas and targets (kube-state-metrics), what the toposcale adapter serves, "
                    "scheduler-extender decisions and the topology tier of the GPUs it chose, node agents.",
        tags=["toposcale", "autoscaling", "scheduling"],
        variables=variables,
        rows=[hpa, adapter, placement],
        links=dashboard_links(),
    )
