"""Repeated identical log lines are written once per window (issue 19, item 2: each refused accept() was
logged with a traceback, 99 MB of log in 20 s)."""

from __future__ import annotations

import io
import json
import logging

from toposcale.core.logs import RepeatFilter, setup


def _logger(clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    from toposcale.core.logs import JsonFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(10.0, clock=lambda: clock[0]))
    log = logging.getLogger(f"test-repeat-{id(out)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log, out


def test_identical_lines_are_written_once_per_window_and_counted() -> None:
    clock = [0.0]
    log, out = _logger(clock)
    for _ in range(10_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            log.exception("socket.accept() out of system resource")
    log.warning("connection cut", extra={"peer": "a"})
    log.warning("connection cut", extra={"peer": "b"})  # another field: another line
    clock[0] = 11.0
    log.error("socket.accept() out of system resource", exc_info=OSError(24, "Too many open files"))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(e["msg"], e.get("peer"), e.get("repeated")) for e in lines] == [
        ("socket.accept() out of system resource", None, None),
        ("connection cut", "a", None), ("connection cut", "b", None),
        ("socket.accept() out of system resource", None, 9999),
    ]


def test_setup_installs_the_filter() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    setup("info", stream=stream)
    try:
        for _ in range(5):
            logging.getLogger("toposcale.test").warning("same")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
    assert stream.getvalue().count('"same"') == 1
