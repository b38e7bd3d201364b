"""vllm_desired_replicas plumbing (adapter/desired.py): the rule kind, the readings it takes in scrape and
Prometheus mode, the per-selector state and its bounds, the errors instead of made-up values, and
/debug/desired. The decision is toposcale.autoscale.desired's (tested with the benchmark), spied on here to
check what the adapter hands it."""

from __future__ import annotations

import asyncio
import math
import os
import types
from typing import Any

import pytest
import yaml
from toposcale.adapter import desired, desired_config, desired_inputs
from toposcale.adapter.api import VALUES_KEY
from toposcale.adapter.rules import RulesError, RuleSet, load_rules, parse_rules
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.prometheus import PrometheusSource
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import Exporter, VllmExporter
from lab.peers.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob
from toposcale.autoscale import desired as algo

BASE = "/apis/external.metrics.k8s.io/v1beta1"


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The Observations the adapter hands the algorithm (the real toposcale.autoscale.desired, spied on)."""
    out: list[Any] = []

    def decide(cfg: Any, state: Any, obs: Any) -> Any:
        out.append(obs)
        return algo.decide(cfg, state, obs)

    spy = types.SimpleNamespace(**{k: getattr(algo, k) for k in dir(algo) if not k.startswith("__")})
    spy.decide = decide
    monkeypatch.setattr(desired, "_algo", lambda: spy)
    return out


PRIOR = {"prompt_tokens_s": 10_000.0, "generation_tokens_s": 2_000.0}


def expected(obs: Any) -> Any:
    """The algorithm's first decision on `obs` (what a fresh selector's state gives)."""
    return algo.decide(desired_config.make_config({"prior": PRIOR}), algo.DesiredState(), obs)


def desired_rules(front_door: dict[str, Any] | None = None, window: int = 60, **spec: Any) -> RuleSet:
    rule: dict[str, Any] = {
        "name": "vllm_desired_replicas",
        "aggregation": "vllm_desired_replicas",
        "window_seconds": window,
        "desired": {"algorithm": {"prior": PRIOR}, **spec},
    }
    if front_door is not None:
        rule["desired"]["front_door"] = front_door
    base = [r.model_dump() for r in load_rules().rules if r.name != "vllm_desired_replicas"]
    return parse_rules(yaml.safe_dump({"rules": [*base, rule]}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rule kind --


def test_rule_kind_validation(seen: list[Any]) -> None:
    rules = desired_rules()
    rule = rules.by_name()["vllm_desired_replicas"]
    assert rule.desired is not None and rule.desired.algorithm == {"prior": PRIOR}
    assert not rule.offered_per_pod  # one number per selector, not per pod
    bad = [
        ({"series": ["vllm:num_requests_waiting"]}, "reads its own vLLM series"),
        ({"prometheus_query": "x{{matchers}}"}, "no prometheus_query"),
        ({"desired": {"algorithm": {"no_such_field": 1}}}, "desired.algorithm"),
        ({"desired": {"algorithm": {"ttft_slo_s": 0}}}, "ttft_slo_s must be positive"),
        ({"desired": {"algorithm": {"prior": 5}}}, "prior: expected"),
        ({"desired": {"algorithm": {"profile": "no-such"}}}, "unknown profile 'no-such'"),
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


def counters(prompt: float, gen: float, **kw: Any) -> desired_inputs.PodCounters:
    return desired_inputs.PodCounters(
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
        desired_inputs.Snapshot(0.0, {"a": counters(0, 0)}),
        desired_inputs.Snapshot(30.0, {"a": counters(3000, 300), "b": counters(50, 5)}),
    ]
    now = desired_inputs.Snapshot(60.0, {"a": counters(6000, 600), "b": counters(20, 2), "c": counters(9, 9)})
    r = desired_inputs.window_rates(now, h, window=60)
    assert r is not None
    # a: 6000 over its 60 s; b reset (20 < 50): counts from zero over its 30 s; c is new: not counted yet
    assert r.prompt_tokens_per_s == pytest.approx(6000 / 60 + 20 / 30)
    assert r.generation_tokens_per_s == pytest.approx(600 / 60 + 2 / 30)
    assert r.pods == 2 and r.span_s == 30.0
    # the oldest snapshot inside the window is the base; outside it, none
    assert desired_inputs.window_rates(now, h, window=20) is None
    assert desired_inputs.window_rates(desired_inputs.Snapshot(60.0, {"z": counters(1, 1)}), h, 60) is None


def test_backlog_in_tokens_and_quantiles() -> None:
    assert desired_inputs.waiting_tokens(0, None) == 0.0
    assert desired_inputs.waiting_tokens(3, 4000.0) == 12000.0  # three 4k-token prompts, not "3"
    with pytest.raises(desired.SourceUnavailable, match="prompt length"):
        desired_inputs.waiting_tokens(2, None)
    assert desired_inputs.mean_prompt_tokens(0, 0, 2048.0, 2.0) == 1024.0
    # the window's own histogram first
    assert desired_inputs.mean_prompt_tokens(9000, 3, 2048.0, 2.0) == 3000.0
    assert desired_inputs.mean_prompt_tokens(0, 0, 10.0, 0.0) is None
    assert desired_inputs.quantile_or_none({}) is None
    assert desired_inputs.quantile_or_none({0.5: 0.0, math.inf: 0.0}) is None  # nothing finished: no latency
    assert desired_inputs.quantile_or_none({0.5: 10.0, 1.0: 10.0, math.inf: 10.0}) == pytest.approx(0.45)


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
    q = desired_inputs.prometheus_query(rule, "ml", parse_selector("app=vllm"))
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
        "down",
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
    running.app[VALUES_KEY].desired.clock = clock  # rates over the test's own seconds
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
        e.prompt_tokens, e.generation_tokens = 15 * 7500.0, 15 * 1500.0
    status, body = await adapter.get(path, labelSelector="app=vllm")
    assert status == 200, body
    obs = seen[-1]
    # 2 x 7500 prompt tokens/s, 2 x 1500 generated, over the 15 s between the readings; 3 waiting; the
    # mean prompt (no prompt-length histogram in this vLLM's text): 225000 prompt tokens / 20 requests
    assert obs.prompt_tokens_rate == pytest.approx(15000) and obs.generation_tokens_rate == pytest.approx(
        3000
    )
    assert obs.waiting_requests == 3 and obs.mean_prompt_tokens == pytest.approx(11250)
    assert (obs.ready_replicas, obs.starting_replicas, obs.front_door_pending) == (2, 0, None)
    assert obs.t == clock.now
    decision = expected(obs)
    # 15000/10000 + 3000/2000 = 3 replicas busy, plus the backlog, at 80% each: 4
    assert decision.replicas == 4 and decision.demand == pytest.approx(3.0)
    assert body["items"][0]["value"] == "4" and body["items"][0]["window"] == 15
    # the reasons, on the debug endpoint
    status, dbg = await adapter.get(
        "/debug/desired", namespace="ml", labelSelector="app=vllm", rule="vllm_desired_replicas"
    )
    assert status == 200 and dbg["answer"] == {"code": 200, "value": 4.0}, dbg
    ex = dbg["explain"]
    assert ex["desiredReplicas"] == 4 and ex["inputs"]["ready"] == 2
    assert ex["inputs"]["waiting_tokens"] == pytest.approx(3 * 11250)
    assert ex["decision"] == decision.as_dict()
    for key in ("demand", "capacity_prompt_tokens_per_s", "forecast", "headroom", "backlog", "reasons"):
        assert key in ex["decision"]
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
        assert seen[-1].front_door_pending == 0 and seen[-1].ready_replicas == 0
        gw.pending = 7
        status, body = await adapter.get(path, labelSelector="app=none")
        assert status == 200 and body["items"][0]["value"] == "1", body
        assert seen[-1].front_door_pending == 7  # the other model's 99 is not this workload's
        gw.mode = "error"  # the front door cannot be read: an error, not "no demand"
        status, body = await adapter.get(path, labelSelector="app=none")
        assert status == 503 and "front door" in body["message"] and "HTTP 500" in body["message"], body
    finally:
        await gw.stop()


# -- Prometheus mode: the real Prometheus runs the generated query --


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason="needs the Debian prometheus package")
async def test_prometheus_mode_reads_rates_ready_pods_and_the_front_door(
    serve_adapter: Any, seen: list[Any]
) -> None:
    a, b = VllmExporter(waiting=2, running=3), VllmExporter(waiting=0, running=3)
    gw = FrontDoor()
    for e in (a, b):
        e.prompt_tokens, e.generation_tokens, e.request_success = 0.0, 0.0, 10.0
    for e in (a, b, gw):
        await e.start()
    prom = PrometheusServer(
        [
            ScrapeJob("vllm-a", [a.address], {"namespace": "ml", "pod": "vllm-a", "app": "vllm"}),
            ScrapeJob("vllm-b", [b.address], {"namespace": "ml", "pod": "vllm-b", "app": "vllm"}),
            ScrapeJob("gateway", [gw.address], {"namespace": "ml", "pod": "gateway-0"}),
        ]
    )

    async def grow() -> None:  # 1000 prompt and 200 generated tokens per second on each pod, by the clock
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            await asyncio.sleep(0.05)
            for e in (a, b):
                e.prompt_tokens = 1000.0 * (loop.time() - start)
                e.generation_tokens = 200.0 * (loop.time() - start)

    task = asyncio.create_task(grow())
    try:
        await asyncio.to_thread(prom.start)
        await asyncio.to_thread(prom.wait_scraped, ["vllm-a", "vllm-b", "gateway"])
        front = {"prometheus_query": 'sum(gateway_pending_requests{namespace="{namespace}",model="qwen"})'}
        rules = desired_rules(front, window=5)
        source = PrometheusSource(prom.url, timeout=5)
        adapter = await serve_adapter(rules, source, cache_ttl=0.0)
        path = f"{BASE}/namespaces/ml/vllm_desired_replicas"
        scraped = min(a.scrapes, b.scrapes)
        for _ in range(200):  # the window (5 s) full of moving samples
            if min(a.scrapes, b.scrapes) >= scraped + 5:
                break
            await asyncio.sleep(0.2)
        status, body = await adapter.get(path, labelSelector="app=vllm")
        assert status == 200, body
        obs = seen[-1]
        assert (obs.ready_replicas, obs.waiting_requests, obs.running_requests) == (2, 2, 6)
        assert 1500 < obs.prompt_tokens_rate < 2500, obs  # 2000/s, as Prometheus' rate() extrapolates it
        assert 300 < obs.generation_tokens_rate < 500, obs
        assert obs.front_door_pending == 0  # the gateway is read too: pending requests add to the backlog
        assert obs.mean_prompt_tokens is not None and obs.mean_prompt_tokens > 0
        # no pod selected: the front door is the demand
        gw.pending = 4
        for _ in range(50):
            status, body = await adapter.get(path, labelSelector="app=none")
            if status == 200 and seen[-1].front_door_pending == 4:
                break
            await asyncio.sleep(0.2)
        assert status == 200 and body["items"][0]["value"] == "1", body
        assert seen[-1].ready_replicas == 0
        # the pods' /metrics failing: Prometheus marks them down; an error naming them, not "no pod" (which
        # would leave the decision to the front door alone)
        a.mode = b.mode = "error"
        for _ in range(50):
            status, body = await adapter.get(path, labelSelector="app=vllm")
            if status == 503:
                break
            await asyncio.sleep(0.2)
        assert status == 503 and "all 2 targets failed" in body["message"], body
        assert "ml/vllm-a: Prometheus cannot scrape it (up == 0)" in body["message"], body
        # Prometheus gone: an error, never 0
        await asyncio.to_thread(prom.stop)
        status, body = await adapter.get(path, labelSelector="app=vllm")
        assert status == 503, body
    finally:
        task.cancel()
        await asyncio.to_thread(prom.stop)
        for e in (a, b, gw):
            await e.stop()
