"""The demo's process supervisor: it reads the services' JSON log lines (so "no component logged an error" can
fail) and always takes its children down, even one that ignores SIGTERM."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from toposcale.demo.supervisor import OwnErrors, Service, Supervisor, free_port, with_port

LOGS_AN_ERROR = r"""
import json, sys, time
print(json.dumps({"level": "info", "msg": "starting"}), flush=True)
print(json.dumps({"level": "error", "msg": "scrape failed"}), flush=True)
print("Traceback (most recent call last):", flush=True)
print("not json, not an error", flush=True)
time.sleep(30)
"""

IGNORES_SIGTERM = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


SERVES_ON_PORT = r"""
import argparse, http.server
ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--backlog", type=int, required=True)
a = ap.parse_args()
http.server.HTTPServer(("127.0.0.1", a.port), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def child(tmp_path: Path, code: str) -> Service:
    svc = Service("svc", [sys.executable, "-c", code], free_port(), tmp_path / "svc.log")
    svc.start()
    return svc


def wait_for_lines(svc: Service, n: int) -> None:
    deadline = time.monotonic() + 10
    while svc.lines < n and time.monotonic() < deadline:
        svc.scan_log()
        time.sleep(0.05)


def test_error_lines_and_tracebacks_are_problems(tmp_path: Path) -> None:
    svc = child(tmp_path, LOGS_AN_ERROR)
    try:
        wait_for_lines(svc, 4)
    finally:
        svc.stop(grace_s=5)
    assert svc.lines == 4
    assert [(p.level, p.text) for p in svc.problems] == [
        ("error", "scrape failed"),
        ("unstructured", "Traceback (most recent call last):"),
    ]


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    svc = child(tmp_path, IGNORES_SIGTERM)
    wait_for_lines(svc, 1)
    code = svc.stop(grace_s=0.5)
    assert code == -9
    assert not svc.running()


async def test_a_port_taken_meanwhile_is_retried_on_another(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    sup = Supervisor(tmp_path)
    svc = sup.add("web", [], taken, health_path="/")
    # another flag carries the same number as the port: only the value after --port may change
    svc.argv = [sys.executable, "-c", SERVES_ON_PORT, "--backlog", str(taken), "--port", str(taken)]
    try:
        await sup.start_healthy(svc, timeout_s=10)
        assert svc.port != taken and svc.running()
        assert svc.argv[-4:] == ["--backlog", str(taken), "--port", str(svc.port)]
    finally:
        sup.stop_all()
        squatter.close()
    assert not svc.running()


def test_with_port_rewrites_only_the_port_flags_value() -> None:
    assert with_port(["x", "--workers", "8888", "--port", "8888"], 9000) == [
        "x",
        "--workers",
        "8888",
        "--port",
        "9000",
    ]
    assert with_port(["x", "--port=8888", "8888"], 9000) == ["x", "--port=9000", "8888"]
    with pytest.raises(ValueError, match="no --port flag"):
        with_port(["x", "8888"], 9000)


def test_error_records_of_the_demos_own_process_are_problems() -> None:
    import logging

    from toposcale.demo.runner import problems_text

    with OwnErrors() as own:
        logging.getLogger("toposcale.demo.vllm_sim").warning("slow scrape")  # not an error
        logging.getLogger("toposcale.demo").error("scheduling failed")
        logging.getLogger("aiohttp.server").error("Error handling request")
    logging.getLogger("toposcale.demo").error("after the run: not counted")
    assert [(p.service, p.level, p.text) for p in own.problems] == [
        ("demo", "error", "toposcale.demo: scheduling failed"),
        ("demo", "error", "aiohttp.server: Error handling request"),
    ]
    assert problems_text(Supervisor(Path(".")), own) == [
        "demo: error: toposcale.demo: scheduling failed",
        "demo: error: aiohttp.server: Error handling request",
    ]


async def test_children_start_from_a_folder_that_shadows_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new user runs `toposcale demo` from the folder holding the clone, which is named `toposcale`:
    # a child started as `python -m toposcale.cli` imported that folder (no __version__ there).
    (tmp_path / "toposcale").mkdir()
    (tmp_path / "toposcale" / "__init__.py").write_text("raise ImportError('the clone, not the package')\n")
    monkeypatch.chdir(tmp_path)
    port = free_port()
    sup = Supervisor(tmp_path)
    svc = sup.add("extender", ["extender", "--standalone", "--host", "127.0.0.1", "--port", str(port)], port)
    try:
        await sup.start_healthy(svc, timeout_s=30)
        assert svc.running()
    finally:
        sup.stop_all()
    assert "the clone, not the package" not in (tmp_path / "extender.log").read_text()
