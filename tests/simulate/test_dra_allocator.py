"""`toposcale simulate --allocator dra-first-fit`: kube-scheduler's DRA allocator picks the GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from toposcale.extender.topology.allocator import mask_of
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.topo_text import parse_topo_text

from toposcale.simulate.extender_api import dra_choice, dra_node_score

ROOT = Path(__file__).resolve().parents[2]
TOPO = ROOT / "tests" / "fixtures" / "topologies"


def test_dra_choice_is_first_free_in_slice_order():
    t = parse_topo_text((TOPO / "dgx-a100-nvswitch-8gpu.txt").read_text())
    free = 0xFF & ~mask_of([0, 2])
    assert dra_choice(t, free, 4) == (mask_of([1, 3, 4, 5]),)
    assert dra_choice(t, mask_of([6, 7]), 4) == ()
    # The extender's score of that set: crossing sockets scores below a set on one socket.
    assert dra_node_score(t, free, 4) < dra_node_score(t, 0xFF, 4)
    assert synth.first_fit_mask(t, 0xFF, 2) == 0b11


def test_cli_dra_rows(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"nodes:\n  - {{topology: {TOPO / 'dgx-a100-nvswitch-8gpu.txt'}, count: 6}}\n"
        f"  - {{topology: {TOPO / 'a6000-8gpu-nvlink-bridge-pairs.txt'}, count: 6}}\n"
    )
    base = [
        sys.executable,
        "-m",
        "toposcale.cli",
        "simulate",
        "--fleet",
        str(fleet),
        "--pods",
        "300",
        "--no-progress",
    ]
    r = subprocess.run([*base, "--allocator", "dra-first-fit"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "allocator dra-first-fit" in r.stdout
    assert any(line.startswith("toposcale ") for line in r.stdout.splitlines())
    assert any(line.startswith("spread ") for line in r.stdout.splitlines())
    j = subprocess.run(
        [*base, "--allocator", "dra-first-fit", "--json"], capture_output=True, text=True, timeout=120
    )
    doc = json.loads(j.stdout)
    assert set(doc["policies"]) == {"toposcale", "spread", "binpack", "random"}
    bad = subprocess.run([*base, "--allocator", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
