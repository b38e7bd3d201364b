"""The Prometheus source honours the proxy environment (HTTP_PROXY / NO_PROXY), as requests does, although the
source resolves it once at start instead of on every query (sources/prometheus.py `_settle_environment`).
Real Prometheus behind an in-test forward proxy (aiohttp, absolute-form request targets)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web
from toposcale.adapter.rules import load_rules
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.prometheus import PrometheusSource

from lab.peers.exporters import VllmExporter
from lab.peers.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob

pytestmark = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK), reason="needs the Debian prometheus package"
)

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY")


class ForwardProxy:
    """Forwards GETs sent in absolute form (`GET http://host:port/path?query`) and records their targets."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def forward(self, request: web.Request) -> web.Response:
        self.seen.append(str(request.url))
        async with aiohttp.ClientSession() as s, s.get(str(request.url)) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")


async def test_proxy_environment_applies_and_no_proxy_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    async with VllmExporter(waiting=7) as vllm:
        prom = PrometheusServer([ScrapeJob("vllm", [vllm.address], {"namespace": "ml", "app": "vllm"})])
        await asyncio.to_thread(prom.start)
        runner = None
        try:
            await asyncio.to_thread(prom.wait_scraped)
            proxy = ForwardProxy()
            app = web.Application()
            app.router.add_route("GET", "/{tail:.*}", proxy.forward)
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            rule = load_rules().by_name()["vllm_requests_waiting"]
            sel = parse_selector("app=vllm")

            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
            source = PrometheusSource(prom.url, timeout=2)
            try:
                [value] = await source.fetch(rule, "ml", sel)
                assert value.value == 7
                assert len(proxy.seen) == 1 and proxy.seen[0].startswith(f"{prom.url}/api/v1/query?query=")
            finally:
                await source.close()

            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            direct = PrometheusSource(prom.url, timeout=2)
            try:
                [value] = await direct.fetch(rule, "ml", sel)
                assert value.value == 7
                assert len(proxy.seen) == 1  # straight to Prometheus
            finally:
                await direct.close()
        finally:
            if runner is not None:
                await runner.cleanup()
            await asyncio.to_thread(prom.stop)
