"""Where the adapter listens and which flags it refuses (issue 27): `--insecure-allow-anonymous` answers only
on loopback unless `--bind-address` says otherwise, `--port 0` logs the port it got, flags that cannot work
are usage errors (exit 2) naming the flag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from toposcale.adapter.cli import LOOPBACK, listen_address

from toposcale import cli

EXE = Path(sys.executable).parent / "toposcale"


def test_listen_address() -> None:
    assert listen_address(None, False) == (None, None)  # authenticated: every interface, as before
    host, warning = listen_address(None, True)
    assert host == LOOPBACK and warning and "--bind-address 0.0.0.0" in warning
    assert listen_address("127.0.0.1", True) == ("127.0.0.1", None)
    host, warning = listen_address("0.0.0.0", True)  # asked for: done, and said
    assert host == "0.0.0.0" and warning and "unauthenticated" in warning
    assert listen_address("", True)[0] is None and listen_address("", True)[1]
    assert listen_address("10.0.0.5", False) == ("10.0.0.5", None)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-inflight", "0", "argument --max-inflight: '0': must be at least 1"),
        ("--max-inflight", "many", "argument --max-inflight: 'many' is not a whole number"),
        ("--cache-ttl", "-1", "argument --cache-ttl: '-1': must be a finite number of seconds 0 or above"),
        ("--cache-ttl", "nan", "argument --cache-ttl: 'nan': must be a finite number of seconds 0 or above"),
        ("--request-timeout", "0", "--request-timeout: '0': must be a finite number of seconds above 0"),
        ("--port", "70000", "argument --port: '70000': a port is 0..65535 (0: any free one)"),
        ("--port", "-1", "argument --port: '-1': a port is 0..65535"),
    ],
)
def test_flags_that_cannot_work_are_usage_errors(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["adapter", f"{flag}={value}"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cache_ttl_zero_is_allowed() -> None:
    assert cli.build_parser().parse_args(["adapter", "--cache-ttl", "0"]).cache_ttl == 0.0


def non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


async def reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except OSError:
        return False
    writer.close()
    return True


@contextlib.asynccontextmanager
async def adapter(tmp_path: Path, *flags: str) -> AsyncIterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """`toposcale adapter --insecure-allow-anonymous --port 0 ...` as a process: (the `adapter listening` log
    entry, every log entry up to it)."""
    targets = tmp_path / "targets.yaml"
    targets.write_text("[]\n")
    proc = await asyncio.create_subprocess_exec(
        str(EXE),
        "adapter",
        "--scrape-targets",
        str(targets),
        "--port",
        "0",
        "--insecure-allow-anonymous",
        *flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[dict[str, Any]] = []
    try:
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, f"adapter exited before listening: {seen}"
            if line.startswith(b"{"):
                seen.append(json.loads(line))
                if seen[-1]["msg"] == "adapter listening":
                    break
        yield seen[-1], seen
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_insecure_adapter_listens_on_loopback_only_and_logs_the_port(tmp_path: Path) -> None:
    async with adapter(tmp_path) as (listening, logs):
        port = listening["port"]
        assert port != 0 and listening["address"] == LOOPBACK and listening["tls"] is False
        warnings = [e["msg"] for e in logs if e["level"] == "warning"]
        warning = next(w for w in warnings if "listening on 127.0.0.1 only" in w)
        assert "--bind-address 0.0.0.0" in warning
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        # the socket is bound to 127.0.0.1 alone: another loopback address and this machine's own address
        # on the network do not reach it
        assert not await reachable("127.0.0.2", port)
        outside = non_loopback_address()
        if outside is not None:
            assert not await reachable(outside, port)


async def test_bind_address_opens_it_up_when_asked(tmp_path: Path) -> None:
    """The control for the test above: the same checks see a listener on every interface."""
    async with adapter(tmp_path, "--bind-address", "0.0.0.0") as (listening, logs):
        port = listening["port"]
        assert listening["address"] == "0.0.0.0"
        assert any("unauthenticated" in e["msg"] for e in logs if e["level"] == "warning")
        assert await reachable("127.0.0.2", port)
        outside = non_loopback_address()
        if outside is not None:
            assert await reachable(outside, port)
