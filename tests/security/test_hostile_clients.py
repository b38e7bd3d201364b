"""Idle and slow clients against the adapter's listener (issue 28, item 1), plain HTTP and HTTPS: a client
that connects (TLS handshake done) and sends nothing, or idles on keep-alive after one request, is closed
after the header timeout, as Go's http.Server closes it for k8s.io/apiserver (ReadHeaderTimeout,
IdleTimeout); and at --max-connections the connection quiet longest makes room for a new one, so the kubelet's
and the aggregator's requests keep being answered while the cap is held by idle clients.

Before: the 51st connection was closed at once while 50 idle ones held the cap, so every probe failed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lab.kube.standin import KubeStandIn
from lab.peers.hostile import closed_by_server, held_connections, probe_during

from .conftest import PKI, StartServer, auth_configmap, tls_flags, until

GET = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"


async def _start(
    mode: str, flags: list[str], pki: PKI, kube: KubeStandIn, start_server: StartServer
) -> object:
    if mode == "https":
        kube.add(auth_configmap(pki))
        return await start_server([*tls_flags(pki, kube), *flags])
    return await start_server(["--insecure-allow-anonymous", *flags])  # plain HTTP


@pytest.mark.parametrize("mode", ["http", "https"])
async def test_idle_connections_do_not_lock_clients_out(
    mode: str, pki: PKI, kube: KubeStandIn, start_server: StartServer
) -> None:
    srv = await _start(
        mode, ["--max-connections", "50", "--request-header-timeout", "1s"], pki, kube, start_server
    )
    ctx = srv.client_ssl() if mode == "https" else None
    port = srv.site.port

    async def attack() -> None:
        # 200 connections that send nothing and 50 that idle on keep-alive after one request, 5x the cap
        async with (
            held_connections("127.0.0.1", port, 200, ssl=ctx) as idle,
            held_connections("127.0.0.1", port, 50, ssl=ctx, send=GET) as kept,
        ):
            await asyncio.sleep(1.5)  # held past the header timeout while the probes run
            # sent nothing, or answered and then idle: all closed by the server (evicted or timed out)
            assert all(await asyncio.gather(*(closed_by_server(r, 10) for r, _ in idle + kept)))

    probes = await probe_during(attack(), lambda: _status(srv))
    assert probes.sent >= 3 and probes.failed == 0, probes
    assert 'reason="evicted"' in srv.metrics_text()


async def _status(srv: object) -> int:
    return (await srv.get("/healthz"))[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["http", "https"])
async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    mode: str, pki: PKI, kube: KubeStandIn, start_server: StartServer
) -> None:
    srv = await _start(mode, ["--request-header-timeout", "300ms"], pki, kube, start_server)
    ctx = srv.client_ssl() if mode == "https" else None
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port, ssl=ctx)
    try:
        assert await closed_by_server(reader, 10)  # closed (before: held for aiohttp's 75 s keep-alive)
    finally:
        writer.close()
    assert 'reason="idle-timeout"} 1.0' in srv.metrics_text()


async def test_the_first_requests_deadline_runs_from_the_accept(start_server: StartServer) -> None:
    # Wait most of the header timeout, then dribble headers: the deadline does not restart at the first byte.
    srv = await start_server(["--insecure-allow-anonymous", "--request-header-timeout", "600ms"])
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port)
    try:
        await asyncio.sleep(0.4)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    finally:
        writer.close()


async def test_at_the_cap_only_a_connection_being_answered_keeps_its_slot(start_server: StartServer) -> None:
    srv = await start_server(["--insecure-allow-anonymous", "--max-connections", "2"])
    port = srv.site.port
    async with held_connections("127.0.0.1", port, 2, send=b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n") as busy:
        await until(lambda: srv.site.open_connections == 2, "two requests being answered")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # refused: both are being answered
        writer.close()
        assert srv.site.open_connections == 2 and not busy[0][0].at_eof()
    assert 'reason="max-connections"' in srv.metrics_text()


@pytest.mark.parametrize("line", [b"GET / HTTP/9.9", b"GARBAGE", b"\x00\x01 / HTTP/1.1"])
async def test_a_malformed_request_line_is_one_warning_without_a_traceback(
    line: bytes, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 28: any client could put full tracebacks at level error in the log (aiohttp's own logging)
    srv = await start_server(["--insecure-allow-anonymous"])
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port)
    writer.write(line + b"\r\nHost: a\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer[:60]
    await until(lambda: any("malformed request" in r.getMessage() for r in caplog.records), "logged")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    (record,) = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert record.levelno == logging.WARNING and "400" in record.getMessage()


async def test_memory_of_many_tls_connections_comes_back(
    pki: PKI, kube: KubeStandIn, start_server: StartServer
) -> None:
    # issue 28: 5,000 TLS connections left the adapter ~500 MB larger for good (glibc kept the freed buffers)
    import gc

    kube.add(auth_configmap(pki))
    srv = await start_server(tls_flags(pki, kube))
    gc.collect()
    start = _rss_mib()
    # 300: enough closes for a heap trim (listener.TRIM_AFTER_CLOSES), ~220 MiB held in this process
    async with held_connections("127.0.0.1", srv.site.port, 300, ssl=srv.client_ssl()) as conns:
        assert len(conns) == 300
        held = _rss_mib()
    await until(lambda: srv.site.open_connections == 0, "connections closed")
    gc.collect()
    await until(lambda: _rss_mib() < start + 40, f"RSS back within 40 MiB of {start:.0f} (held {held:.0f})")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
