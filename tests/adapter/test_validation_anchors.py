"""Every validation matches the whole text: a pattern anchored `^...$` and applied with `re.match` also takes
a trailing newline (`$` matches before one), so `ml\\n` was a namespace (issue 19, item 4)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from toposcale.adapter.rules import RulesError, parse_rules
from toposcale.adapter.security.options import go_duration
from toposcale.adapter.selectors import SelectorError, validate_key, validate_value
from toposcale.adapter.sources.pods import StaticTargets, Target, TargetSpec
from toposcale.adapter.sources.scrape import ScrapeSource

from lab.peers.exporters import VllmExporter


@pytest.mark.parametrize("namespace", ["ml%0A", "ml%0D%0A", "%0Aml", "ml%0Aother"])
async def test_a_namespace_with_a_newline_is_400(rules, serve_adapter, namespace: str) -> None:
    async with VllmExporter(waiting=3) as e:
        source = ScrapeSource(StaticTargets([Target(e.url, "ml", "p0", {"namespace": "ml", "pod": "p0"})]),
                              rules, ttl=0.0)
        adapter = await serve_adapter(rules, source)
        code, body = await adapter.metric("vllm_requests_waiting", namespace=namespace)
        assert (code, body["kind"], body["reason"]) == (400, "Status", "BadRequest"), body
        assert "invalid namespace" in body["message"]
        code, body = await adapter.metric("vllm_requests_waiting", namespace="ml")
        assert code == 200 and body["items"][0]["value"] == "3"


@pytest.mark.parametrize(("field", "value"), [
    ("name", "a\n"), ("series", ["x\n"]), ("denominator", ["x\n"]), ("namespace_label", "namespace\n"),
    ("pod_label", "pod\n"), ("gpu_owner", {"owner_series": "x\n"}), ("gpu_owner", {"pod_label": "pod\n"}),
    ("gpu_owner", {"namespace_label": "namespace\n"}),
])
def test_rules_fields_with_a_trailing_newline_are_refused(field: str, value: object) -> None:
    rule = {"name": "a", "series": ["x"], "aggregation": "sum", field: value}
    if field == "denominator":
        rule["aggregation"] = "ratio"
    parse_rules(json.dumps({"rules": [{**rule, field: _clean(value)}]}), "rules.yaml")  # valid without it
    with pytest.raises(RulesError):
        parse_rules(json.dumps({"rules": [rule]}), "rules.yaml")  # JSON is YAML


def _clean(value: object) -> object:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return [v.strip() for v in value]
    return {k: v.strip() for k, v in value.items()}  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["app\n", "example.com\n/app", "example.com/app\n", "\napp"])
def test_label_keys_with_a_newline_are_refused(key: str) -> None:
    with pytest.raises(SelectorError):
        validate_key(key)


@pytest.mark.parametrize("value", ["vllm\n", "vllm\r\n", "\nvllm"])
def test_label_values_with_a_newline_are_refused(value: str) -> None:
    with pytest.raises(SelectorError):
        validate_value(value)


@pytest.mark.parametrize(("url", "labels"), [
    ("http://127.0.0.1:8000/metrics\n", {"namespace": "ml", "pod": "p"}),
    ("http://127.0.0.1:8000/metrics", {"namespace": "ml\n", "pod": "p"}),
    ("http://127.0.0.1:8000/metrics", {"namespace": "ml", "pod": "p", "app\n": "x"}),
])
def test_scrape_targets_with_a_newline_are_refused(url: str, labels: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        TargetSpec(url=url, labels=labels)


@pytest.mark.parametrize("text", ["\u0661\u0660s", "10s\n5m"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        go_duration(text)
