"""Files a person points the agent at (--from-topo-file, --from-capture) are read bounded: a FIFO or a device
(/dev/zero) is refused without blocking, a huge (sparse) file without being read into memory."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from toposcale.extender.agent.observe import MAX_TOPO_FILE_BYTES, ObserveError, observe_topology

from toposcale.cli import main

from .conftest import X4


def _observe_in_thread(**kw: str) -> BaseException | None:
    """observe_topology(**kw) in a daemon thread: a regression that blocks fails the test, not the session."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            observe_topology(**kw)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert outcome, "reading the file blocked"
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "topo.fifo"
    os.mkfifo(path)  # nobody ever writes: opening it for a blocking read would wait forever
    return str(path)


@pytest.mark.parametrize("option", ["topo_file", "capture"])
def test_fifo_is_refused_without_blocking(fifo: str, option: str) -> None:
    exc = _observe_in_thread(**{option: fifo})
    assert isinstance(exc, ObserveError) and "not a regular file" in str(exc)


@pytest.mark.parametrize("option", ["topo_file", "capture"])
def test_dev_zero_is_refused(option: str) -> None:
    exc = _observe_in_thread(**{option: "/dev/zero"})
    assert isinstance(exc, ObserveError) and "not a regular file" in str(exc)


@pytest.mark.parametrize("option", ["topo_file", "capture"])
def test_huge_sparse_file_is_refused_before_reading(tmp_path: Path, option: str) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: no disk used, but read_bytes() would allocate all of it
    exc = _observe_in_thread(**{option: str(big)})
    assert isinstance(exc, ObserveError) and str(1 << 30) in str(exc)


def test_a_file_just_over_the_bound_is_refused_and_one_within_is_read(tmp_path: Path) -> None:
    text = (X4 / "topo_m.txt").read_text()
    ok = tmp_path / "ok.txt"
    ok.write_text(text + " " * (MAX_TOPO_FILE_BYTES - len(text.encode()) - 1) + "\n")
    assert len(observe_topology(topo_file=str(ok)).topology) == 4
    over = tmp_path / "over.txt"
    over.write_text(text + " " * (MAX_TOPO_FILE_BYTES - len(text.encode()) + 1))
    with pytest.raises(ObserveError, match="larger than"):
        observe_topology(topo_file=str(over))


def test_missing_file_is_a_clear_error() -> None:
    with pytest.raises(ObserveError, match="No such file"):
        observe_topology(topo_file="/nonexistent/topo.txt")


def test_cli_once_with_dev_zero_exits_1_with_one_clear_line(capsys) -> None:
    rc = main(["agent", "--once", "--from-topo-file", "/dev/zero"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "not a regular file" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "capture",
    [
        {"format": "toposcale-nvml-capture/1", "devices": "x", "device_count": {"value": 1}},
        {"format": "toposcale-nvml-capture/1", "devices": [1], "device_count": {"value": 1}},
        {"format": "toposcale-nvml-capture/1", "device_count": {"value": "a"}},
        {"format": "toposcale-nvml-capture/1", "device_count": 5},
        {"format": "toposcale-nvml-capture/1", "device_count": {"value": 10**9}},
        [],
    ],
    ids=["devices-str", "device-int", "count-str", "count-bare", "count-huge", "list"],
)
def test_malformed_capture_is_one_clear_error(tmp_path: Path, capture: object) -> None:
    import json

    path = tmp_path / "capture.json"
    path.write_text(json.dumps(capture))
    exc = _observe_in_thread(capture=str(path))
    assert isinstance(exc, ObserveError), exc
    assert str(path) in str(exc) or "GPUs" in str(exc)
