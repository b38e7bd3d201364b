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
    "app in (vllm", "app=vllm,", ",app=vllm", "=vllm", "app=vllm=x", "app vllm", "!", "!app=x",
    "app in vllm", "a>1", "a<1", "Bad.Prefix/x=y", "-bad=x", "app=-bad", "app=" + "x" * 64, "k" * 64,
    "app=(x)", "a,,b", "app notin (a b)", "/x=y", "x" * 5000,
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


# labels.Parse's own cases (k8s.io/apimachinery/pkg/labels/selector_test.go: TestSetSelectorParser,
# TestSelectorParse, TestLexer*) as (selector, requirements as (key, op, values)); the HPA's selector reaches
# the adapter as labels.Parse reads it, so these must parse to the same requirements (issue 19, item 4b).
GO_VALID = [
    ("", []),
    ("\rx", [("x", "exists", ())]),
    ("this-is-a-dns.domain.com/key-with-dash", [("this-is-a-dns.domain.com/key-with-dash", "exists", ())]),
    ("this-is-another-dns.domain.com/key-with-dash in (so,what)",
     [("this-is-another-dns.domain.com/key-with-dash", "in", ("so", "what"))]),
    ("0.1.2.domain/99 notin (10.10.100.1, tick.tock.clock)",
     [("0.1.2.domain/99", "notin", ("10.10.100.1", "tick.tock.clock"))]),
    ("foo  in\t (abc)", [("foo", "in", ("abc",))]),
    ("x notin\n (abc)", [("x", "notin", ("abc",))]),
    ("x  notin\t\t\t(abc,def)", [("x", "notin", ("abc", "def"))]),
    ("x in (abc,)", [("x", "in", ("", "abc"))]),
    ("x in ()", [("x", "in", ("",))]),
    ("x notin (abc,,def),bar,z in (),w",
     [("x", "notin", ("", "abc", "def")), ("bar", "exists", ()), ("z", "in", ("",)), ("w", "exists", ())]),
    ("x,y in (a)", [("x", "exists", ()), ("y", "in", ("a",))]),
    ("x notin ( )", [("x", "notin", ("",))]),
    ("x notin (, )", [("x", "notin", ("",))]),
    ("a ", [("a", "exists", ())]),
    ("a in (x,y,notin, z,in)", [("a", "in", ("in", "notin", "x", "y", "z"))]),
    ("x=", [("x", "=", ("",))]),
    ("x= ", [("x", "=", ("",))]),
    ("x=,z= ", [("x", "=", ("",)), ("z", "=", ("",))]),
    ("x= ,z= ", [("x", "=", ("",)), ("z", "=", ("",))]),
    ("x==a", [("x", "=", ("a",))]),
    ("!x", [("x", "!", ())]),
    ("! x", [("x", "!", ())]),
    # keywords are keys and values wherever a key or a value is expected
    ("notin=in", [("notin", "=", ("in",))]),
    ("in=x", [("in", "=", ("x",))]),
    ("in", [("in", "exists", ())]),
    ("!notin", [("notin", "!", ())]),
    ("in in (in)", [("in", "in", ("in",))]),
    ("notin notin (notin,in)", [("notin", "notin", ("in", "notin"))]),
    ("x!=in", [("x", "!=", ("in",))]),
    ("x in (,)", [("x", "in", ("",))]),
    ("x in (,a)", [("x", "in", ("", "a"))]),
    ("x in (a,,,b)", [("x", "in", ("", "a", "b"))]),
    # two empty values before ")": the second comma is read again by the next turn (issue 24)
    ("app in (qwen,,)", [("app", "in", ("", "qwen"))]),
    ("app in (,,)", [("app", "in", ("",))]),
    ("x notin (a, ,)", [("x", "notin", ("", "a"))]),
    ("x in (,a,,b,,)", [("x", "in", ("", "a", "b"))]),
    # Go's lexer reads byte 0 as the end of the string where a token starts
    ("x=a \x00junk", [("x", "=", ("a",))]),
    ("x=a,\x00y", [("x", "=", ("a",)), ("y", "exists", ())]),  # inside a token it is only skipped
]
GO_INVALID = [
    "x=a||y=b", "x==a==b", "!x=a", "x<a", "x,,y", ",x,y", "x nott in (y)", "a in (xyz),",
    "a in (xyz)b notin ()", "a in (xyz abc)", "a notin(", "a (", "(", "x in", "x in (", "x notin )", "!",
    "!!x", "x!", "x=a,", "x=(a)", "x in (a b)", "x in (a=b)", "x>=1", "x=a\x00junk",
    # only space, tab, CR and LF are whitespace to labels.Parse; anything else is part of a word
    "\x0bx", "x=a\x0c", "x\xa0=a", "x=a\u2003",
]


@pytest.mark.parametrize(("text", "want"), GO_VALID, ids=[repr(t) for t, _ in GO_VALID])
def test_selectors_labels_parse_accepts(text: str, want: list[tuple[str, str, tuple[str, ...]]]) -> None:
    got = [(r.key, r.op, r.values) for r in parse_selector(text).requirements]
    assert got == want


@pytest.mark.parametrize("text", GO_INVALID, ids=repr)
def test_selectors_labels_parse_refuses(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


@pytest.mark.parametrize("text", ["x>1", "x<7", "x>1,z<5"])
def test_gt_lt_parse_but_are_a_clear_refusal(text: str) -> None:
    with pytest.raises(SelectorError, match="not supported for external metrics"):
        parse_selector(text)


@pytest.mark.parametrize(("text", "labels", "matches"), [
    ("x in ()", {"x": ""}, True), ("x in ()", {"x": "a"}, False), ("x in ()", {}, False),
    ("x notin ( )", {"x": ""}, False), ("x notin ( )", {"x": "a"}, True), ("x notin ( )", {}, True),
    ("notin=in", {"notin": "in"}, True), ("notin=in", {"notin": "x"}, False),
    ("in", {"in": "x"}, True), ("!in", {"in": "x"}, False),
])
def test_selectors_labels_parse_accepts_match_as_kubernetes(
    text: str, labels: dict[str, str], matches: bool
) -> None:
    assert parse_selector(text).matches(labels) is matches


async def test_the_adapter_answers_selectors_labels_parse_accepts(rules, serve_adapter) -> None:
    from toposcale.adapter.sources.pods import StaticTargets, Target
    from toposcale.adapter.sources.scrape import ScrapeSource

    from lab.peers.exporters import VllmExporter

    async with VllmExporter(waiting=3) as e:
        labels = {"namespace": "ml", "pod": "p0", "app": "vllm", "in": "x"}
        source = ScrapeSource(StaticTargets([Target(e.url, "ml", "p0", labels)]), rules, ttl=0.0)
        adapter = await serve_adapter(rules, source)
        for selector, value in [("app=vllm,in", "3"), ("notin=in,app", None), ("app notin ( )", "3"),
                                ("app in ()", None), ("in in (x),app", "3"), ("app in (vllm,,)", "3"),
                                ("app in (,,)", None), ("app notin (chat, ,)", "3")]:
            code, body = await adapter.metric("vllm_requests_waiting", selector=selector)
            assert code == 200, (selector, body)
            assert [i["value"] for i in body["items"]] == ([value] if value else []), selector
        code, body = await adapter.metric("vllm_requests_waiting", selector="app>1")
        assert (code, body["kind"], body["reason"]) == (400, "Status", "BadRequest")
        assert "not supported" in body["message"]
