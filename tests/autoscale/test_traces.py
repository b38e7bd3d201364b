"""Trace loading: both formats detected from the content, the shipped files, a bad line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from toposcale.autoscale.traces import SHIPPED, TraceError, load_trace, parse_trace, replay

CSV = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
)
JSONL = (
    '{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]}\n'
    '{"timestamp": 1500, "input_length": 10, "output_length": 5}\n'
)


def test_azure_csv_with_seven_fractional_digits() -> None:
    t = parse_trace(CSV, "x.csv")
    assert t.t == (0.0, pytest.approx(4.314579, abs=1e-6))
    assert t.prompt == (374, 396) and t.output == (44, 109)


def test_mooncake_jsonl_milliseconds() -> None:
    t = parse_trace(JSONL, "y.jsonl")
    assert t.t == (0.0, 1.5) and t.prompt == (6758, 10)


def test_format_is_detected_not_taken_from_the_name(tmp_path: Path) -> None:
    p = tmp_path / "trace.txt"
    p.write_text(JSONL)
    assert len(load_trace(str(p))) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CSV + "2023-11-16 18:15:51,abc,3\n", "line 4: prompt tokens 'abc' is not a number"),
        (CSV + "yesterday,1,3\n", "line 4: timestamp 'yesterday'"),
        ("time,foo\n1,2\n", "line 1: header"),
        (JSONL + "{not json\n", "line 3: not JSON"),
        (JSONL + '{"timestamp": 5, "input_length": 3}\n', "line 3: missing 'output_length'"),
        ('{"timestamp": -5, "input_length": 3, "output_length": 1}\n', "line 1: timestamp -5"),
        ("", "empty"),
    ],
)
def test_a_bad_line_is_named(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace(text, "bad")


def test_missing_file_lists_the_shipped_ones() -> None:
    with pytest.raises(TraceError, match="azure-conv"):
        load_trace("/no/such/trace.csv")


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_traces_load(name: str) -> None:
    t = load_trace(name)
    assert len(t) > 8000 and 3000 < t.span_s < 3600
    assert list(t.t) == sorted(t.t)


def test_replay_scales_the_rate_and_keeps_the_hour() -> None:
    base = load_trace("azure-code")
    double = replay(base, 2.0, seed=1)
    assert len(double) == 2 * len(base)
    assert double.span_s <= base.span_s + 1e-6
    part = replay(base, 1.5, seed=1)
    assert 1.4 * len(base) < len(part) < 1.6 * len(base)
    assert replay(base, 1.5, seed=1).t == part.t and replay(base, 1.5, seed=2).t != part.t
    with pytest.raises(ValueError):
        replay(base, -1.0, seed=1)
