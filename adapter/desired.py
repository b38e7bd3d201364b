"""`vllm_desired_replicas`: the replica count a vLLM Deployment needs, served as an External metric (and
through the KEDA external scaler), computed per (rule, namespace, selector) from what the adapter reads.

The decision itself is `toposcale.autoscale.desired.decide` (pure, shared with the autoscaling benchmark);
this module is the glue around it:

- **Reading** (per evaluation): the selected pods' vLLM counters turned into rates over the rule's window
  (prompt and generation tokens per second), the waiting and running gauges, the waiting queue as tokens
  (waiting requests x mean prompt tokens), the TTFT and TPOT histograms' increases over the window, the
  ready and starting pod counts, and the front door's pending requests when one is configured. In scrape
  mode the rates come from this module's own short history of each pod's counters; in Prometheus mode from
  one PromQL query (rate/increase over the window).
- **State** per selector between evaluations (the algorithm's DesiredState and the counter history), bounded:
  at most `desired.max_selectors` selectors (the least recently asked goes first) and forgotten after
  `desired.idle_seconds` without a request.
- **Never a made-up value**: no pod and no front door configured, a front door that cannot be read, pods
  that cannot be read (the rule's on_missing/min_answered_share as for any rule), Prometheus samples older
  than max_staleness_seconds, or no counter history yet: all are SourceUnavailable (503; the HPA holds its
  replicas), never 0. Each answer's reasons (inputs, demand, capacity, forecast, headroom, result) are
  logged and kept for `GET /debug/desired`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from .errors import BadRequest, NotFound, SourceUnavailable
from .model import Coverage, MetricValue, Sample, check_coverage, histogram_quantile, parse_le
from .rules import Rule
from .selectors import Selector

logger = logging.getLogger("toposcale.adapter.desired")

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


# -- the algorithm (toposcale.autoscale.desired), imported lazily: the rules load before any evaluation --


def _algo() -> Any:
    from toposcale.autoscale import desired as algo

    return algo


def check_algorithm(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is wrong when `fields` do not make a DesiredConfig."""
    make_config(fields)


def make_config(fields: Mapping[str, Any]) -> Any:
    """DesiredConfig from a rule's `desired.algorithm` mapping. The prior capacity of one replica at the SLO
    is either `prior: {prompt_tokens_s: N, generation_tokens_s: N}` or `profile: NAME|FILE` (a serving
    profile, toposcale/serving/profiles: the capacity it gives at the rule's tpot_slo_s)."""
    algo = _algo()
    kwargs = dict(fields)
    try:
        if "profile" in kwargs:
            if "prior" in kwargs:
                raise ValueError("give 'profile' or 'prior', not both")
            from toposcale.serving.profile import load_profile

            profile = load_profile(str(kwargs.pop("profile")))
            tpot = kwargs.get("tpot_slo_s", algo.DesiredConfig().tpot_slo_s)
            kwargs["prior"] = algo.Capacity.from_profile(profile, float(tpot))
        elif "prior" in kwargs:
            prior = kwargs["prior"]
            if not isinstance(prior, Mapping):
                raise ValueError("prior: expected {prompt_tokens_s: N, generation_tokens_s: N}")
            kwargs["prior"] = algo.Capacity(**prior)
        return algo.DesiredConfig(**kwargs)
    except (TypeError, ValueError) as exc:  # an unknown or missing field, a value out of range
        raise ValueError(f"desired.algorithm: {exc}") from None


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


# -- state, bounded --


@dataclass(slots=True)
class SelectorState:
    algo: Any = None  # the algorithm's DesiredState (None until the first decision)
    history: deque[Snapshot] = field(default_factory=deque)
    used: float = 0.0
    explain: dict[str, Any] | None = None


class States:
    """Per-(rule, namespace, selector) state: at most `limit` entries (least recently used evicted), each
    dropped after `idle` seconds without a request."""

    def __init__(self, limit: int, idle: float) -> None:
        self.limit = limit
        self.idle = idle
        self._d: OrderedDict[Any, SelectorState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def peek(self, key: Any) -> SelectorState | None:
        return self._d.get(key)

    def get(self, key: Any, now: float) -> SelectorState:
        for k in [k for k, s in self._d.items() if now - s.used > self.idle]:
            del self._d[k]
        state = self._d.pop(key, None) or SelectorState()
        state.used = now
        self._d[key] = state
        while len(self._d) > self.limit:
            self._d.popitem(last=False)
        return state


def _plain(value: Any) -> Any:
    """A dataclass (or anything) as JSON-able data for /debug/desired."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# -- the engine --


class DesiredEngine:
    """Computes `vllm_desired_replicas` rules from a ScrapeSource or a PrometheusSource."""

    def __init__(self, source: Any, rules: Sequence[Rule], clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock
        self.rules = {r.name: r for r in rules if r.aggregation == "vllm_desired_replicas"}
        self.placement: Any = None  # adapter/placement.Placement with --extender-url: the placement cap
        self.configs = {
            n: make_config(r.desired.algorithm if r.desired else {}) for n, r in self.rules.items()
        }
        spec = [r.desired for r in self.rules.values() if r.desired is not None]
        self.states = States(
            max((s.max_selectors for s in spec), default=1000),
            max((s.idle_seconds for s in spec), default=900),
        )

    def key(self, rule: Rule, namespace: str, selector: Selector) -> Any:
        reqs = tuple(sorted(selector.requirements, key=lambda r: (r.key, r.op, r.values)))
        return (rule.name, namespace, reqs)

    async def fetch(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        now = self.clock()
        state = self.states.get(self.key(rule, namespace, selector), now)
        try:
            if self.source.kind == "prometheus":
                reading = await self._read_prometheus(rule, namespace, selector, now)
            else:
                reading = await self._read_scrape(rule, namespace, selector, now, state)
            value = self._decide(rule, state, reading, namespace, str(selector))
            if self.placement is not None:  # issue 29: capped at what the cluster can place
                allowance = rule.desired.provisioning_allowance if rule.desired is not None else 1
                value = await self.placement.cap(
                    rule.name,
                    namespace,
                    selector,
                    value,
                    reading.ready,
                    reading.starting,
                    allowance,
                    state.explain,
                )
        except (SourceUnavailable, NotFound, BadRequest) as exc:
            state.explain = {
                "rule": rule.name,
                "namespace": namespace,
                "labelSelector": str(selector),
                "at": now,
                "error": str(exc),
            }
            logger.warning(
                "desired replicas: no answer",
                extra={
                    "metric": rule.name,
                    "namespace": namespace,
                    "selector": str(selector),
                    "error": str(exc)[:500],
                },
            )
            raise
        return [MetricValue(value=float(value), timestamp=reading.at, window_seconds=round(reading.window_s))]

    def explain(self, rule: Rule, namespace: str, selector: Selector) -> dict[str, Any] | None:
        state = self.states.peek(self.key(rule, namespace, selector))
        return None if state is None else state.explain

    def _decide(
        self, rule: Rule, state: SelectorState, reading: Reading, namespace: str, selector: str
    ) -> int:
        algo = _algo()
        cfg = self.configs[rule.name]
        obs = to_observation(algo, reading)
        if state.algo is None:
            state.algo = algo.DesiredState()
        try:
            decision = algo.decide(cfg, state.algo, obs)  # updates state.algo
        except algo.DesiredError as exc:
            raise SourceUnavailable(f"{rule.name}: {exc}") from exc
        desired = int(decision.replicas)
        state.explain = {
            "rule": rule.name,
            "namespace": namespace,
            "labelSelector": selector,
            "at": reading.at,
            "inputs": _plain(reading),
            "decision": decision.as_dict(),
            "desiredReplicas": desired,
        }
        logger.info(
            "desired replicas",
            extra={
                "metric": rule.name,
                "namespace": namespace,
                "selector": selector,
                "desired": desired,
                "ready": reading.ready,
                "starting": reading.starting,
                "decision": decision.as_dict(),
            },
        )
        return desired

    # -- scrape mode --

    async def _read_scrape(
        self, rule: Rule, namespace: str, selector: Selector, now: float, state: SelectorState
    ) -> Reading:
        src = self.source
        finder = src.finder
        if not await finder.namespace_exists(namespace):
            raise NotFound(f'namespace "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
        pods = await finder.workload(rule, namespace, selector)
        counts = getattr(finder, "pod_counts", None)
        ready, starting = (await counts(namespace, selector)) if counts is not None else (len(pods), 0)
        window = window_seconds(rule)
        front = await self._front_door_scrape(rule) if _front_door(rule) else None
        if not pods:
            if front is None:
                raise SourceUnavailable(no_front_door(rule, namespace, selector, starting))
            state.history.clear()
            return Reading(now, window, 0, starting, 0.0, 0.0, 0.0, 0.0, None, 0.0, None, None, front)
        scrapes, errors = await src._scrape_all(pods)
        coverage = Coverage(len(pods), tuple(errors))
        check_coverage(rule, coverage, src.min_answered_share)
        counters = {url: pod_counters(s.samples) for url, s in scrapes.items()}
        snap = Snapshot(now, counters)
        rates = window_rates(snap, state.history, window)
        # keep a snapshot per ~window/8 (the HPA asks every 15 s), none older than the window
        if not state.history or now - state.history[-1].at >= window / 8:
            state.history.append(snap)
        while state.history and now - state.history[0].at > window:
            state.history.popleft()
        if rates is None:
            raise SourceUnavailable(
                f"{rule.name}: token rates need two readings of a pod within {window:g}s; the first was "
                "just taken, ask again in a few seconds"
            )
        scale = coverage.expected / coverage.answered if coverage.failed else 1.0
        waiting = scale * math.fsum(c.waiting or 0.0 for c in counters.values())
        running = scale * math.fsum(c.running or 0.0 for c in counters.values())
        prompt_total = _total(c.prompt for c in counters.values())
        success_total = _total(c.success for c in counters.values())
        mean = mean_prompt_tokens(rates.prompt_len_sum, rates.prompt_len_count, prompt_total, success_total)
        return Reading(
            at=now,
            window_s=rates.span_s,
            ready=ready,
            starting=starting,
            prompt_tokens_per_s=scale * rates.prompt_tokens_per_s,
            generation_tokens_per_s=scale * rates.generation_tokens_per_s,
            waiting=waiting,
            running=running,
            mean_prompt_tokens=mean,
            waiting_tokens=waiting_tokens(waiting, mean),
            ttft_p90_s=quantile_or_none(rates.ttft),
            tpot_p90_s=quantile_or_none(rates.tpot),
            front_door_pending=front,
            failed_targets=coverage.failed,
        )

    async def _front_door_scrape(self, rule: Rule) -> float:
        fd = _front_door(rule)
        assert fd is not None
        if fd.url is None or fd.series is None:
            raise SourceUnavailable(
                f"{rule.name}: desired.front_door has no url/series for scrape mode (it has a "
                "prometheus_query, which only the Prometheus source runs)"
            )
        from .sources.scrape import ScrapeError

        try:
            scrape = await self.source.scrape(fd.url)
        except ScrapeError as exc:
            raise SourceUnavailable(f"{rule.name}: front door {fd.url}: {exc}") from exc
        values = [
            s.value
            for s in scrape.samples
            if s.name == fd.series and all(s.labels.get(k) == v for k, v in fd.labels.items())
        ]
        if not values:
            raise SourceUnavailable(
                f"{rule.name}: front door {fd.url} has no {fd.series}{_labels(fd.labels)}"
            )
        total = math.fsum(values)
        if not math.isfinite(total) or total < 0:
            raise SourceUnavailable(f"{rule.name}: front door {fd.series} is {total!r}")
        return total

    # -- Prometheus mode --

    async def _read_prometheus(self, rule: Rule, namespace: str, selector: Selector, now: float) -> Reading:
        from .promql import PART_LABEL

        window = window_seconds(rule)
        result = await self.source.query(prometheus_query(rule, namespace, selector))
        parts: dict[str, float] = {}
        down: list[str] = []
        ttft: dict[float, float] = {}
        tpot: dict[float, float] = {}
        for series in result:
            try:
                labels = series["metric"]
                part = labels.get(PART_LABEL)
                number = float(series["value"][1])
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise SourceUnavailable(f"{rule.name}: Prometheus answered an unexpected result") from exc
            if part in ("ttft", "tpot"):
                (ttft if part == "ttft" else tpot)[parse_le(labels.get("le"))] = number
            elif part == "down":
                who = f"{labels.get(rule.namespace_label, namespace)}/{labels.get(rule.pod_label, '?')}"
                down.append(f"{who}: Prometheus cannot scrape it (up == 0)")
            elif part is not None:
                parts[part] = number
        ready = int(parts.get("ready", 0))
        # selected pods Prometheus cannot scrape: as for any rule (on_missing, min_answered_share); all of
        # them down is an error, not "no pod" (which would hand the decision to the front door alone)
        coverage = Coverage(ready + len(down), tuple(sorted(down)))
        check_coverage(rule, coverage, self.source.min_answered_share)
        scale = coverage.expected / coverage.answered if coverage.failed else 1.0
        fd = _front_door(rule)
        front = await self._front_door_prometheus(rule, namespace) if fd is not None else None
        if ready == 0 or "age" not in parts:
            if front is None:
                raise SourceUnavailable(no_front_door(rule, namespace, selector, 0))
            return Reading(now, window, 0, 0, 0.0, 0.0, 0.0, 0.0, None, 0.0, None, None, front)
        age = parts["age"]
        if age > rule.max_staleness_seconds:
            raise SourceUnavailable(
                f"{rule.name}: newest vLLM sample is {age:.0f}s old (max_staleness_seconds "
                f"{rule.max_staleness_seconds:g})"
            )
        for need in ("prompt", "generation", "waiting", "running"):
            if need not in parts or not math.isfinite(parts[need]):
                raise SourceUnavailable(f"{rule.name}: Prometheus has no {need} series for the selected pods")
        mean_window = parts.get("plen")
        mean = mean_window if mean_window is not None and math.isfinite(mean_window) else None
        if mean is None:
            cumulative = parts.get("plen_total")
            mean = cumulative if cumulative is not None and math.isfinite(cumulative) else None
        waiting = scale * parts["waiting"]
        return Reading(
            at=now,
            window_s=window,
            ready=ready,
            starting=0,
            prompt_tokens_per_s=scale * parts["prompt"],
            generation_tokens_per_s=scale * parts["generation"],
            waiting=waiting,
            running=scale * parts["running"],
            mean_prompt_tokens=mean,
            waiting_tokens=waiting_tokens(waiting, mean),
            ttft_p90_s=quantile_or_none(ttft),
            tpot_p90_s=quantile_or_none(tpot),
            front_door_pending=front,
            failed_targets=coverage.failed,
        )

    async def _front_door_prometheus(self, rule: Rule, namespace: str) -> float:
        fd = _front_door(rule)
        assert fd is not None
        if fd.prometheus_query is None:
            raise SourceUnavailable(
                f"{rule.name}: desired.front_door has no prometheus_query for Prometheus mode (it has a "
                "url/series, which only the scrape source reads)"
            )
        result = await self.source.query(fd.prometheus_query.replace("{namespace}", namespace))
        if len(result) != 1:
            raise SourceUnavailable(
                f"{rule.name}: the front door query returned {len(result)} series, not one (aggregate it, "
                "e.g. sum(...); no series means the gateway's metric is missing)"
            )
        try:
            total = float(result[0]["value"][1])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SourceUnavailable(f"{rule.name}: Prometheus answered an unexpected result") from exc
        if not math.isfinite(total) or total < 0:
            raise SourceUnavailable(f"{rule.name}: front door query gave {total!r}")
        return total


def _total(values: Any) -> float | None:
    vs = [v for v in values if v is not None]
    return math.fsum(vs) if vs else None


def _front_door(rule: Rule) -> Any:
    return rule.desired.front_door if rule.desired is not None else None


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def no_front_door(rule: Rule, namespace: str, selector: Selector, starting: int) -> str:
    where = f"{namespace}/{{{selector}}}"
    pods = f"no selected pod is Ready ({starting} starting)" if starting else "no pod is selected"
    return (
        f"{rule.name}: {pods} in {where} and no desired.front_door is configured: the demand at zero "
        "replicas is unknown (not 0)"
    )


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


async def debug_desired(handlers: Any, query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /debug/desired?namespace=NS&labelSelector=SEL&rule=NAME`: the answer the HPA gets (computed
    through the same cache, so asking here decides nothing extra within --cache-ttl) and its reasons."""
    from .errors import AdapterError
    from .selectors import SelectorError, parse_selector

    namespace = query.get("namespace", "")
    name = query.get("rule", "")
    if not namespace or not name:
        raise BadRequest("/debug/desired needs ?namespace=NS&rule=NAME (and labelSelector=SEL)")
    engine: DesiredEngine | None = handlers.desired
    rule = engine.rules.get(name) if engine is not None else None
    if engine is None or rule is None:
        raise NotFound(
            f'no vllm_desired_replicas rule "{name[:100]}" '
            f"(this adapter has: {', '.join(sorted(engine.rules)) if engine else 'none'})"
        )
    try:
        selector = parse_selector(query.get("labelSelector"))
    except SelectorError as exc:
        raise BadRequest(f"invalid labelSelector: {exc}") from exc
    answer: dict[str, Any]
    try:
        _, values = await handlers.compute(namespace, rule.name, query.get("labelSelector"))
        answer = {"code": 200, "value": values[0].value if values else None}
    except AdapterError as exc:
        answer = {"code": exc.code, "error": str(exc)}
    return {"answer": answer, "explain": engine.explain(rule, namespace, selector)}
