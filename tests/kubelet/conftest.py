"""The fixture of the real-kubelet tests: a thin wrapper of lab/kube/real_fleet.py (what runs, and why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.kube.real_fleet import RealFleet, start_real_fleet
from lab.peers.deployed import Deployed


@pytest.fixture(scope="package")
def real_fleet(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealFleet]:
    with start_real_fleet(deployed, tmp_path_factory.mktemp("real-kubelet")) as fleet:
        yield fleet
