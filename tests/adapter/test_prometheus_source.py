"""The Prometheus source against a Thanos/Mimir-style gateway: TLS with a CA file, a bearer token file that
rotates, a tenant header; the gateway (in-test, aiohttp, real certificates from lab/pki.py)
forwards to the real Prometheus. Wrong token, wrong CA and a hanging gateway are 503s, never values."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from toposcale.adapter.errors import SourceUnavailable
from toposcale.adapter.rules import load_rules
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.prometheus import PrometheusSource

from lab.peers.exporters import VllmExporter
from lab.peers.prometheus import PROMETHEUS, PrometheusServer, ScrapeJob
from lab.pki import TestPKI

pytestmark = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK), reason="needs the Debian prometheus package"
)


class Gateway:
    """Checks `Authorization: Bearer <token>` and `X-Scope-OrgID`, then forwards /api/v1/query."""

    def __init__(self, upstream: str, token: str, tenant: str) -> None:
        self.upstream, self.token, self.tenant = upstream, token, tenant
        self.hang = False
        self.seen: list[dict[str, str]] = []

    async def query(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if self.hang:
            await asyncio.sleep(30)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        if request.headers.get("X-Scope-OrgID") != self.tenant:
            return web.json_response({"status": "error", "error": "no org id"}, status=401)
        async with aiohttp.ClientSession() as s, s.get(self.upstream + "/api/v1/query",
                                                       params=request.query) as r:
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")


async def test_tls_token_file_headers_and_failures(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path / "pki")
    ca = pki.ca("gateway-ca")
    other_ca = pki.ca("someone-else")
    cert = pki.server(ca, "gateway", hosts=["127.0.0.1", "localhost"])
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")

    async with VllmExporter(waiting=7) as vllm:
        prom = PrometheusServer([ScrapeJob("vllm", [vllm.address], {"namespace": "ml", "app": "vllm"})])
        await asyncio.to_thread(prom.start)
        runner = None
        try:
            await asyncio.to_thread(prom.wait_scraped)
            gw = Gateway(prom.url, "token-1", "tenant-1")
            app = web.Application()
            app.router.add_get("/api/v1/query", gw.query)
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert.cert_path, cert.key_path)
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
            await site.start()
            url = f"https://127.0.0.1:{runner.addresses[0][1]}"

            rule = load_rules().by_name()["vllm_requests_waiting"]
            sel = parse_selector("app=vllm")
            source = PrometheusSource(url, bearer_token_file=str(token_file), ca_file=str(ca.cert_path),
                                      headers={"X-Scope-OrgID": "tenant-1"}, timeout=1,
                                      token_reread_seconds=0)
            [value] = await source.fetch(rule, "ml", sel)
            assert value.value == 7
            assert gw.seen[-1]["Authorization"] == "Bearer token-1"

            gw.token = "token-2"  # the token rotates: the file is re-read
            with pytest.raises(SourceUnavailable, match="401"):
                await source.fetch(rule, "ml", sel)
            token_file.write_text("token-2")
            [value] = await source.fetch(rule, "ml", sel)
            assert value.value == 7

            wrong_ca = PrometheusSource(url, bearer_token_file=str(token_file),
                                        ca_file=str(other_ca.cert_path),
                                        headers={"X-Scope-OrgID": "tenant-1"}, timeout=1)
            with pytest.raises(SourceUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|verify failed"):
                await wrong_ca.fetch(rule, "ml", sel)

            gw.hang = True
            with pytest.raises(SourceUnavailable, match=r"[Tt]imed? ?out"):
                await source.fetch(rule, "ml", sel)
            for s in (source, wrong_ca):
                await s.close()
        finally:
            if runner is not None:
                await runner.cleanup()
            await asyncio.to_thread(prom.stop)

    with pytest.raises(ValueError, match="bearer token file"):
        PrometheusSource("http://127.0.0.1:9", bearer_token_file=str(tmp_path / "missing"))
