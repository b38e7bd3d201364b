"""vllm_desired_replicas plumbing (adapter/desired.py): the rule kind, the readings it takes in scrape and
Prometheus mode, the per-selector state and its bounds, the errors instead of made-up values, and
/debug/desired. The decision is toposcale.autoscale.desired's (tested with the benchmark); here a recording
stand-in takes its place where a test checks what the adapter hands it."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from toposcale.adapter import desired
from toposcale.adapter.api import HANDLERS_KEY
from toposcale.adapter.rules import RulesError, RuleSet, load_rules, parse_rules
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import Exporter, VllmExporter

BASE = "/apis/external.metrics.k8s.io/v1beta1"


@dataclass(frozen=True)
class StubConfig:
    tokens_per_replica: float = 1000.0


@dataclass(frozen=True)
class StubObservation:
    at: float
    ready: int
    starting: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    waiting_tokens: float
    front_door_pending: float | None


@dataclass
class StubState:
    decisions: int = 0


@dataclass(frozen=True)
class StubDecision:
    replicas: int
    demand_tokens_per_s: float


def stub_algorithm(seen: list[Any]) -> types.SimpleNamespace:
    """A stand-in with the algorithm module's shape: replicas = ceil(token demand / capacity), 1 for any
    front-door demand at zero pods; records each Observation."""

    def decide(cfg: StubConfig, state: StubState, obs: StubObservation) -> tuple[StubState, StubDecision]:
        seen.append(obs)
        demand = obs.prompt_tokens_per_s + obs.generation_tokens_per_s + obs.waiting_tokens / 10
        n = math.ceil(demand / cfg.tokens_per_replica)
        if obs.ready == 0 and obs.front_door_pending:
            n = max(n, 1)
        return StubState(state.decisions + 1), StubDecision(n, demand)

    return types.SimpleNamespace(
        DesiredConfig=StubConfig, Observation=StubObservation, DesiredState=StubState, decide=decide
    )


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    out: list[Any] = []
    algo = stub_algorithm(out)
    monkeypatch.setattr(desired, "_algo", lambda: algo)
    return out


def desired_rules(front_door: dict[str, Any] | None = None, **spec: Any) -> RuleSet:
    rule: dict[str, Any] = {
        "name": "vllm_desired_replicas",
        "aggregation": "vllm_desired_replicas",
        "window_seconds": 60,
        "desired": {"algorithm": {"tokens_per_replica": 1000}, **spec},
    }
    if front_door is not None:
        rule["desired"]["front_door"] = front_door
    base = load_rules()
    return parse_rules(yaml.safe_dump({"rules": [*(r.model_dump() for r in base.rules), rule]}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rule kind --


def test_rule_kind_validation(seen: list[Any]) -> None:
    rules = desired_rules()
    rule = rules.by_name()["vllm_desired_replicas"]
    assert rule.desired is not None and rule.desired.algorithm == {"tokens_per_replica": 1000}
    assert not rule.offered_per_pod  # one number per selector, not per pod
    bad = [
        ({"series": ["vllm:num_requests_waiting"]}, "reads its own vLLM series"),
        ({"prometheus_query": "x{{matchers}}"}, "no prometheus_query"),
        ({"desired": {"algorithm": {"no_such_field": 1}}}, "desired.algorithm"),
        ({"desired": {"front_door": {"url": "http://gw:9090/metrics"}}}, "both 'url' and 'series'"),
        ({"desired": {"front_door": {}}}, "needs 'prometheus_query'"),
        ({"desired": {"max_selectors": 0}}, "max_selectors"),
    ]
    for extra, why in bad:
        text = yaml.safe_dump({"rules": [{"name": "d", "aggregation": "vllm_desired_replicas", **extra}]})
        with pytest.raises(RulesError, match=why):
            parse_rules(text)
    with pytest.raises(RulesError, match="'desired' only applies"):
        parse_rules(
            yaml.safe_dump({"rules": [{"name": "w", "series": ["a"], "aggregation": "sum", "desired": {}}]})
        )
    with pytest.raises(RulesError, match="'series' needs at least one"):
        parse_rules(yaml.safe_dump({"rules": [{"name": "w", "aggregation": "sum"}]}))


# -- pure parts --


def counters(prompt: float, gen: float, **kw: Any) -> desired.PodCounters:
    return desired.PodCounters(
        prompt=prompt,
        generation=gen,
        success=kw.get("success"),
        ttft=kw.get("ttft", {}),
        tpot=kw.get("tpot", {}),
        prompt_len_sum=None,
        prompt_len_count=None,
        waiting=kw.get("waiting", 0.0),
        running=0.0,
    )


def test_window_rates_per_pod_spans_resets_and_new_pods() -> None:
    h = [
        desired.Snapshot(0.0, {"a": counters(0, 0)}),
        desired.Snapshot(30.0, {"a": counters(3000, 300), "b": counters(50, 5)}),
    ]
    now = desired.Snapshot(60.0, {"a": counters(6000, 600), "b": counters(20, 2), "c": counters(9, 9)})
    r = desired.window_rates(now, h, window=60)
    assert r is not None
    # a: 6000 over its 60 s; b reset (20 < 50): counts from zero over its 30 s; c is new: not counted yet
    assert r.prompt_tokens_per_s == pytest.approx(6000 / 60 + 20 / 30)
    assert r.generation_tokens_per_s == pytest.approx(600 / 60 + 2 / 30)
    assert r.pods == 2 and r.span_s == 30.0
    # the oldest snapshot inside the window is the base; outside it, none
    assert desired.window_rates(now, h, window=20) is None
    assert desired.window_rates(desired.Snapshot(60.0, {"z": counters(1, 1)}), h, 60) is None


def test_backlog_in_tokens_and_quantiles() -> None:
    assert desired.waiting_tokens(0, None) == 0.0
    assert desired.waiting_tokens(3, 4000.0) == 12000.0  # three 4k-token prompts, not "3"
    with pytest.raises(desired.SourceUnavailable, match="prompt length"):
        desired.waiting_tokens(2, None)
    assert desired.mean_prompt_tokens(0, 0, 2048.0, 2.0) == 1024.0
    assert desired.mean_prompt_tokens(9000, 3, 2048.0, 2.0) == 3000.0  # the window's own histogram first
    assert desired.mean_prompt_tokens(0, 0, 10.0, 0.0) is None
    assert desired.quantile_or_none({}) is None
    assert desired.quantile_or_none({0.5: 0.0, math.inf: 0.0}) is None  # nothing finished: no latency
    assert desired.quantile_or_none({0.5: 10.0, 1.0: 10.0, math.inf: 10.0}) == pytest.approx(0.45)


def test_state_is_bounded_and_forgets_idle_selectors() -> None:
    s = desired.States(limit=2, idle=100)
    s.get("a", 0).explain = {"a": 1}
    s.get("b", 10)
    s.get("a", 20)  # a is now the most recently used
    s.get("c", 30)  # over the limit: b (least recent) goes
    assert s.peek("b") is None and s.peek("a") is not None and len(s) == 2
    s.get("c", 125)  # a unused since 20: idle for 105 > 100 s
    assert s.peek("a") is None and len(s) == 1


def test_prometheus_query_has_every_part() -> None:
    rule = RuleSet.model_validate(
        {"rules": [{"name": "d", "aggregation": "vllm_desired_replicas", "window_seconds": 120}]}
    ).rules[0]
    q = desired.prometheus_query(rule, "ml", parse_selector("app=vllm"))
    for part in (
        "prompt",
        "generation",
        "waiting",
        "running",
        "ttft",
        "tpot",
        "plen",
        "plen_total",
        "ready",
        "age",
    ):
        assert f'"toposcale_part", "{part}"' in q
    assert 'rate(vllm:prompt_tokens_total{namespace="ml",app="vllm"}[120s])' in q
    assert 'count(up{namespace="ml",app="vllm"} == 1)' in q


# -- scrape mode, end to end through the HTTP API --


@pytest.fixture
async def pods():
    a = VllmExporter(waiting=2, running=3)
    b = VllmExporter(waiting=1, running=3)
    for e in (a, b):
        e.prompt_tokens, e.generation_tokens, e.request_success = 0.0, 0.0, 10.0
        await e.start()
    yield a, b
    for e in (a, b):
        await e.stop()


class FrontDoor(Exporter):
    """A gateway's /metrics: pending requests per model."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0.0

    def render(self) -> str:
        return (
            "# TYPE gateway_pending_requests gauge\n"
            f'gateway_pending_requests{{model="qwen"}} {self.pending}\n'
            'gateway_pending_requests{model="other"} 99\n'
        )


async def start(serve_adapter: Any, rules: RuleSet, targets: list[Target], clock: Clock) -> Any:
    source = ScrapeSource(StaticTargets(targets), rules, ttl=0.0, timeout=1.0)
    running = await serve_adapter(rules, source, cache_ttl=0.0)
    running.app[HANDLERS_KEY].desired.clock = clock  # rates over the test's own seconds
    return running


def tgt(e: Exporter, pod: str, namespace: str = "ml", app: str = "vllm") -> Target:
    return Target(e.url, namespace, pod, {"namespace": namespace, "pod": pod, "app": app})


async def test_scrape_mode_rates_backlog_and_debug(serve_adapter: Any, pods: Any, seen: list[Any]) -> None:
    a, b = pods
    clock = Clock()
    rules = desired_rules()
    adapter = await start(serve_adapter, rules, [tgt(a, "vllm-a"), tgt(b, "vllm-b")], clock)
    path = f"{BASE}/namespaces/ml/vllm_desired_replicas"
    # the first reading has no rate yet: an error the HPA sees (it holds), not 0
    status, body = await adapter.get(path, labelSelector="app=vllm")
    assert status == 503 and "two readings" in body["message"], body
    clock.now += 15
    for e in (a, b):
        e.prompt_tokens, e.generation_tokens = 15 * 1500.0, 15 * 300.0
    status, body = await adapter.get(path, labelSelector="app=vllm")
    assert status == 200, body
    obs = seen[-1]
    # 1500 + 1500 prompt tokens/s, 300 + 300 generated; 3 waiting x mean prompt (22500 / 10 requests)
    assert obs.prompt_tokens_per_s == pytest.approx(3000) and obs.generation_tokens_per_s == pytest.approx(
        600
    )
    assert obs.waiting_tokens == pytest.approx(3 * 22500 / 10)
    assert obs.ready == 2 and obs.starting == 0 and obs.front_door_pending is None
    want = math.ceil((3000 + 600 + 3 * 2250 / 10) / 1000)
    assert body["items"][0]["value"] == str(want) and body["items"][0]["window"] == 15
    # the reasons, on the debug endpoint
    status, dbg = await adapter.get(
        "/debug/desired", namespace="ml", labelSelector="app=vllm", rule="vllm_desired_replicas"
    )
    assert status == 200 and dbg["answer"] == {"code": 200, "value": float(want)}, dbg
    ex = dbg["explain"]
    assert ex["desiredReplicas"] == want and ex["inputs"]["ready"] == 2
    assert ex["decision"]["demand_tokens_per_s"] == pytest.approx(3000 + 600 + 675)
    status, _ = await adapter.get("/debug/desired", namespace="ml", rule="vllm_requests_waiting")
    assert status == 404
    status, _ = await adapter.get("/debug/desired", rule="vllm_desired_replicas")
    assert status == 400
    # a pod failing below min_answered_share: an error naming it, never a smaller count
    a.mode = b.mode = "error"
    clock.now += 15
    status, body = await adapter.get(path, labelSelector="app=vllm")
    assert status == 503 and "all 2 targets failed" in body["message"], body
    status, dbg = await adapter.get(
        "/debug/desired", namespace="ml", labelSelector="app=vllm", rule="vllm_desired_replicas"
    )
    assert dbg["answer"]["code"] == 503 and "all 2 targets failed" in dbg["explain"]["error"]


async def test_zero_pods_needs_a_front_door(serve_adapter: Any, pods: Any, seen: list[Any]) -> None:
    a, _ = pods
    clock = Clock()
    path = f"{BASE}/namespaces/ml/vllm_desired_replicas"
    # no front door configured and no pod selected: an error, never 0
    adapter = await start(serve_adapter, desired_rules(), [tgt(a, "vllm-a")], clock)
    status, body = await adapter.get(path, labelSelector="app=none")
    assert status == 503 and "no desired.front_door is configured" in body["message"], body
    gw = FrontDoor()
    await gw.start()
    try:
        rules = desired_rules(
            {"url": gw.url, "series": "gateway_pending_requests", "labels": {"model": "qwen"}}
        )
        adapter = await start(serve_adapter, rules, [tgt(a, "vllm-a")], clock)
        status, body = await adapter.get(path, labelSelector="app=none")
        assert status == 200 and body["items"][0]["value"] == "0", body  # the gateway says: nothing pending
        assert seen[-1].front_door_pending == 0 and seen[-1].ready == 0
        gw.pending = 7
        status, body = await adapter.get(path, labelSelector="app=none")
        assert status == 200 and body["items"][0]["value"] == "1", body
        assert seen[-1].front_door_pending == 7  # the other model's 99 is not this workload's
        gw.mode = "error"  # the front door cannot be read: an error, not "no demand"
        status, body = await adapter.get(path, labelSelector="app=none")
        assert status == 503 and "front door" in body["message"] and "HTTP 500" in body["message"], body
    finally:
        await gw.stop()
