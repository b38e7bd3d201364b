"""Generated workloads and CSV traces."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from toposcale.simulate.workload import (
    DEFAULT_MIX,
    WorkloadError,
    generate,
    load_trace,
    parse_mix,
    parse_trace,
)


def test_default_mix_is_dominated_by_4_gpu_pods_and_offers_the_asked_load() -> None:
    pods = generate(20_000, seed=1, fleet_gpus=1000, load=0.9, mean_duration=3600)
    share = {k: sum(p.gpus == k for p in pods) / len(pods) for k in (1, 2, 4)}
    assert share[4] == pytest.approx(DEFAULT_MIX[4], abs=0.02)
    assert share[1] == pytest.approx(DEFAULT_MIX[1], abs=0.02)
    assert share[2] == pytest.approx(DEFAULT_MIX[2], abs=0.02)
    span = pods[-1].arrival - pods[0].arrival
    offered = sum(p.gpus * p.duration for p in pods) / span / 1000  # GPU-seconds asked per second per GPU
    assert offered == pytest.approx(0.9, rel=0.05)
    assert all(a.arrival <= b.arrival for a, b in itertools.pairwise(pods))


def test_the_same_mix_written_in_another_order_draws_the_same_pods() -> None:
    a = generate(300, seed=5, fleet_gpus=64, mix=parse_mix("4:0.7,2:0.15,1:0.15"))
    assert generate(300, seed=5, fleet_gpus=64, mix=parse_mix("1:0.15,4:0.7,2:0.15")) == a
    assert generate(300, seed=5, fleet_gpus=64) == a  # the default mix is that one
    assert generate(300, seed=6, fleet_gpus=64) != a


def test_mix_parsing() -> None:
    assert parse_mix("4:7, 2:2 ,1:1") == {1: 0.1, 2: 0.2, 4: 0.7}
    for bad, msg in [
        ("4", "GPUS:WEIGHT"),
        ("x:1", "integer"),
        ("4:0", "positive"),
        ("4:1,4:2", "twice"),
        ("65:1", "1 to 64"),
        ("", "empty"),
    ]:
        with pytest.raises(WorkloadError, match=msg):
            parse_mix(bad)


def test_trace_columns_in_any_order_rows_sorted_by_time(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("pod,gpus,time,duration\nb,4,20,100\na,2,5.5,30\n\nc,1,20,1\n")
    pods = load_trace(path)
    assert [(p.name, p.arrival, p.gpus, p.duration) for p in pods] == [
        ("a", 5.5, 2, 30.0),
        ("b", 20.0, 4, 100.0),
        ("c", 20.0, 1, 1.0),
    ]
    assert [p.name for p in load_trace(path, limit=2)] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("", "empty; expected the header"),
        ("t,pod,gpus,duration\n", "lacks time"),
        ("time,pod,gpus,duration\n", "no pods"),
        ("time,pod,gpus,duration\n1,a,4\n", "line 2: 3 fields"),
        ("time,pod,gpus,duration\n1,a,four,10\n", "line 2: gpus 'four'"),
        ("time,pod,gpus,duration\n1,a,0,10\n", "line 2: gpus '0'"),
        # str.isdigit() accepts these: a superscript two and an Arabic-Indic four
        ("time,pod,gpus,duration\n1,a,\u00b2,10\n", "line 2: gpus '\u00b2' must be an integer"),
        ("time,pod,gpus,duration\n1,a,\u0664,10\n", "line 2: gpus '\u0664' must be an integer"),
        ("time,pod,gpus,duration\n-1,a,1,10\n", "line 2: time"),
        ("time,pod,gpus,duration\n1,a,1,0\n", "line 2: duration"),
        ("time,pod,gpus,duration\n1,a,1,nan\n", "line 2: duration"),
        ("time,pod,gpus,duration\n1,a,1,1\n2,a,1,1\n", "line 3: pod 'a' appears twice"),
        ("time,pod,gpus,duration\n1,,1,1\n", "empty pod name"),
    ],
)
def test_bad_traces_name_the_line(text: str, msg: str) -> None:
    with pytest.raises(WorkloadError, match=msg):
        parse_trace(text, what="t.csv")


def test_generate_rejects_nonsense() -> None:
    with pytest.raises(WorkloadError, match="pods must be"):
        generate(0, seed=1, fleet_gpus=8)
    with pytest.raises(WorkloadError, match="load"):
        generate(10, seed=1, fleet_gpus=8, load=0)
    with pytest.raises(WorkloadError, match="mean duration"):
        generate(10, seed=1, fleet_gpus=8, mean_duration=float("inf"))
