"""`toposcale demo` end to end: the real adapter and extender as child processes, simulated vLLM replicas and
dcgm-exporters on loopback, the HPA and scheduler loops. No Kubernetes API is involved (the demo runs the
extender standalone and the adapter on a static, re-read targets file), so the API stand-in is not needed.

One short run (20 s at 30x = 10 simulated minutes) is shared by the story assertions; a second run is
interrupted with SIGINT to check that everything it started goes away.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab.procs import pid_alive

pytestmark = pytest.mark.slow

CMD = [sys.executable, "-m", "toposcale.cli", "demo"]
STARTED = re.compile(r"^started (\w+): pid (\d+), http://127\.0\.0\.1:(\d+)", re.M)


def port_free(port: int) -> bool:
    """Nothing listens there: a new server (SO_REUSEADDR, as servers bind) can take it. Connections the
    demo closed may linger in TIME_WAIT; they hold no listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def assert_all_gone(pids: list[int], ports: list[int]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if pid_alive(p)] == []
    assert [p for p in ports if not port_free(p)] == []


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("demo")
    summary, plot = tmp / "summary.json", tmp / "demo.png"
    proc = subprocess.run(
        [
            *CMD,
            "--duration",
            "20",
            "--speed",
            "30",
            "--seed",
            "1",
            "--summary-json",
            str(summary),
            "--plot",
            str(plot),
            "--workdir",
            str(tmp / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {"proc": proc, "summary": json.loads(summary.read_text()), "plot": plot, "work": tmp / "work"}


def test_exits_zero_with_a_summary(run: dict[str, Any]) -> None:
    proc = run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    s = run["summary"]
    assert f"peak replicas: {s['peak_replicas']}" in out
    assert f"final replicas: {s['final_replicas']}" in out
    for p in s["placements"]:  # the GPU tier of each placement is stated
        assert re.search(rf"{p['pod']}\s+{p['node']}\s+GPUs \S+\s+tier {p['tier']}", out), p
    assert run["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replicas_rise_under_load_and_fall_after(run: dict[str, Any]) -> None:
    s = run["summary"]
    samples = s["samples"]
    peak_rps = max(x["rps"] for x in samples)
    quiet_start = samples[0]["current"]
    at_peak_load = max(x["current"] for x in samples if x["rps"] > 0.8 * peak_rps)
    assert at_peak_load >= quiet_start + 2, "no scale-out under load"
    assert s["peak_replicas"] >= 3
    last_third = [x for x in samples if x["t"] > samples[-1]["t"] * 2 / 3]
    assert all(x["rps"] < 0.3 * peak_rps for x in last_third)  # the load is gone by then ...
    assert s["final_replicas"] < s["peak_replicas"]  # ... and so are the extra replicas
    assert s["final_replicas"] <= 2
    assert len(s["removals"]) >= s["peak_replicas"] - s["final_replicas"]
    # the HPA read real values all along: no metric errors, KV-cache reported
    assert s["hpa_errors"] == []
    assert all(x["kv"] is not None and 0 <= x["kv"] <= 1 for x in samples)


def test_placements_use_a_free_single_numa_set_when_the_node_has_one(run: dict[str, Any]) -> None:
    placements = run["summary"]["placements"]
    assert len(placements) == len({p["pod"] for p in placements}) >= 3
    with_chance = [p for p in placements if p["single_numa_available"]]
    assert with_chance, "the fleet offers single-NUMA sets; some placement should have met one"
    assert [p for p in with_chance if p["single_numa"] is not True] == []
    for p in placements:
        assert len(p["gpus"]) == 4
        assert p["tier"] in {"nvlink", "pcie-switch", "host-bridge", "numa", "cross-socket", "unknown"}
    # each node's GPUs went to one replica at a time
    held: dict[tuple[str, int], str] = {}
    gone = {pod for _t, pod, _node in run["summary"]["removals"]}
    for p in placements:
        for g in p["gpus"]:
            other = held.get((p["node"], g))
            assert other is None or other in gone, f"GPU {g} of {p['node']} given twice"
            held[(p["node"], g)] = p["pod"]


def test_no_component_logged_an_error_and_every_replica_was_scheduled(run: dict[str, Any]) -> None:
    s = run["summary"]
    assert s["problems"] == []  # the adapter's and extender's logs and the demo's own process
    assert s["unschedulable"] == []
    assert s["hpa_errors"] == []
    for name in ("adapter", "extender"):
        svc = s["services"][name]
        assert svc["log_lines"] > 0, f"{name} log was never read"  # so the check above can fail
    # the demo's own JSON log (its vLLM/DCGM stand-ins, scheduler and HPA loops): written, and no error in it
    own = [json.loads(line) for line in (run["work"] / "demo.log").read_text().splitlines() if line.strip()]
    assert any(r["msg"] == "demo starting" for r in own)
    assert [r for r in own if r["level"] in ("error", "critical")] == []
    assert "component errors logged: none" in run["proc"].stdout


def test_everything_started_is_gone_after_the_run(run: dict[str, Any]) -> None:
    s = run["summary"]
    pids = [v["pid"] for v in s["services"].values()]
    ports = [v["port"] for v in s["services"].values()] + s["exporter_ports"] + s["replica_ports"]
    assert len(s["replica_ports"]) == len(s["placements"])
    assert_all_gone(pids, ports)


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [
            *CMD,
            "--duration",
            "300",
            "--speed",
            "10",
            "--seed",
            "2",
            "--summary-json",
            str(summary),
            "--workdir",
            str(tmp_path / "work"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "sim time" not in out and time.monotonic() < deadline:  # the live view has begun
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        started = STARTED.findall(out)
        assert {name for name, _pid, _port in started} == {"adapter", "extender"}, out
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out[-2000:]
    assert "Summary (interrupted)" in out
    doc = json.loads(summary.read_text())
    assert doc["interrupted"] is True
    pids = [int(pid) for _name, pid, _port in started]
    ports = [int(port) for _name, _pid, port in started] + doc["exporter_ports"] + doc["replica_ports"]
    assert doc["replica_ports"]
    assert_all_gone(pids, ports)
