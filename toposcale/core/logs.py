"""Structured logging: one JSON object per line on stderr, the same shape for every service."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time, not at setup time: a CLI `main()` run in-process
    (tests, embedding) must not keep a stream that its caller has since swapped out and closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class RepeatFilter(logging.Filter):
    """Drops a line identical to one written less than `window_s` ago (same logger, level, message, fields
    and exception), counting it; the next identical line written after the window carries `repeated`: how
    many were dropped. A flood (an accept() failing thousands of times a second, each with a traceback: 99 MB
    in 20 s) becomes one line per window; distinct lines are never dropped."""

    def __init__(self, window_s: float = 10.0, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._seen: dict[tuple[Any, ...], list[float]] = {}  # key -> [last written, dropped since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        fields = tuple(
            (k, repr(v)) for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
        )
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, record.getMessage(), fields, type(exc), str(exc))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window_s:
                entry[1] += 1
                return False
            if entry is not None and entry[1]:
                record.repeated = int(entry[1])
            if len(self._seen) >= self.max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
        return True


def setup(level: str = "info", *, stream: Any = None) -> None:
    """Configure the root logger once per process. Fields go in `extra={...}`. Identical lines repeated
    within 10 s are written once (RepeatFilter)."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def add_log_level_argument(parser: Any) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="lowest level logged, as one JSON object a line on stderr (default info)")
