"""Starts the real toposcale services as child processes, watches their logs, and always takes them down.

Children run in their own session (Ctrl-C in the terminal reaches only the demo, which then stops them in
order) and, on Linux, get SIGTERM from the kernel if the demo itself dies (PR_SET_PDEATHSIG), so no run leaves
a service holding a port behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from toposcale.core.ports import free_port

logger = logging.getLogger("toposcale.demo.supervisor")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServiceExited(RuntimeError):
    """A child service ended before it answered its health check."""


@dataclass(frozen=True, slots=True)
class LogProblem:
    service: str
    level: str
    text: str


@dataclass(slots=True)
class Service:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    health_path: str = "/healthz"
    proc: subprocess.Popen[bytes] | None = None
    _log_pos: int = 0
    problems: list[LogProblem] = field(default_factory=list)
    lines: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.close()
        logger.info("service started", extra={"service": self.name, "pid": self.proc.pid, "port": self.port})

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.running():
                    raise ServiceExited(
                        f"{self.name} exited with code {self.proc and self.proc.returncode} "
                        f"before it was healthy; its log: {self.log_path}\n{self.tail()}"
                    )
                try:
                    async with http.get(self.base_url + self.health_path) as resp:
                        if resp.status == 200:
                            return
                        last = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:.0f}s ({last}); log: {self.log_path}")

    def scan_log(self) -> None:
        """Reads new log lines: structured error/critical lines and any traceback count as problems."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1
        self._log_pos += cut
        for raw in data[:cut].decode("utf-8", "replace").splitlines():
            if not raw.strip():
                continue
            self.lines += 1
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                level = str(rec.get("level", "")).lower()
                if level in ("error", "critical", "fatal"):
                    self.problems.append(LogProblem(self.name, level, str(rec.get("msg", raw))))
            elif raw.startswith("Traceback") or "Error" in raw.split(":", 1)[0]:
                self.problems.append(LogProblem(self.name, "unstructured", raw.strip()))

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("service ignored SIGTERM, killing", extra={"service": self.name, "pid": p.pid})
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(5)
        self.scan_log()
        logger.info("service stopped", extra={"service": self.name, "code": p.returncode})
        return p.returncode


class OwnErrors(logging.Handler):
    """Error-level records logged in the demo's own process (its vLLM and DCGM stand-ins, the scheduler and
    HPA loops, aiohttp's servers for the stand-ins) as problems of service "demo", beside the children's."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.problems: list[LogProblem] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record must not hide that something failed
            text = str(record.msg)
        self.problems.append(LogProblem("demo", record.levelname.lower(), f"{record.name}: {text}"))

    def __enter__(self) -> OwnErrors:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


def has_port_flag(argv: list[str]) -> bool:
    try:
        with_port(argv, 0)
    except ValueError:
        return False
    return True


def with_port(argv: list[str], port: int) -> list[str]:
    """`argv` with the value of its `--port` flag (`--port N` or `--port=N`) replaced; nothing else changes,
    not even another argument that happens to equal the old port."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--port" and i + 1 < len(out):
            out[i + 1] = str(port)
            return out
        if a.startswith("--port="):
            out[i] = f"--port={port}"
            return out
    raise ValueError(f"no --port flag in {argv!r}")


class Supervisor:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.services: list[Service] = []

    async def start_healthy(self, svc: Service, timeout_s: float, attempts: int = 3) -> None:
        """Start `svc` and wait until healthy; if it exits early (another process took its port between
        `free_port` and its bind), try again on a new port, `attempts` times in all. The port is the value
        of the service's `--port` flag; without one there is nothing to change and the first exit stands."""
        for attempt in range(1, attempts + 1):
            svc.start()
            try:
                await svc.wait_healthy(timeout_s)
                return
            except ServiceExited:
                if attempt == attempts or not has_port_flag(svc.argv):
                    raise
                svc.port = free_port()
                svc.argv = with_port(svc.argv, svc.port)
                logger.warning(
                    "service exited at start, retrying on another port",
                    extra={"service": svc.name, "port": svc.port, "log_tail": svc.tail(3)},
                )

    def add(self, name: str, args: list[str], port: int, health_path: str = "/healthz") -> Service:
        # -P: no current folder first on sys.path. Run from the folder holding a clone (itself named
        # `toposcale`), `-m toposcale.cli` imported the clone instead of the installed package.
        argv = [sys.executable, "-P", "-m", "toposcale.cli", *args]
        svc = Service(name, argv, port, self.workdir / f"{name}.log", health_path)
        self.services.append(svc)
        return svc

    def scan_logs(self) -> None:
        for s in self.services:
            s.scan_log()

    def problems(self) -> list[LogProblem]:
        return [p for s in self.services for p in s.problems]

    def dead(self) -> list[Service]:
        return [s for s in self.services if s.proc is not None and not s.running()]

    def stop_all(self) -> None:
        for s in reversed(self.services):
            s.stop()
