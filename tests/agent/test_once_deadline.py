"""`toposcale agent --once` runs NVML discovery under the service's deadline (--discovery-timeout): a hung
driver call ends the run with one clear error (exit 1) instead of hanging it.

The hang is the real 4x H100 capture replayed by a backend whose device_count blocks (test_service's double
for a driver call that never returns); everything else is the unmodified CLI path."""

from __future__ import annotations

import json

import pytest
from toposcale.extender.agent import replay
from toposcale.extender.agent.observe import ObserveError, observe_topology_within

from toposcale.cli import main

from .conftest import X4
from .test_service import _HangingReplay


async def test_hung_discovery_is_abandoned_at_the_deadline() -> None:
    backend = _HangingReplay()
    try:
        with pytest.raises(ObserveError, match=r"longer than 0\.2s"):
            await observe_topology_within(0.2, backend=backend)
    finally:
        backend.release.set()


async def test_discovery_within_the_deadline_returns_the_observation() -> None:
    obs = await observe_topology_within(30, capture=str(X4 / "nvml_capture.json"))
    assert len(obs.topology) == 4 and obs.topology.links[0][1] == "NV18"


async def test_errors_inside_the_thread_reach_the_caller() -> None:
    with pytest.raises(ObserveError, match="not a regular file"):
        await observe_topology_within(30, topo_file="/dev/zero")


def test_once_with_hung_nvml_exits_1_with_the_deadline_in_the_error(capsys, monkeypatch, tmp_path) -> None:
    backend = _HangingReplay()
    monkeypatch.setattr(replay.ReplayBackend, "from_file", classmethod(lambda cls, path: backend))
    try:
        rc = main(["agent", "--once", "--from-capture", str(X4 / "nvml_capture.json"),
                   "--discovery-timeout", "0.3", "--pod-resources-socket", str(tmp_path / "k.sock")])
    finally:
        backend.release.set()
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    line = json.loads(err.strip().splitlines()[-1])
    assert "longer than 0.3s" in line["error"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_discovery_timeout_must_be_positive(capsys, value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agent", "--once", "--discovery-timeout", value])
    assert exit_.value.code == 2 and "argument --discovery-timeout" in capsys.readouterr().err
