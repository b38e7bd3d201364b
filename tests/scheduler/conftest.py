"""The fixtures of the real-scheduler tests: thin wrappers of lab/peers/scheduler.py (what runs, and why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.peers.deployed import Deployed
from lab.peers.scheduler import Fleet, fleet_namespace, start_fleet


@pytest.fixture(scope="package")
def fleet(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with start_fleet(deployed, tmp_path_factory.mktemp("scheduler-fleet")) as f:
        yield f


@pytest.fixture
def ns(fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own; its pods are deleted afterwards and the fleet left idle again."""
    with fleet_namespace(fleet, request.node.name, request.node.nodeid) as name:
        yield name
