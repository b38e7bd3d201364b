"""Three hours of a Qwen2.5-7B (tensor parallel 4) deployment scaling out and back in, as OpenMetrics text.

Used only for the README pictures (scripts/render_dashboards.py):
`promtool tsdb create-blocks-from openmetrics` backfills it into a real Prometheus, and each panel's own
PromQL is run against that. The series are the ones the test exporters and services expose (same names,
label sets and types: vLLM V1, NVIDIA DCGM exporter, kube-state-metrics, toposcale); only their values follow
a made-up day. Pure: no I/O, deterministic per seed.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

NAMESPACE = "llm"
MODEL = "Qwen2.5-7B-Instruct"  # deploy/examples/qwen: --served-model-name
DEPLOYMENT = "vllm-qwen"  # deploy/examples/qwen
PODS = [f"{DEPLOYMENT}-7c9d5b8f6-{s}" for s in ("x2k4p", "m8q7w", "c4t9z", "h6v2n")]
# (node, GPU model, topology tier a 4-GPU set gets there): pods 0,1 -> node a, pods 2,3 -> node b
NODES = [("gpu-node-a", "NVIDIA H100 80GB HBM3", "nvlink"), ("gpu-node-b", "NVIDIA H100 PCIe", "pcie-switch")]
FB_TOTAL_MIB = 81559
TARGET_WAITING_PER_REPLICA = 4  # the example HPA: averageValue "4" on vllm_requests_waiting
KV_TARGET = 0.75  # and value 750m on vllm_kv_cache_usage
MAX_RUNNING = 48

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
# toposcale's own buckets (adapter/metrics.py, extender/server.py)
ADAPTER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
EXTENDER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FLEET_NODES = 40

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    type: str  # gauge | counter | histogram
    help: str
    buckets: Sequence[float] = ()
    # labels -> [(t, value)] for gauges/counters; labels -> [(t, cumulative bucket counts, count, sum)]
    points: dict[Labels, list[tuple]] = field(default_factory=lambda: defaultdict(list))


class Recorder:
    """Accumulates samples per family; counters and histograms keep running totals like a real exporter."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._totals: dict[tuple[str, Labels], float] = defaultdict(float)
        self._hist: dict[tuple[str, Labels], list[float]] = {}

    def family(self, name: str, type_: str, help_: str, buckets: Sequence[float] = ()) -> Family:
        if name not in self.families:
            self.families[name] = Family(name, type_, help_, buckets)
        return self.families[name]

    def gauge(self, name: str, help_: str, labels: dict[str, str], t: float, value: float) -> None:
        self.family(name, "gauge", help_).points[_key(labels)].append((t, value))

    def counter(self, name: str, help_: str, labels: dict[str, str], t: float, inc: float) -> None:
        key = _key(labels)
        self._totals[(name, key)] += max(0.0, inc)
        _put(self.family(name, "counter", help_).points[key], (t, self._totals[(name, key)]))

    def histogram(self, name: str, help_: str, buckets: Sequence[float], labels: dict[str, str], t: float,
                  observations: Sequence[float]) -> None:
        key = _key(labels)
        state = self._hist.setdefault((name, key), [0.0] * (len(buckets) + 2))  # buckets..., count, sum
        for v in observations:
            for i, le in enumerate(buckets):
                if v <= le:
                    state[i] += 1
            state[-2] += 1
            state[-1] += v
        fam = self.family(name, "histogram", help_, buckets)
        _put(fam.points[key], (t, tuple(state[: len(buckets)]), state[-2], state[-1]))

    def carry_forward(self, t: float, prefix: str) -> None:
        """Repeat the totals of counters and histograms not touched at `t`: a long-lived process (toposcale's
        services) exposes every counter on every scrape, not only when it moves."""
        for fam in self.families.values():
            if not fam.name.startswith(prefix) or fam.type == "gauge":
                continue
            for points in fam.points.values():
                if points[-1][0] != t:
                    points.append((t, *points[-1][1:]))

    def openmetrics(self) -> str:
        out: list[str] = []
        for fam in self.families.values():
            out.append(f"# HELP {fam.name} {fam.help}")
            out.append(f"# TYPE {fam.name} {fam.type}")
            for key, points in fam.points.items():
                lbl = ",".join(f'{k}="{v}"' for k, v in key)
                for point in points:
                    if fam.type == "gauge":
                        out.append(f"{fam.name}{{{lbl}}} {_num(point[1])} {point[0]:.3f}")
                    elif fam.type == "counter":
                        out.append(f"{fam.name}_total{{{lbl}}} {_num(point[1])} {point[0]:.3f}")
                    else:
                        t, cum, count, total = point
                        sep = "," if lbl else ""
                        for le, c in zip(fam.buckets, cum, strict=True):
                            out.append(f'{fam.name}_bucket{{{lbl}{sep}le="{le}"}} {_num(c)} {t:.3f}')
                        out.append(f'{fam.name}_bucket{{{lbl}{sep}le="+Inf"}} {_num(count)} {t:.3f}')
                        out.append(f"{fam.name}_count{{{lbl}}} {_num(count)} {t:.3f}")
                        out.append(f"{fam.name}_sum{{{lbl}}} {_num(total)} {t:.3f}")
        out.append("# EOF")
        return "\n".join(out) + "\n"


def _put(points: list[tuple], point: tuple) -> None:
    """Append, or replace the sample already taken at the same time (one sample per series per scrape)."""
    if points and points[-1][0] == point[0]:
        points[-1] = point
    else:
        points.append(point)


def _key(labels: dict[str, str]) -> Labels:
    return tuple((k, v) for k, v in labels.items() if v != "")


def _num(v: float) -> str:
    return repr(round(float(v), 6))


def arrival_rate(minute: float) -> float:
    """Requests/s: a quiet start, a 90-minute peak, a quiet end."""
    base, peak, start, end = 1.5, 11.0, 40.0, 140.0
    if start <= minute <= end:
        return base + (peak - base) * math.sin(math.pi * (minute - start) / (end - start)) ** 2
    return base


@dataclass
class Scenario:
    end: float  # unix seconds of the last sample
    hours: float = 3.0
    step: float = 15.0
    seed: int = 7
    outage_minutes: tuple[float, float] = (150.0, 152.0)  # Prometheus behind the adapter unreachable

    def render(self) -> str:
        rec = Recorder()
        rng = random.Random(self.seed)
        steps = int(self.hours * 3600 / self.step)
        start = self.end - steps * self.step
        waiting = [0.0] * len(PODS)
        ready_at: list[float | None] = [0.0, None, None, None]  # minutes; pod 0 runs from the start
        current, desired_hist = 1, [(0.0, 1)]
        answered: dict[str, tuple[float, float]] = {}  # what the adapter last answered: (value, sample time)
        gpu_temp = defaultdict(lambda: 33.0)
        for i in range(steps + 1):
            t = start + i * self.step
            minute = i * self.step / 60
            outage = self.outage_minutes[0] <= minute < self.outage_minutes[1]
            live = [p for p in range(len(PODS)) if ready_at[p] is not None and ready_at[p] <= minute]
            lam = arrival_rate(minute) * (1 + rng.uniform(-0.06, 0.06))
            capacity = 3.1  # requests/s one replica completes at a full batch
            finished_total = 0.0
            kv_by_pod: list[float] = []
            for p in range(len(PODS)):
                pod_labels = {"namespace": NAMESPACE, "pod": PODS[p], "model_name": MODEL, "engine": "0"}
                if p not in live:
                    waiting[p] = 0.0
                    continue
                lam_p = lam / len(live)
                waiting[p] = max(0.0, waiting[p] + (lam_p - capacity) * self.step)
                served = min(lam_p + waiting[p] / 60, capacity)
                running = min(MAX_RUNNING, served * 14.0 * (1 + rng.uniform(-0.05, 0.05)))
                kv = min(0.99, 0.05 + running / MAX_RUNNING * 0.82 + min(waiting[p], 40) / 400)
                kv_by_pod.append(kv)
                finished = served * self.step
                finished_total += finished
                queue_s = waiting[p] / capacity
                rec.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                          pod_labels, t, round(running))
                rec.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                          pod_labels, t, round(waiting[p]))
                rec.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                          pod_labels, t, kv)
                rec.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                            pod_labels, t, max(0.0, kv - 0.9) * 30 * self.step)
                rec.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", pod_labels, t,
                            finished * rng.uniform(650, 750))
                rec.counter("vllm:generation_tokens", "Number of generation tokens processed.", pod_labels, t,
                            finished * rng.uniform(230, 270))
                for reason, share in (("stop", 0.86), ("length", 0.13), ("abort", 0.01)):
                    rec.counter("vllm:request_success", "Count of successfully processed requests.",
                                pod_labels | {"finished_reason": reason}, t, finished * share)
                n = max(1, round(finished))
                ttft = [rng.lognormvariate(math.log(0.18 + queue_s), 0.45) for _ in range(n)]
                itl = [rng.lognormvariate(math.log(0.022 + running / 1400), 0.25) for _ in range(n)]
                e2e = [a + 250 * b for a, b in zip(ttft, itl, strict=True)]
                rec.histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", TTFT_BUCKETS, pod_labels, t,
                              ttft)
                rec.histogram("vllm:inter_token_latency_seconds",
                              "Histogram of inter-token latency in seconds.", ITL_BUCKETS, pod_labels, t, itl)
                rec.histogram("vllm:e2e_request_latency_seconds",
                              "Histogram of e2e request latency in seconds.", E2E_BUCKETS, pod_labels, t, e2e)
            # GPUs: the 4 GPUs of a live pod are busy in proportion to its batch, the others idle
            for n_idx, (node, gpu_model, _) in enumerate(NODES):
                for g in range(8):
                    p = n_idx * 2 + g // 4
                    up = p in live
                    busy = min(1.0, 0.25 + lam / max(1, len(live)) / 3.1 * 0.75) if up else 0.0
                    util = round(100 * busy * rng.uniform(0.93, 1.0)) if up else 0
                    gpu_temp[(node, g)] += ((34 + 42 * busy) - gpu_temp[(node, g)]) * 0.15
                    fb_used = 73_650 + rng.randint(-40, 40) if up else 2
                    labels = {"gpu": str(g), "UUID": f"GPU-{n_idx:x}{g:x}5f1c2e-8d3b-4a0e-9c1f-{g:012x}",
                              "device": f"nvidia{g}", "modelName": gpu_model, "Hostname": node,
                              "namespace": NAMESPACE if up else "", "pod": PODS[p] if up else "",
                              "container": "vllm" if up else ""}
                    rec.gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels, t, util)
                    rec.gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels, t, fb_used)
                    rec.gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels, t,
                              FB_TOTAL_MIB - fb_used)
                    rec.gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels, t,
                              round(72 + 560 * busy * rng.uniform(0.9, 1.0), 3))
                    rec.gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels, t,
                              round(gpu_temp[(node, g)]))
                    rec.gauge("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.",
                              labels, t, 0)
                    rec.gauge("DCGM_FI_PROF_SM_ACTIVE",
                              "The ratio of cycles an SM has at least 1 warp assigned.",
                              labels, t, round(0.85 * busy, 4))
                    rec.gauge("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
                              "Ratio of cycles the tensor (HMMA) pipe is active.",
                              labels, t, round(0.41 * busy, 4))
            # the HPA: queue (AverageValue 4 per replica) and KV cache (Value 0.75), the larger proposal wins;
            # immediate scale-up, 5-minute scale-down stabilisation window
            total_waiting = sum(waiting[p] for p in live)
            kv_avg = sum(kv_by_pod) / len(kv_by_pod) if kv_by_pod else 0.0
            if not outage:
                by_queue = math.ceil(total_waiting / TARGET_WAITING_PER_REPLICA)
                ratio = kv_avg / KV_TARGET
                by_kv = current if abs(ratio - 1) <= 0.1 else math.ceil(current * ratio)
                raw = max(1, min(4, max(by_queue, by_kv)))
                desired_hist.append((minute, raw))
                desired_hist = [(m, d) for m, d in desired_hist if minute - m <= 5]
                desired = max(d for _, d in desired_hist) if raw < current else raw
            else:
                desired = current
            for p in range(4):
                if p < desired and ready_at[p] is None:
                    ready_at[p] = minute + 3.0  # image pulled, weights loaded from the PVC, /health green
                    self._place(rec, t, p)
                elif p >= desired and p > 0 and ready_at[p] is not None:
                    ready_at[p] = None
            current = max(1, sum(1 for p in range(4) if ready_at[p] is not None))
            self._kube_state_metrics(rec, t, current, desired, outage)
            if not outage:  # a failed read records nothing: the last answer and its timestamp stay
                at = t - rng.uniform(2.0, 15.0)  # the sample behind it: Prometheus scrapes every 15 s
                answered["vllm_requests_waiting"] = (sum(round(waiting[p]) for p in live), at)
                answered["vllm_kv_cache_usage"] = (int(kv_avg * 1000.0) / 1000, at)  # whole milli-units
            self._adapter(rec, t, rng, outage, answered)
            self._extender_and_agents(rec, t, rng)
            rec.carry_forward(t, "toposcale_")
        return rec.openmetrics()

    def _place(self, rec: Recorder, t: float, pod: int) -> None:
        self._decision(rec, t, NODES[pod // 2][2], (0.0021, 0.0034))

    def _decision(self, rec: Recorder, t: float, tier: str, seconds: tuple[float, float]) -> None:
        """One GPU pod through the extender: a filter call, then a prioritize call over the fleet."""
        rec.counter("toposcale_extender_chosen_set_tier", "Tier of the GPU set predicted on the best-scored "
                    "node of each prioritize call", {"tier": tier}, t, 1)
        for verb, took in zip(("filter", "prioritize"), seconds, strict=True):
            rec.histogram("toposcale_extender_decision_seconds", "Time to answer one scheduler call, by verb",
                          EXTENDER_BUCKETS, {"verb": verb}, t, [took])
            rec.counter("toposcale_extender_requests", "Requests answered, by verb and HTTP code",
                        {"verb": verb, "code": "200"}, t, 1)
            rec.counter("toposcale_extender_nodes_scored", "Nodes judged, by verb", {"verb": verb}, t,
                        FLEET_NODES)
        busy = min(FLEET_NODES - 1, int(FLEET_NODES * 0.3))
        for outcome, nodes in (("fits", FLEET_NODES - busy), ("fails-now", busy)):
            rec.counter("toposcale_extender_filter_outcomes", "Filter outcomes per node",
                        {"outcome": outcome}, t, nodes)
        # two nodes of the fleet carry GPUs but no agent yet
        rec.counter("toposcale_extender_unknown_topology_nodes",
                    "Nodes answered without a usable topology or allocation, by reason",
                    {"reason": "missing"}, t, 2)

    def _kube_state_metrics(self, rec: Recorder, t: float, current: int, desired: int, outage: bool) -> None:
        hpa = {"namespace": NAMESPACE, "horizontalpodautoscaler": DEPLOYMENT}
        k = "kube_horizontalpodautoscaler_"
        rec.gauge(k + "status_current_replicas",
                  "Current number of replicas of pods managed by this autoscaler.", hpa, t, current)
        rec.gauge(k + "status_desired_replicas",
                  "Desired number of replicas of pods managed by this autoscaler.", hpa, t, desired)
        rec.gauge(k + "spec_min_replicas", "Lower limit for the number of pods that can be set by the "
                  "autoscaler, default 1.", hpa, t, 1)
        rec.gauge(k + "spec_max_replicas", "Upper limit for the number of pods that can be set by the "
                  "autoscaler; cannot be smaller than MinReplicas.", hpa, t, 4)
        rec.gauge(k + "spec_target_metric", "The metric specifications used by this autoscaler when "
                  "calculating the desired replica count.", hpa | {"metric_name": "vllm_requests_waiting",
                                                       "metric_target_type": "average"}, t,
                  TARGET_WAITING_PER_REPLICA)
        rec.gauge(k + "spec_target_metric", "The metric specifications used by this autoscaler when "
                  "calculating the desired replica count.", hpa | {"metric_name": "vllm_kv_cache_usage",
                                                       "metric_target_type": "value"}, t, KV_TARGET)
        conditions = (("AbleToScale", True), ("ScalingActive", not outage), ("ScalingLimited", desired >= 4))
        for cond, ok in conditions:
            for status in ("true", "false", "unknown"):
                rec.gauge(k + "status_condition", "The condition of this autoscaler.",
                          hpa | {"condition": cond, "status": status}, t,
                          1 if (status == "true") == ok and status != "unknown" else 0)

    def _adapter(self, rec: Recorder, t: float, rng: random.Random, outage: bool,
                 answered: dict[str, tuple[float, float]]) -> None:
        for metric, (value, at) in answered.items():
            labels = {"metric": metric, "namespace": NAMESPACE}
            rec.gauge("toposcale_adapter_served_value", "Last value answered for an external metric in a "
                      "namespace", labels, t, value)
            rec.gauge("toposcale_adapter_served_timestamp_seconds", "Unix time of the newest sample behind "
                      "the last value answered", labels, t, round(at, 3))
        # the HPA controller reads its two external metrics every 15 s
        polls = 2 * self.step / 15
        route = "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
        rec.counter("toposcale_adapter_requests", "HTTP requests served",
                    {"route": route, "code": "503" if outage else "200"}, t, polls)
        rec.histogram("toposcale_adapter_request_duration_seconds", "HTTP request latency",
                      ADAPTER_BUCKETS, {"route": route}, t,
                      [rng.lognormvariate(math.log(0.03 if outage else 0.004), 0.4)
                       for _ in range(round(polls))])
        for result, share in (("hit", 0.45), ("coalesced", 0.05), ("miss", 0.5)):
            rec.counter("toposcale_adapter_cache_requests",
                        "Metric value lookups by cache outcome (hit, miss, coalesced)", {"result": result}, t,
                        polls * share)
        if outage:
            rec.counter("toposcale_adapter_source_errors",
                        "Failures talking to metric sources (kind: target, stale, garbage, timeout, ...)",
                        {"source": "prometheus", "kind": "timeout"}, t, polls * 0.5)

    def _extender_and_agents(self, rec: Recorder, t: float, rng: random.Random) -> None:
        # other GPU workloads of the cluster (training jobs, batch inference) go through the extender too
        for _ in range(rng.randint(1, 4)):
            tier = rng.choices(["nvlink", "pcie-switch", "numa", "cross-socket"], [0.55, 0.25, 0.15, 0.05])[0]
            self._decision(rec, t, tier, (rng.lognormvariate(math.log(0.0018), 0.35),
                                          rng.lognormvariate(math.log(0.003), 0.35)))
        for i, (node, _, _) in enumerate(NODES):
            # `node`: what deploy/monitors' PodMonitor relabels from the agent pod's node
            agent = {"instance": f"10.0.{i}.17:9410", "node": node}
            rec.gauge("toposcale_agent_gpus", "GPUs seen on this node at the last discovery", agent, t, 8)
            rec.counter("toposcale_agent_publish_errors", "Node reads or patches that failed", agent, t,
                        1 if rng.random() < 0.004 else 0)
            rec.counter("toposcale_agent_kubelet_errors",
                        "Observations where the kubelet pod-resources API could not be asked", agent, t, 0)
            rec.counter("toposcale_agent_discovery_errors",
                        "Discoveries that could not learn the topology at all", agent, t, 0)
