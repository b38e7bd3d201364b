"""Processes of the lab: free loopback ports and child processes (spawn, log to a file, wait until healthy,
tail on failure, stop by PID). Standard library only, like toposcale/core/ports.py (whose `free_port` is the
one definition, re-exported here): `scripts/kube.sh` runs the lab's control plane with a system python3.

    child = Child([binary, "--port", str(port)], tmp_path / "x.log").start()
    child.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "x healthy")
    ...                                        # AssertionError with the log's tail if it exits or times out
    child.stop()                               # SIGTERM by PID (its process group), SIGKILL after `grace`

    with Child(argv, log) as child: ...        # started, stopped on exit (also `async with`)
    await child.until(check, 30, "ready")      # the same wait from a coroutine; `check` may be async
    await child.astop()                        # stop without blocking the event loop
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from toposcale.core.ports import free_port

__all__ = ["Child", "free_port", "http_ok", "pid_alive", "port_open", "terminate_pid", "wait_for"]


def http_ok(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200 (any failure to connect or other status: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (reaped when it is our exited child; a zombie of another parent counts as gone)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a `down` run): fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of another parent still answers signal 0; /proc says whether it is one.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def terminate_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM to `pid`, SIGKILL after `grace` seconds, then up to 5 s for it to go."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Child:
    """One child process of a test or benchmark, its stdout and stderr in one log file.

    env: the whole environment (None: inherit); extra_env: added to the inherited one. new_session: the child
    leads a process group of its own, so `stop()` reaches what it spawned too."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        name: str | None = None,
        new_session: bool = False,
        stdin: int | IO[Any] | None = None,
        log_mode: str = "wb",
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.log = Path(log)
        self.name = name or Path(self.argv[0]).name
        self._env = dict(env) if env is not None else None
        if extra_env:
            self._env = {**(self._env if self._env is not None else os.environ), **extra_env}
        self._cwd = cwd
        self._new_session = new_session
        self._stdin = stdin
        self._log_mode = log_mode
        self.popen: subprocess.Popen[bytes] | None = None

    # --- life ----------------------------------------------------------------------------------------------

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open(self._log_mode) as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=self._stdin,
                env=self._env,
                cwd=self._cwd,
                start_new_session=self._new_session,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs, else its exit status."""
        return None if self.popen is None else self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        """The whole log."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 4000) -> str:
        return self.text()[-chars:]

    def failed(self, why: str) -> AssertionError:
        return AssertionError(f"{self.name} {why}; log {self.log}:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        """`sig` (SIGTERM) by PID (to its group when new_session), SIGKILL after `grace` seconds; its exit
        status."""
        proc = self.popen
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        return proc.returncode

    async def astop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        return await asyncio.to_thread(self.stop, sig, grace)

    def _signal(self, sig: int) -> None:
        assert self.popen is not None
        try:
            if self._new_session:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    # --- waiting -------------------------------------------------------------------------------------------

    def wait_until(self, check: Callable[[], Any], limit: float, what: str, interval: float = 0.1) -> Any:
        """Polls `check` until it returns something truthy (returned); fails with the log's tail when the
        child exits first or `limit` seconds pass."""
        deadline = time.monotonic() + limit
        while True:
            if self.returncode is not None:
                raise self.failed(f"exited {self.returncode} before {what}")
            got = check()
            if got:
                return got
            if time.monotonic() >= deadline:
                raise self.failed(f"not {what} after {limit:.0f} s")
            time.sleep(interval)

    async def until(
        self, check: Callable[[], Any | Awaitable[Any]], limit: float, what: str, interval: float = 0.1
    ) -> Any:
        """`wait_until` from a coroutine: `check` may be a plain or an async function."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            if self.returncode is not None:
                raise self.failed(f"exited {self.returncode} before {what}")
            got = check()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return got
            if loop.time() >= deadline:
                raise self.failed(f"not {what} after {limit:.0f} s")
            await asyncio.sleep(interval)

    # --- context managers ----------------------------------------------------------------------------------

    def __enter__(self) -> Child:
        return self.start() if self.popen is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Child:
        return self.start() if self.popen is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()


async def wait_for(predicate: Callable[[], Any], limit: float, what: str, interval: float = 0.5) -> Any:
    """Polls `predicate` (sync or async, returning a truthy value when done) until `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: Any = None
    while loop.time() < deadline:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what} (last: {last!r})")
