"""Property-based fuzzing of the adapter's HTTP API (hypothesis; issue 19, item 7).

Random label selectors (from the selector grammar, keys and values with every character class, and raw
text), namespaces and metric names (any text, percent-encoded into the path) go to the real aiohttp app over
a targets list of in-test vLLM exporters, served from a background thread so each example is one plain HTTP
call. Properties: a bad input is never a 5xx and every error is a metav1.Status whose code is the HTTP code;
a 200 is an ExternalMetricValueList of at most one item; and every selector the adapter accepts becomes
PromQL that parses (promql-parser), for every rule shape. Bounded: a few hundred examples per property, no
example database. TOPOSCALE_FUZZ_EXAMPLES=N runs N examples per property instead (a deeper
local run).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import promql_parser
import pytest
from aiohttp import web
from hypothesis import event, given, settings
from hypothesis import strategies as st
from toposcale.adapter.desired_inputs import prometheus_query as desired_query
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.promql import combined_query
from toposcale.adapter.rules import GpuOwner, Rule, RuleSet, load_rules
from toposcale.adapter.selectors import SelectorError, parse_selector
from toposcale.adapter.server import build_app
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter

EXAMPLES = int(os.environ.get("TOPOSCALE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None)
BASE = "/apis/external.metrics.k8s.io/v1beta1"
# Rules whose valid requests always have a value over live exporters (no quantile window, no GPU exporter)
RULES = RuleSet(rules=[r for r in load_rules().rules if r.name in (
    "vllm_requests_waiting", "vllm_requests_running", "vllm_kv_cache_usage")])
LABELS = {"app": ["vllm", "chat"], "app.kubernetes.io/name": ["qwen", ""], "tier": ["a", "b"]}


class Background:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url, self.session = self.run(self._start())

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> tuple[str, aiohttp.ClientSession]:
        self.exporters = [VllmExporter(waiting=i + 1, kv_cache=0.1 * (i + 1)) for i in range(3)]
        for e in self.exporters:
            await e.start()
        targets = []
        for i, e in enumerate(self.exporters):
            for ns in ("ml", "prod-1"):
                labels = {"namespace": ns, "pod": f"p{i}", "app": LABELS["app"][i % 2],
                          "app.kubernetes.io/name": "qwen", "tier": "ab"[i % 2]}
                targets.append(Target(e.url, ns, f"p{i}", labels))
        source = ScrapeSource(StaticTargets(targets), RULES, ttl=30, timeout=2)
        app = build_app(RULES, source, metrics=AdapterMetrics(), cache_ttl=30)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}", aiohttp.ClientSession()

    def get(self, raw_path: str) -> tuple[int, str, Any]:
        async def go() -> tuple[int, str, Any]:
            from yarl import URL

            async with self.session.get(URL(self.url + raw_path, encoded=True)) as r:
                raw = await r.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                return r.status, r.headers.get("Content-Type", ""), body
        return self.run(go())  # type: ignore[no-any-return]

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()
            for e in self.exporters:
                await e.stop()
        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def bg() -> Iterator[Background]:
    b = Background()
    yield b
    b.close()


# --- strategies ------------------------------------------------------------------------------------------

ANY_TEXT = st.text(max_size=24)
NAME_CHARS = st.sampled_from([*"abcxyz019-_./", "\n", " ", "\t", "\x00", "é", "Ä", "%", "\\", '"'])
KEYS = st.one_of(st.sampled_from([*LABELS, "in", "notin", "x", "a/b", "example.com/k", "-a", "a-",
                                   "A" * 64, "a" * 63, "k8s.io/", "/x"]),
                 st.text(NAME_CHARS, min_size=0, max_size=12))
VALUES = st.one_of(st.sampled_from(["vllm", "chat", "qwen", "", "a", "b", "in", "x" * 63, "x" * 64]),
                   st.text(NAME_CHARS, max_size=12), st.text(max_size=6))
SPACE = st.sampled_from(["", " ", "  ", "\t", "\n", "\r", "\x0b"])


@st.composite
def requirement(draw: st.DrawFn) -> str:
    key, sp = draw(KEYS), draw(SPACE)
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!", ">", "<", "=~", "!in"]))
    if op == "exists":
        return key
    if op == "!":
        return f"!{sp}{key}"
    if op in ("in", "notin", "!in"):
        values = draw(st.lists(VALUES, max_size=4))
        sep = draw(st.sampled_from([",", ", ", " ,"]))
        close = draw(st.sampled_from([")", ")", "", "))"]))
        return f"{key} {op}{sp}({sep.join(values)}{close}"
    return f"{key}{sp}{op}{draw(SPACE)}{draw(VALUES)}"


@st.composite
def valid_requirement(draw: st.DrawFn) -> str:
    """Requirements on the targets' own labels, as an HPA writes them: these select pods, or none."""
    key = draw(st.sampled_from(list(LABELS)))
    values = draw(st.lists(st.sampled_from([*LABELS[key], "other"]), min_size=1, max_size=3))
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    if op == "exists":
        return key
    if op == "!":
        return f"!{key}"
    if op in ("in", "notin"):
        return f"{key} {op} ({','.join(values)})"
    return f"{key}{op}{values[0]}"


SELECTORS = st.one_of(
    st.lists(valid_requirement(), min_size=1, max_size=3).map(",".join),
    st.lists(requirement(), min_size=1, max_size=4).map(",".join),
    st.lists(requirement(), min_size=1, max_size=3).flatmap(
        lambda rs: st.sampled_from([",", ",,", " , "]).map(lambda s: s.join(rs))),
    ANY_TEXT,
)
NAMESPACES = st.one_of(st.sampled_from(["ml", "prod-1"]),
                       st.sampled_from(["absent", "ML", "ml\n", "-ml", "a" * 63, "a" * 64, "ml%0A", ".."]),
                       ANY_TEXT)
METRICS = st.one_of(st.sampled_from([*(r.name for r in RULES.rules), "VLLM_Requests_Waiting"]),
                    st.sampled_from(["vllm_time_to_first_token_p90", "nope", "x" * 300, "a/b", ""]), ANY_TEXT)


def is_status(code: int, body: Any) -> bool:
    return (isinstance(body, dict) and body.get("kind") == "Status" and body.get("apiVersion") == "v1"
            and body.get("status") == "Failure" and body.get("code") == code
            and isinstance(body.get("reason"), str) and isinstance(body.get("message"), str))


def check(code: int, ctype: str, body: Any) -> None:
    event(f"HTTP {code}")
    assert "application/json" in ctype, (code, ctype, body)
    assert code < 500, (code, body)  # every input here is the caller's: a 400/404, never the adapter's 5xx
    if code == 200:
        assert body["kind"] == "ExternalMetricValueList" and len(body["items"]) <= 1, body
    else:
        assert code in (400, 404, 405, 414, 431), (code, body)
        assert is_status(code, body), (code, body)


# --- properties ------------------------------------------------------------------------------------------


@FUZZ
@given(namespace=NAMESPACES, metric=METRICS, selector=st.one_of(st.none(), SELECTORS))
def test_metric_requests(bg: Background, namespace: str, metric: str, selector: str | None) -> None:
    path = f"{BASE}/namespaces/{quote(namespace, safe='')}/{quote(metric, safe='')}"
    if selector is not None:
        path += "?labelSelector=" + quote(selector, safe="")
    check(*bg.get(path))


@FUZZ
@given(selector=SELECTORS)
def test_selectors_on_a_served_metric(bg: Background, selector: str) -> None:
    code, ctype, body = bg.get(f"{BASE}/namespaces/ml/vllm_requests_waiting?labelSelector="
                               + quote(selector, safe=""))
    check(code, ctype, body)
    try:
        parse_selector(selector)
    except SelectorError:
        assert (code, body["reason"]) == (400, "BadRequest"), (selector, body)
    else:
        assert code == 200, (selector, body)


@settings(max_examples=EXAMPLES // 2, deadline=None, database=None)
@given(path=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_any_path_is_a_status(bg: Background, path: list[str]) -> None:
    code, ctype, body = bg.get("/" + "/".join(quote(p, safe="") for p in path))
    if code == 200:
        return  # /healthz, /apis, ... exist
    check(code, ctype, body)


PROMQL_RULES = [
    *load_rules().rules,
    Rule(name="exported", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
         gpu_owner=GpuOwner(namespace_label="exported_namespace", pod_label="exported_pod")),
    Rule(name="custom", series=["x"], aggregation="sum", prometheus_query="sum(x{{matchers}})"),
]


@FUZZ
@given(selector=SELECTORS, namespace=st.sampled_from(["ml", "a" * 63, "prod-1"]))
def test_every_accepted_selector_is_valid_promql(selector: str, namespace: str) -> None:
    try:
        parsed = parse_selector(selector)
    except SelectorError:
        return
    for rule in PROMQL_RULES:
        if rule.aggregation == "vllm_desired_replicas":  # its own query (adapter/desired.py)
            query = desired_query(rule, namespace, parsed)
        else:
            query = combined_query(rule, namespace, parsed)
        try:
            promql_parser.parse(query)
        except Exception as exc:
            raise AssertionError(f"{rule.name}: {selector!r} -> {query!r}: {exc}") from exc
