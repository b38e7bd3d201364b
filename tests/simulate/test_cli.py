"""`toposcale simulate` as a user runs it: the installed console script, real files, output and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toposcale import cli
from toposcale.simulate.extender_api import SCORING

from .conftest import EXAMPLES, ROOT, TOPOLOGIES, TOPOSCALE

POLICY_KEYS = {
    "placed": int,
    "pending": int,
    "nvlink_share": float,
    "pcie_switch_share": float,
    "host_bridge_share": float,
    "numa_share": float,
    "sys_share": float,
    "single_numa_share": float,
    "best_tier_share": float,
    "cross_socket_share": float,
    "first_4gpu_miss_load": (float, type(None)),  # null: no 4-GPU pod ever missed ("never")
    "utilization_mean": float,
    "stranded_gpus_mean": float,
    "decisions_per_s": float,
}


def simulate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOPOSCALE), "simulate", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_acceptance_command_prints_the_json_shape_of_issue_6() -> None:
    p = simulate("--fleet", "examples/fleets/mixed-100.yaml", "--pods", "2000", "--seed", "1", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # exactly one JSON object on stdout
    assert list(doc) == ["policies"]
    assert list(doc["policies"]) == ["toposcale", "spread", "binpack", "random"]
    for name, pol in doc["policies"].items():
        assert list(pol) == list(POLICY_KEYS), name
        for key, typ in POLICY_KEYS.items():
            assert isinstance(pol[key], typ), (name, key, pol[key])
        assert pol["placed"] + pol["pending"] == 2000
        for key in ("single_numa_share", "best_tier_share", "cross_socket_share"):
            assert 0.0 <= pol[key] <= 1.0
        assert pol["stranded_gpus_mean"] >= 0 and pol["decisions_per_s"] > 0
    assert "[####" in p.stderr  # the progress bar goes to stderr, never into the JSON


def test_json_carries_every_figure_the_table_prints() -> None:
    # The README's 45.9 % vs 35.6 % NVLink share, `4-GPU miss@` and util were in the table only.
    args = ("--fleet", "examples/fleets/nvlink-pairs.yaml", "--pods", "500", "--seed", "3", "--no-progress")
    table, doc = simulate(*args), simulate(*args, "--json")
    assert table.returncode == 0 and doc.returncode == 0, table.stderr + doc.stderr
    policies = json.loads(doc.stdout)["policies"]
    columns = {"nvlink": "nvlink_share", "pcie-sw": "pcie_switch_share", "host-br": "host_bridge_share",
               "numa": "numa_share", "sys": "sys_share", "1-NUMA": "single_numa_share",
               "x-socket": "cross_socket_share", "best": "best_tier_share",
               "4-GPU miss@": "first_4gpu_miss_load", "util": "utilization_mean"}
    lines = table.stdout.splitlines()
    head = lines[1].replace("4-GPU miss@", "4-GPU_miss@").split()
    for line in lines[3:7]:
        row = dict(zip(head, line.split(), strict=False))
        pol = policies[row["policy"]]
        assert (int(row["placed"]), int(row["pending"])) == (pol["placed"], pol["pending"])
        assert float(row["stranded"]) == round(pol["stranded_gpus_mean"], 1)
        for column, key in columns.items():
            shown = row[column.replace(" ", "_")]
            if pol[key] is None:
                assert shown == "never", (row["policy"], column, shown)
            else:  # the table shows 1 decimal of a percentage, the JSON 4 decimals of the share
                assert abs(float(shown.rstrip("%")) - 100 * pol[key]) <= 0.05 + 1e-9, (row["policy"], column)


def test_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sim.png"
    fleet = EXAMPLES / "nvlink-pairs.yaml"
    p = simulate("--fleet", str(fleet), "--pods", "500", "--seed", "3", "--plot", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"fleet {fleet}: 60 nodes, 360 GPUs; 500 pods")
    assert lines[1].split()[:3] == ["policy", "placed", "pending"]
    assert [ln.split()[0] for ln in lines[3:7]] == ["toposcale", "spread", "binpack", "random"]
    assert "[####" not in p.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 400


def test_trace_input(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("time,pod,gpus,duration\n0,a,2,100\n1,b,1,100\n2,c,4,100\n")
    topo = TOPOLOGIES / "a100-4gpu-bridged-pairs-two-sockets.txt"
    (tmp_path / "fleet.yaml").write_text(f"nodes:\n  - topology: {topo}\n    count: 2\n")
    p = simulate(
        "--fleet",
        "fleet.yaml",
        "--trace",
        str(trace),
        "--json",
        "--policies",
        "toposcale,spread",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["policies"]
    assert (doc["toposcale"]["placed"], doc["toposcale"]["pending"]) == (3, 0)
    assert (doc["spread"]["placed"], doc["spread"]["pending"]) == (2, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fleet", "nowhere.yaml"], "fleet: cannot read nowhere.yaml"),
        (["--fleet", "examples/fleets/mixed-100.yaml", "--trace", "nowhere.csv"], "nowhere.csv: cannot read"),
        (["--fleet", "examples/fleets/mixed-100.yaml", "--mix", "4:x"], "mix entry '4:x'"),
        (["--fleet", "examples/fleets/mixed-100.yaml", "--load", "-1"], "load must be"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args: list[str], message: str) -> None:
    p = simulate(*args)
    assert p.returncode == 2
    assert p.stdout == ""
    # Once: a JSON error log line saying the same beside it was the same error twice.
    errors = [ln for ln in p.stderr.splitlines() if not ln.startswith("{") or '"level": "error"' in ln]
    assert errors == [f"toposcale simulate: error: {errors[0].split(': error: ', 1)[1]}"]
    assert message in errors[0]


def test_a_unicode_digit_in_a_trace_exits_2_naming_the_line(tmp_path: Path) -> None:
    # "²" passes str.isdigit(), and int() refused it with a traceback
    trace = tmp_path / "trace.csv"
    trace.write_text("time,pod,gpus,duration\n0,a,2,100\n1,b,\u00b2,100\n", encoding="utf-8")
    p = simulate("--fleet", "examples/fleets/mixed-100.yaml", "--trace", str(trace), "--no-progress")
    assert p.returncode == 2
    assert p.stdout == ""
    assert f"toposcale simulate: error: {trace}: line 3: gpus '\u00b2' must be an integer 1..64" in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_arguments_are_refused_by_the_parser() -> None:
    for args in (["--policies", "toposcale,fifo"], ["--pods", "0"], ["--extender-weight", "x"]):
        p = simulate("--fleet", "examples/fleets/mixed-100.yaml", *args)
        assert p.returncode == 2 and "error: argument" in p.stderr, args


def test_without_the_extender_scoring_the_toposcale_policy_says_what_is_missing(monkeypatch, capsys) -> None:
    # The simulator has no copy of the scoring: with the module gone, it names it rather than guessing.
    monkeypatch.setitem(sys.modules, SCORING, None)
    code = cli.main(
        ["simulate", "--fleet", str(EXAMPLES / "mixed-100.yaml"), "--pods", "10", "--no-progress"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{SCORING} is not available" in err


def test_a_trace_is_replayed_whole_unless_pods_is_given(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("time,pod,gpus,duration\n" + "".join(f"{i},p{i},1,5\n" for i in range(2500)))
    fleet = EXAMPLES / "pcie-only.yaml"
    for extra, total in (([], 2500), (["--pods", "100"], 100)):
        p = simulate("--fleet", str(fleet), "--trace", str(trace), "--json", "--policies", "spread", *extra)
        assert p.returncode == 0, p.stderr
        pol = json.loads(p.stdout)["policies"]["spread"]
        assert pol["placed"] + pol["pending"] == total


def test_an_unwritable_plot_path_fails_before_the_run(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "x.png"
    p = simulate("--fleet", "examples/fleets/mixed-100.yaml", "--plot", str(out))
    assert p.returncode == 2
    assert "is not a folder" in p.stderr and "[####" not in p.stderr


def test_plot_without_matplotlib_names_the_extra_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # matplotlib is the `plot` extra: a plain `pip install toposcale` (and the image) has no figures to draw.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )
    out = tmp_path / "x.png"
    rc = cli.main(["simulate", "--fleet", str(EXAMPLES / "mixed-100.yaml"), "--plot", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "pip install 'toposcale[plot]'" in err
    assert not out.exists()


def test_a_fleet_nested_too_deeply_exits_2_naming_the_file(tmp_path: Path) -> None:
    # issue 28: 10^5 nested brackets printed a 2,996-line RecursionError traceback
    fleets = {
        "deep.yaml": "[" * 5000 + "]" * 5000,
        "deep-topo.yaml": "nodes:\n- {topology: t.json, count: 1}\n",
    }
    for name, text in fleets.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "t.json").write_text("{" + '"a":[' * 5000 + "]" * 5000 + "}", encoding="utf-8")
    for name, what in (("deep.yaml", "nested too deeply"), ("deep-topo.yaml", "t.json")):
        p = simulate("--fleet", str(tmp_path / name), "--no-progress")
        assert p.returncode == 2, p.stderr[-500:]
        assert "Traceback" not in p.stderr
        (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("toposcale simulate: error: ")]
        assert what in line and (name in line or "t.json" in line), line
