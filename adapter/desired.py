"""`vllm_desired_replicas`: the replica count a vLLM Deployment needs, served as an External metric (and
through the KEDA external scaler), computed per (rule, namespace, selector) from what the adapter reads.

The decision itself is `toposcale.autoscale.desired.decide` (pure, shared with the autoscaling benchmark);
this module is the glue around it (what it reads, pure, is desired_inputs.py):

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from .desired_config import algorithm as _algo
from .desired_config import make_config
from .desired_inputs import (
    Reading,
    Snapshot,
    mean_prompt_tokens,
    pod_counters,
    prometheus_query,
    quantile_or_none,
    to_observation,
    waiting_tokens,
    window_rates,
    window_seconds,
)
from .errors import AdapterError, BadRequest, NotFound, SourceUnavailable
from .model import Coverage, MetricValue, check_coverage, parse_le
from .rules import Rule
from .selectors import Selector, SelectorError, parse_selector

logger = logging.getLogger("toposcale.adapter.desired")

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
        ready, starting = await finder.pod_counts(namespace, selector)
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


async def debug_desired(
    engine: DesiredEngine | None,
    compute: Callable[[str, str, str | None], Awaitable[tuple[Rule, list[MetricValue]]]],
    query: Mapping[str, str],
) -> dict[str, Any]:
    """`GET /debug/desired?namespace=NS&labelSelector=SEL&rule=NAME`: the answer the HPA gets (`compute`, the
    value service's: the same cache, so asking here decides nothing extra within --cache-ttl) and its
    reasons."""
    namespace = query.get("namespace", "")
    name = query.get("rule", "")
    if not namespace or not name:
        raise BadRequest("/debug/desired needs ?namespace=NS&rule=NAME (and labelSelector=SEL)")
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
        _, values = await compute(namespace, rule.name, query.get("labelSelector"))
        answer = {"code": 200, "value": values[0].value if values else None}
    except AdapterError as exc:
        answer = {"code": exc.code, "error": str(exc)}
    return {"answer": answer, "explain": engine.explain(rule, namespace, selector)}
