"""Fixtures for the simulator's tests: fleets built from the real `nvidia-smi topo -m` outputs in
tests/fixtures/topologies (each headed by its source line), and hand-written pod sequences."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from toposcale.simulate.fleet import Fleet, load_fleet
from toposcale.simulate.workload import PodSpec

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = ROOT / "tests" / "fixtures" / "topologies"
EXAMPLES = ROOT / "examples" / "fleets"
TOPOSCALE = Path(sys.executable).parent / "toposcale"  # the installed console script


@pytest.fixture
def make_fleet(tmp_path: Path) -> Callable[..., Path]:
    """Write a fleet file whose topologies are copies of real ones beside it (paths relative to the file)."""

    def make(**counts: int) -> Path:
        topo_dir = tmp_path / "topologies"
        topo_dir.mkdir(exist_ok=True)
        lines = ["nodes:"]
        for stem, count in counts.items():
            name = stem.replace("_", "-")
            shutil.copy(TOPOLOGIES / f"{name}.txt", topo_dir / f"{name}.txt")
            lines.append(f"  - topology: topologies/{name}.txt\n    count: {count}")
        path = tmp_path / "fleet.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


@pytest.fixture
def fleet_of(make_fleet: Callable[..., Path]) -> Callable[..., Fleet]:
    def build(**counts: int) -> Fleet:
        return load_fleet(make_fleet(**counts))

    return build


def in_order(*sizes: int) -> list[PodSpec]:
    """Pods arriving one second apart, in this order, that never leave during the run."""
    return [PodSpec(name=f"p{i}", arrival=float(i), gpus=k, duration=1e9) for i, k in enumerate(sizes)]
