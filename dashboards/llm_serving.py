"""LLM serving dashboard: vLLM `/metrics` per model and pod.

Both vLLM metric generations are handled where names changed: V1 (v0.10+) `vllm:kv_cache_usage_perc` and
`vllm:inter_token_latency_seconds`, V0 (0.6.x) `vllm:gpu_cache_usage_perc` and
`vllm:time_per_output_token_seconds`. The fallback is an `or` between already-aggregated series, so a server
exposing both names (v0.10 still exports the deprecated one) is counted once and histograms never mix buckets.
`namespace` and `pod` are the target labels Prometheus adds (PodMonitor, kubernetes_sd); `model_name` is
vLLM's. With data parallelism one pod exposes one series per `engine`: gauges are summed (queues) or averaged
(KV cache) per pod.
"""

from __future__ import annotations

from typing import Any

from dashboards.grafana import (
    Row,
    dashboard,
    dashboard_links,
    query,
    query_variable,
    stat_panel,
    timeseries_panel,
)

UID = "toposcale-llm-serving"
SEL = 'namespace=~"$namespace", model_name=~"$model_name", pod=~"$pod"'
RI = "$__rate_interval"


def kv_cache(by: str) -> str:
    return (f"avg by ({by}) (vllm:kv_cache_usage_perc{{{SEL}}}) "
            f"or avg by ({by}) (vllm:gpu_cache_usage_perc{{{SEL}}})")


def quantile(q: float, histogram: str, by: str = "model_name") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{SEL}}}[{RI}])))"


def quantile_either(q: float, new: str, old: str, by: str = "model_name") -> str:
    return f"{quantile(q, new, by)} or {quantile(q, old, by)}"


def pct(q: float) -> str:
    return f"p{round(q * 100)} {{{{model_name}}}}"


def build() -> dict[str, Any]:
    variables = [
        query_variable("namespace", "Namespace", "vllm:num_requests_running", "namespace"),
        query_variable("model_name", "Model", 'vllm:num_requests_running{namespace=~"$namespace"}',
                       "model_name"),
        query_variable("pod", "Pod",
                       'vllm:num_requests_running{namespace=~"$namespace", model_name=~"$model_name"}',
                       "pod"),
    ]
    overview = Row("Now", [
        stat_panel("Serving pods", [
            query(f"count(count by (namespace, pod) (vllm:num_requests_running{{{SEL}}}))"),
        ], width=4, height=4),
        stat_panel("Requests running", [query(f"sum(vllm:num_requests_running{{{SEL}}})")],
                   width=4, height=4),
        stat_panel("Requests waiting", [query(f"sum(vllm:num_requests_waiting{{{SEL}}})")],
                   description="Queued in vLLM's scheduler, not yet in a batch: the autoscaler's main "
                               "signal.",
                   width=4, height=4, steps=((None, "green"), (10, "orange"), (50, "red"))),
        stat_panel("KV cache used (mean)", [query(f"avg({kv_cache('namespace, pod')})")],
                   unit="percentunit", min=0, max=1, decimals=1, width=4, height=4,
                   steps=((None, "green"), (0.8, "orange"), (0.95, "red"))),
        stat_panel("Requests finished /s", [
            query(f"sum(rate(vllm:request_success_total{{{SEL}}}[{RI}]))"),
        ], unit="reqps", width=4, height=4),
        stat_panel("Time to first token p90", [
            query(quantile(0.9, "vllm:time_to_first_token_seconds", "")),
        ], unit="s", width=4, height=4, steps=((None, "green"), (1, "orange"), (3, "red"))),
    ])
    load = Row("Queue and KV cache per pod", [
        timeseries_panel("Requests waiting", [
            query(f"sum by (pod) (vllm:num_requests_waiting{{{SEL}}})", legend="{{pod}}"),
        ], description="vllm:num_requests_waiting summed over a pod's engines.", min=0, stack=True),
        timeseries_panel("Requests running", [
            query(f"sum by (pod) (vllm:num_requests_running{{{SEL}}})", legend="{{pod}}"),
        ], description="vllm:num_requests_running: requests in the running batch.", min=0, stack=True),
        timeseries_panel("KV cache usage", [query(kv_cache("pod"), legend="{{pod}}")],
                         description="vllm:kv_cache_usage_perc (V1) or vllm:gpu_cache_usage_perc (V0), 1 = "
                                     "full. Near 1 vLLM preempts requests (recomputes them later): scale out "
                                     "before that.",
                         unit="percentunit", min=0, max=1, steps=((None, "green"), (0.9, "red"))),
        timeseries_panel("Preemptions /s", [
            query(f"sum by (pod) (rate(vllm:num_preemptions_total{{{SEL}}}[{RI}]))", legend="{{pod}}"),
        ], description="Requests evicted from the KV cache to make room; each one is recomputed later. "
                       "Non-zero means the pod is over its KV capacity.", unit="ops", min=0),
    ])
    latency = Row("Latency (from vLLM's histograms)", [
        timeseries_panel("Time to first token", [
            query(quantile(q, "vllm:time_to_first_token_seconds"), legend=pct(q))
            for q in (0.5, 0.9, 0.99)
        ], description="histogram_quantile over vllm:time_to_first_token_seconds: queueing + prefill.",
                         unit="s", min=0),
        timeseries_panel("End-to-end request latency", [
            query(quantile(q, "vllm:e2e_request_latency_seconds"), legend=pct(q))
            for q in (0.5, 0.9, 0.99)
        ], description="histogram_quantile over vllm:e2e_request_latency_seconds.", unit="s", min=0),
        timeseries_panel("Inter-token latency", [
            query(quantile_either(q, "vllm:inter_token_latency_seconds",
                                  "vllm:time_per_output_token_seconds"), legend=pct(q))
            for q in (0.5, 0.9, 0.99)
        ], description="vllm:inter_token_latency_seconds (V1) or vllm:time_per_output_token_seconds (V0): "
                       "the decode speed a streaming user feels.", unit="s", min=0),
        timeseries_panel("Mean time to first token per pod", [
            query(f"sum by (pod) (rate(vllm:time_to_first_token_seconds_sum{{{SEL}}}[{RI}])) / "
                  f"sum by (pod) (rate(vllm:time_to_first_token_seconds_count{{{SEL}}}[{RI}]))",
                  legend="{{pod}}"),
        ], description="A pod far above the others is often one whose GPUs landed on a poor topology.",
                         unit="s", min=0),
    ])
    throughput = Row("Throughput", [
        timeseries_panel("Tokens /s", [
            query(f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{SEL}}}[{RI}]))",
                  legend="prompt {{model_name}}"),
            query(f"sum by (model_name) (rate(vllm:generation_tokens_total{{{SEL}}}[{RI}]))",
                  legend="generation {{model_name}}"),
        ], description="vllm:prompt_tokens_total (prefill) and vllm:generation_tokens_total (decode).",
                         unit="short", min=0),
        timeseries_panel("Generation tokens /s per pod", [
            query(f"sum by (pod) (rate(vllm:generation_tokens_total{{{SEL}}}[{RI}]))", legend="{{pod}}"),
        ], unit="short", min=0, stack=True),
        timeseries_panel("Requests finished /s", [
            query(f"sum by (finished_reason) (rate(vllm:request_success_total{{{SEL}}}[{RI}]))",
                  legend="{{finished_reason}}"),
        ], description="vllm:request_success_total by finished_reason (stop, length, abort).",
                         unit="reqps", min=0, stack=True),
    ])
    return dashboard(
        uid=UID,
        title="toposcale / LLM serving (vLLM)",
        description="vLLM: queues, KV cache, time to first token and end-to-end latency, tokens/s and "
                    "preemptions per model and pod. Works with both vLLM metric generations.",
        tags=["toposcale", "vllm", "llm"],
        variables=variables,
        rows=[overview, load, latency, throughput],
        links=dashboard_links(),
    )
