"""Kubernetes label selector syntax, and its PromQL form checked with a real PromQL parser (promql-parser)."""

from __future__ import annotations

import re

import promql_parser
import pytest
from toposcale.adapter.selectors import SelectorError, parse_selector, prometheus_label_name

POD = {"app": "vllm", "tier": "gpu", "example.com/model": "qwen2.5-7b"}


@pytest.mark.parametrize(("text", "matches"), [
    ("", True), ("app=vllm", True), ("app==vllm", True), ("app=chat", False), ("app!=chat", True),
    ("missing!=x", True), ("app in (chat,vllm)", True), ("app in (chat)", False), ("app notin (chat)", True),
    ("missing notin (a)", True), ("app", True), ("missing", False), ("!missing", True), ("!app", False),
    ("app=vllm,tier=gpu", True), ("app=vllm, tier=cpu", False), ("example.com/model=qwen2.5-7b", True),
    ("  app = vllm ,  tier in ( gpu , cpu )  ", True), ("app in (vllm,)", True), ("x=in", False),
    ("tier in (notin)", False),
])
def test_matches_like_kubernetes(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(POD) is matches


@pytest.mark.parametrize("text", [
    "app in (vllm", "app in ()", "app=vllm,", ",app=vllm", "=vllm", "app=vllm=x", "app vllm", "!", "!app=x",
    "app in vllm", "a>1", "a<1", "Bad.Prefix/x=y", "-bad=x", "app=-bad", "app=" + "x" * 64, "k" * 64,
    "app=(x)", "in=x", "a,,b", "app notin (a b)", "/x=y", "x" * 5000,
])
def test_invalid_selectors_raise(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


def test_promql_matchers_are_valid_promql_with_the_same_meaning() -> None:
    sel = parse_selector("app in (vllm,chat.v2),tier!=cpu,example.com/model,!canary,zone notin (a),k=v")
    matchers = sel.promql_matchers()
    assert matchers == [
        'app=~"chat\\\\.v2|vllm"', 'tier!="cpu"', 'example_com_model!=""', 'canary=""', 'zone!~"a"', 'k="v"',
    ]
    expr = promql_parser.parse("up{" + ",".join(matchers) + "}")
    by_name = {m.name: m for m in expr.matchers.matchers}
    assert set(by_name) == {"app", "tier", "example_com_model", "canary", "zone", "k"}
    # Prometheus anchors regex matchers: the set means exactly these values, "." taken literally
    pattern = re.compile(by_name["app"].value)
    assert pattern.fullmatch("chat.v2") and pattern.fullmatch("vllm")
    assert not pattern.fullmatch("chatxv2") and not pattern.fullmatch("vllm2")


def test_prometheus_label_names_follow_service_discovery_mapping() -> None:
    assert prometheus_label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert prometheus_label_name("9lives") == "_9lives"


def test_string_form_reparses_to_the_same_selector() -> None:
    sel = parse_selector("b notin (y,x),a,!c,d=e")
    assert parse_selector(str(sel)) == sel


def _requirement_texts(key: str) -> list[str]:
    """Every requirement form on `key` over the values "", "a", "c.d" (sets: every non-empty subset)."""
    values = ["", "a", "c.d"]
    sets = [[v for i, v in enumerate(values) if mask >> i & 1] for mask in range(1, 8)]
    return ([f"{key}{op}{v}" for op in ("=", "!=") for v in values]
            + [f"{key} {op} ({','.join(s) if s != [''] else ','})" for op in ("in", "notin") for s in sets]
            + [key, f"!{key}"])


def _promql_selects(expr: str, labels: dict[str, str]) -> bool:
    """What Prometheus selects: matchers parsed by promql-parser, an absent label read as "", regexes
    anchored."""
    out = True
    for m in promql_parser.parse(expr).matchers.matchers:
        value = labels.get(m.name, "")
        op = m.op
        if op == promql_parser.MatchOp.Equal:
            out &= value == m.value
        elif op == promql_parser.MatchOp.NotEqual:
            out &= value != m.value
        elif op == promql_parser.MatchOp.Re:
            out &= re.fullmatch(m.value, value) is not None
        else:
            out &= re.fullmatch(m.value, value) is None
    return out


def test_promql_form_selects_exactly_the_series_the_series_filter_selects() -> None:
    """Every requirement form (empty values in sets included) and every pair of them over two keys, against
    every series: the PromQL matchers select a series iff `Selector.matches` (the direct-scrape filter) does.
    Series carry no empty label values, as Prometheus stores none."""
    label_values = [None, "a", "c.d", "x"]
    series = [{k: v for k, v in (("app", a), ("tier", t)) if v is not None}
              for a in label_values for t in label_values]
    texts = [f"{a},{t}" for a in _requirement_texts("app") for t in _requirement_texts("tier")]
    assert len(texts) == 22 * 22
    for text in texts:
        sel = parse_selector(text)
        expr = "up{" + ",".join(sel.promql_matchers()) + "}"
        for labels in series:
            assert _promql_selects(expr, labels) == sel.matches(labels), (text, expr, labels)


@pytest.mark.parametrize(("text", "matchers"), [
    ("app in (vllm,)", ['app=~"|vllm"', 'app!=""']),
    ("app notin (vllm,)", ['app!~"vllm"']),
    ("app notin (,)", ['app=~".*"']),
    ("app=", ['app=""', 'app!=""']),
    ("app!=", ['app=~".*"']),
])
def test_empty_values_in_the_promql_form(text: str, matchers: list[str]) -> None:
    assert parse_selector(text).promql_matchers() == matchers
