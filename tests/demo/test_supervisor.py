"""The demo's process supervisor: it reads the services' JSON log lines (so "no component logged an error" can
fail) and always takes its children down, even one that ignores SIGTERM."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from toposcale.demo.supervisor import Service, Supervisor, free_port

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
    svc.argv = [sys.executable, "-m", "http.server", str(taken), "--bind", "127.0.0.1"]
    try:
        await sup.start_healthy(svc, timeout_s=10)
        assert svc.port != taken and svc.running()
        assert str(svc.port) in svc.argv
    finally:
        sup.stop_all()
        squatter.close()
    assert not svc.running()
