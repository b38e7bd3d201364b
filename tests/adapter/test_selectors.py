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
