"""`toposcale simulate autoscale`: the JSON shape the issue gives, the table, bad input: one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toposcale.autoscale.traces import load_trace
from toposcale.cli import main

KEYS = {
    "slo_attainment",
    "gpu_hours",
    "gpu_hours_vs_clairvoyant",
    "ttft_p90_s",
    "tpot_p90_s",
    "aborted",
    "pending_replica_minutes",
    "scale_ups",
    "scale_downs",
}


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four minutes of the Azure conversation trace, as a CSV of its own."""
    base = load_trace("azure-conv")
    p = tmp_path_factory.mktemp("t") / "conv4.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    rows += [
        f"{t:.3f},{pr},{o}" for t, pr, o in zip(base.t, base.prompt, base.output, strict=True) if t < 240
    ]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_json_has_the_issues_shape(small_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "simulate",
            "autoscale",
            "--trace",
            str(small_trace),
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--policies",
            "toposcale,clairvoyant,toposcale-example",
            "--cold-start",
            "30",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["trace"] == "conv4.csv" and doc["profile"] == "h100-tp1"
    assert set(doc["policies"]) == {"toposcale", "clairvoyant", "toposcale-example"}
    for s in doc["policies"].values():
        assert KEYS <= set(s)
        assert 0 <= s["slo_attainment"] <= 1
    assert doc["policies"]["clairvoyant"]["gpu_hours_vs_clairvoyant"] == pytest.approx(1.0)
    assert "seed 1" in err  # progress on stderr


def test_table_names_profile_and_policies(small_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "simulate",
            "autoscale",
            "--trace",
            str(small_trace),
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--policies",
            "clairvoyant,seed-gpu-memory",
            "--profile",
            "rtx4090d-tp4",
            "--rate-scale",
            "1",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    assert "rtx4090d-tp4 (derived)" in out and "| seed-gpu-memory |" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "hpa-cpu"], "unknown policy hpa-cpu"),
        (["--profile", "a100-tp8"], "unknown profile 'a100-tp8'"),
        (["--rate-scale", "-2"], "must be above 0"),
        (["--seeds", "0"], "must be at least 1"),
        (["--trace", "/no/such.csv"], "no such file"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        code = main(["simulate", "autoscale", *args])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err and err.count("\n") == 1


def test_a_file_in_the_wrong_format_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,12,3\nnot-a-time,1,1\n")
    assert main(["simulate", "autoscale", "--trace", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv line 3" in err and err.count("\n") == 1


def test_plot_writes_a_figure(small_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "t.png"
    code = main(
        [
            "simulate",
            "autoscale",
            "--trace",
            str(small_trace),
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--policies",
            "clairvoyant,toposcale",
            "--rate-scale",
            "2",
            "--plot",
            str(png),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
