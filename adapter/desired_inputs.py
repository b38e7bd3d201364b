"""What a `vllm_desired_replicas` rule reads (desired.py decides with it): the vLLM series it needs, one pod's
counters, the rates over the rule's window from a short history of them (scrape mode) or the one PromQL
query that computes them (Prometheus mode), and the `Reading` handed to the algorithm as its Observation.
Pure: no source, no clock of its own."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SourceUnavailable
from .model import Sample, histogram_quantile, parse_le
from .rules import Rule
from .selectors import Selector

# vLLM's series (V1 engine names; the TPOT histogram was renamed in vLLM 0.11, the older name is read when
# the newer is absent, as rules' `series` generations are).
PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"
SUCCESS = "vllm:request_success_total"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
TTFT = "vllm:time_to_first_token_seconds"
TPOT = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
PROMPT_LEN = "vllm:request_prompt_tokens"
DEFAULT_WINDOW_SECONDS = 60
QUANTILE = 0.9


def wanted_series(rule: Rule) -> set[str]:
    """The sample names a scrape must keep for `rule` (a vllm_desired_replicas rule)."""
    names = {
        PROMPT,
        GENERATION,
        SUCCESS,
        WAITING,
        RUNNING,
        TTFT + "_bucket",
        PROMPT_LEN + "_sum",
        PROMPT_LEN + "_count",
    }
    names.update(t + "_bucket" for t in TPOT)
    fd = rule.desired.front_door if rule.desired is not None else None
    if fd is not None and fd.series is not None:
        names.add(fd.series)
    return names


def window_seconds(rule: Rule) -> float:
    return float(rule.window_seconds or DEFAULT_WINDOW_SECONDS)


# -- pure: one pod's counters, rates over the window, the reading --


@dataclass(frozen=True, slots=True)
class PodCounters:
    """One pod's cumulative counters and histogram buckets (summed over its engines and label sets)."""

    prompt: float | None
    generation: float | None
    success: float | None
    ttft: Mapping[float, float]
    tpot: Mapping[float, float]
    prompt_len_sum: float | None
    prompt_len_count: float | None
    waiting: float | None
    running: float | None


def _sum(samples: Sequence[Sample], name: str) -> float | None:
    values = [s.value for s in samples if s.name == name]
    return math.fsum(values) if values else None


def _buckets(samples: Sequence[Sample], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for s in samples:
        if s.name == name:
            le = parse_le(s.labels.get("le"))
            out[le] = out.get(le, 0.0) + s.value
    return out


def pod_counters(samples: Sequence[Sample]) -> PodCounters:
    tpot: dict[float, float] = {}
    for name in TPOT:  # the first generation the pod exposes
        tpot = _buckets(samples, name + "_bucket")
        if tpot:
            break
    return PodCounters(
        prompt=_sum(samples, PROMPT),
        generation=_sum(samples, GENERATION),
        success=_sum(samples, SUCCESS),
        ttft=_buckets(samples, TTFT + "_bucket"),
        tpot=tpot,
        prompt_len_sum=_sum(samples, PROMPT_LEN + "_sum"),
        prompt_len_count=_sum(samples, PROMPT_LEN + "_count"),
        waiting=_sum(samples, WAITING),
        running=_sum(samples, RUNNING),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # seconds (the engine's clock)
    pods: Mapping[str, PodCounters]  # by target URL


def _increase(now: float | None, then: float | None) -> float | None:
    if now is None or then is None:
        return None
    return now if now < then else now - then  # a counter reset counts from zero, as PromQL's increase


def _bucket_increase(now: Mapping[float, float], then: Mapping[float, float]) -> dict[float, float]:
    if any(now.get(le, 0.0) < c for le, c in then.items()):
        return dict(now)
    return {le: c - then.get(le, 0.0) for le, c in now.items()}


@dataclass(frozen=True, slots=True)
class Rates:
    """Over the pods that have an earlier snapshot within the window."""

    span_s: float  # the shortest per-pod span the rates cover
    pods: int  # pods with history (the others are new: their first snapshot was this one)
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    ttft: dict[float, float]  # bucket increases, summed over pods
    tpot: dict[float, float]
    prompt_len_sum: float
    prompt_len_count: float


def window_rates(now: Snapshot, history: Sequence[Snapshot], window: float) -> Rates | None:
    """Per-pod increases since the oldest snapshot of that pod within `window` (a pod's rate is its increase
    over its own span; the selector's is their sum); None when no pod has an earlier snapshot."""
    prompt = generation = plen_sum = plen_count = 0.0
    ttft: dict[float, float] = {}
    tpot: dict[float, float] = {}
    spans: list[float] = []
    for url, c in now.pods.items():
        base = next((s for s in history if now.at - window <= s.at < now.at - 1e-3 and url in s.pods), None)
        if base is None:
            continue
        b = base.pods[url]
        span = now.at - base.at
        spans.append(span)
        inc_p = _increase(c.prompt, b.prompt)
        inc_g = _increase(c.generation, b.generation)
        if inc_p is None or inc_g is None:
            raise SourceUnavailable(
                f"a selected pod ({url}) exposes no {PROMPT} or {GENERATION}: is it a vLLM server?"
            )
        prompt += inc_p / span
        generation += inc_g / span
        for acc, now_b, then_b in ((ttft, c.ttft, b.ttft), (tpot, c.tpot, b.tpot)):
            for le, v in _bucket_increase(now_b, then_b).items():
                acc[le] = acc.get(le, 0.0) + v
        ps, pc = (
            _increase(c.prompt_len_sum, b.prompt_len_sum),
            _increase(c.prompt_len_count, b.prompt_len_count),
        )
        if ps is not None and pc is not None:
            plen_sum += ps
            plen_count += pc
    if not spans:
        return None
    return Rates(min(spans), len(spans), prompt, generation, ttft, tpot, plen_sum, plen_count)


def quantile_or_none(buckets: Mapping[float, float]) -> float | None:
    """p90 of a window's bucket increases; None when nothing was observed (no request finished: no
    evidence about latency, which is not a latency of 0)."""
    if not buckets or math.inf not in buckets or buckets[math.inf] <= 0:
        return None
    return histogram_quantile(QUANTILE, buckets)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the adapter read for one selector at one evaluation: the algorithm's inputs, and what
    /debug/desired shows under "inputs"."""

    at: float
    window_s: float
    ready: int
    starting: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    waiting: float
    running: float
    mean_prompt_tokens: float | None
    waiting_tokens: float
    ttft_p90_s: float | None
    tpot_p90_s: float | None
    front_door_pending: float | None
    failed_targets: tuple[str, ...] = ()


def mean_prompt_tokens(
    plen_sum: float, plen_count: float, prompt_total: float | None, success_total: float | None
) -> float | None:
    """Mean prompt length: the window's prompt-length histogram when vLLM exposes it and requests finished
    in the window, else prompt tokens per finished request since the pods started; None when neither
    says (no request ever finished)."""
    if plen_count > 0:
        return plen_sum / plen_count
    if prompt_total is not None and success_total:
        return prompt_total / success_total
    return None


def waiting_tokens(waiting: float, mean_prompt: float | None) -> float:
    """The waiting queue as prefill tokens: a 12k-token prompt is not a 200-token one."""
    if waiting <= 0:
        return 0.0
    if mean_prompt is None:
        raise SourceUnavailable(
            f"{waiting:g} requests are waiting but no request has finished yet: their prompt length "
            "(the backlog in tokens) is unknown"
        )
    return waiting * mean_prompt


def prometheus_query(rule: Rule, namespace: str, selector: Selector) -> str:
    """One query for a Prometheus-mode reading: parts told apart by the toposcale_part label (as
    promql.combined_query): token rates, gauges, histogram increases by le, mean prompt length (window, and
    since start), ready pods (`up == 1`), those Prometheus cannot scrape (`up == 0`, one series each) and the
    newest sample's age."""
    from .promql import PART_LABEL, matchers

    m = matchers(rule, namespace, selector)
    w = f"{int(window_seconds(rule))}s"
    tpot = " or ".join(f"sum by (le) (increase({t}_bucket{{{m}}}[{w}]))" for t in TPOT)
    parts = [
        (f"sum(rate({PROMPT}{{{m}}}[{w}]))", "prompt"),
        (f"sum(rate({GENERATION}{{{m}}}[{w}]))", "generation"),
        (f"sum({WAITING}{{{m}}})", "waiting"),
        (f"sum({RUNNING}{{{m}}})", "running"),
        (f"sum by (le) (increase({TTFT}_bucket{{{m}}}[{w}]))", "ttft"),
        (f"({tpot})", "tpot"),
        (
            f"sum(increase({PROMPT_LEN}_sum{{{m}}}[{w}]))"
            f" / sum(increase({PROMPT_LEN}_count{{{m}}}[{w}])) > 0",
            "plen",
        ),
        (f"sum({PROMPT}{{{m}}}) / sum({SUCCESS}{{{m}}}) > 0", "plen_total"),
        (f"count(up{{{m}}} == 1)", "ready"),
        (f"max by ({rule.namespace_label}, {rule.pod_label}) (up{{{m}}} == 0)", "down"),
        (f"min(time() - timestamp({WAITING}{{{m}}}))", "age"),
    ]
    return " or ".join(f'label_replace({q}, "{PART_LABEL}", "{name}", "", "")' for q, name in parts)


def to_observation(algo: Any, r: Reading) -> Any:
    """The algorithm's Observation from a Reading."""
    return algo.Observation(
        t=r.at,
        ready_replicas=r.ready,
        starting_replicas=r.starting,
        prompt_tokens_rate=r.prompt_tokens_per_s,
        generation_tokens_rate=r.generation_tokens_per_s,
        waiting_requests=r.waiting,
        mean_prompt_tokens=r.mean_prompt_tokens,
        running_requests=r.running,
        ttft_p90_s=r.ttft_p90_s,
        tpot_p90_s=r.tpot_p90_s,
        front_door_pending=r.front_door_pending,
    )
