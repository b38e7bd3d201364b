"""The nowcast yardstick (toposcale/autoscale/nowcast.py): it must never see a later window (else it is a
second clairvoyant, and the claim "no reactive policy meets the goal here" would be false), and the report
shows the setting the rule picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toposcale.autoscale.nowcast import GRID, Nowcast, Setting, pick
from toposcale.autoscale.traces import load_trace
from toposcale.cli import main


def _decisions(counts: list[int], setting: Setting, upto_s: float) -> list[int]:
    p = Nowcast(counts, setting, max_replicas=50)
    return [p.decide(t, None) for t in range(0, int(upto_s), 5)]


@pytest.mark.parametrize("setting", GRID)
def test_a_later_window_never_changes_an_earlier_decision(setting: Setting) -> None:
    counts = [2, 3, 9, 4, 1, 1, 7, 2, 2, 3]
    for w in range(1, len(counts)):
        changed = counts[:w] + [c + 5 for c in counts[w:]]
        # every decision before window w starts is the same whatever windows w.. need
        assert _decisions(counts, setting, w * 60) == _decisions(changed, setting, w * 60)


def test_hold_keeps_the_largest_recent_need_and_extra_adds_headroom() -> None:
    counts = [2, 8, 1, 1, 1, 1, 1, 1]
    p = Nowcast(counts, Setting(hold=2, extra=1), max_replicas=6)
    assert p.decide(30, None) == 3  # window 0: 2 + 1
    assert p.decide(61, None) == 6  # window 1: 8 + 1, cut at max_replicas
    assert p.decide(3 * 60 + 1, None) == 6  # window 3 still holds window 1's 8 (two windows back)
    assert p.decide(4 * 60 + 1, None) == 2  # window 4: 1 + 1, window 1 is out of the hold
    assert p.decide(10_000, None) == 2  # past the end: the last window's need


def _s(att: float, gpu_h: float) -> dict[str, float]:
    return {"slo_attainment": att, "gpu_hours": gpu_h, "gpu_hours_vs_clairvoyant": gpu_h / 10.0}


def test_pick_takes_the_cheapest_setting_that_meets_the_target() -> None:
    grid = {"a": _s(0.995, 14.0), "b": _s(0.991, 11.0), "c": _s(0.97, 9.0)}
    key, info = pick(grid, target=0.99, goal_ratio=1.15)
    assert key == "b" and info["goal_reachable"] and info["meeting_goal"] == ["b"]
    key, info = pick(grid, target=0.993, goal_ratio=1.15)
    assert key == "a" and not info["goal_reachable"]  # meets the target, but at 1.4x


def test_pick_without_a_setting_meeting_the_target_takes_the_best_attainment() -> None:
    grid = {"a": _s(0.95, 14.0), "b": _s(0.97, 12.0), "c": _s(0.97, 11.0)}
    key, info = pick(grid, target=0.99, goal_ratio=1.15)
    assert key == "c" and not info["goal_reachable"] and info["meeting_goal"] == []


def test_the_report_has_a_nowcast_row_its_setting_and_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = load_trace("azure-code")
    p = tmp_path / "code3.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [f"{t:.3f},{a},{o}" for t, a, o in zip(base.t, base.prompt, base.output, strict=True) if t < 180]
    p.write_text("\n".join(rows) + "\n")
    args = ["simulate", "autoscale", "--trace", str(p), "--seeds", "1", "--jobs", "1", "--cold-start", "30"]
    assert main([*args, "--policies", "clairvoyant,nowcast", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["policies"]) == ["clairvoyant", "nowcast"]
    row = doc["policies"]["nowcast"]
    assert row["setting"] == doc["nowcast"]["setting"] in {g.key for g in GRID}
    assert set(doc["nowcast"]["grid"]) == {g.key for g in GRID}
    chosen = doc["nowcast"]["grid"][row["setting"]]
    assert chosen["slo_attainment"] == pytest.approx(row["slo_attainment"])
    assert main([*args, "--policies", "nowcast"]) == 0
    assert "nowcast (knows each minute's need when it starts, not later)" in capsys.readouterr().out


def test_the_frontier_plot_draws_every_trace(tmp_path: Path) -> None:
    """`bench_autoscale.py --plot`: one panel per report, a point far below the goal drawn on the edge."""
    from toposcale.autoscale.plot import plot_frontier

    def rep(trace: str) -> dict:
        pol = {"clairvoyant": _s(0.99, 10.0), "toposcale": _s(0.94, 12.7), "dynamo-throughput": _s(0.3, 4.0)}
        grid = {g.key: _s(0.9 + 0.01 * g.hold, 10.0 + g.extra) for g in GRID}
        return {
            "trace": trace,
            "profile": "h100-tp1",
            "attainment_target": 0.99,
            "policies": pol,
            "nowcast": {"grid": grid},
        }

    out = tmp_path / "frontier.png"
    plot_frontier([rep("a"), rep("b"), rep("c"), rep("d")], 1.15, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
