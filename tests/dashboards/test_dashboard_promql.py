"""Every PromQL expression in the dashboards parses (promql-parser, the Rust port of Prometheus' parser)."""

from __future__ import annotations

import promql_parser
import pytest

from .conftest import ALL_QUERIES, Query, substitute


@pytest.mark.parametrize("query", ALL_QUERIES, ids=[f"{q.dashboard}:{q.where}" for q in ALL_QUERIES])
def test_expression_parses(query: Query) -> None:
    expr = substitute(query.expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    promql_parser.parse(expr)


@pytest.mark.parametrize("query", ALL_QUERIES, ids=[f"{q.dashboard}:{q.where}" for q in ALL_QUERIES])
def test_expression_parses_with_a_selected_value_that_needs_escaping(query: Query) -> None:
    # A model served as "Qwen/Qwen2.5-7B-Instruct" or a pod name selected in a drop-down: Grafana escapes
    # regex characters; the result must still be valid PromQL.
    names = {"namespace", "model_name", "pod", "node", "gpu", "hpa"}
    expr = substitute(query.expr, {n: "Qwen/Qwen2.5-7B-Instruct (a|b)" for n in names})
    promql_parser.parse(expr)


def test_the_parser_rejects_what_prometheus_rejects() -> None:
    # guards the test above against a parser that accepts anything
    for bad in ("sum by (pod) (rate(vllm:num_preemptions_total[1m])", "rate(x)", "x{a=~}"):
        with pytest.raises(ValueError):
            promql_parser.parse(bad)
