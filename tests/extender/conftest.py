"""Extender test helpers: Node objects carrying the agent's annotations for real topologies, and the
extender served in-process on a loopback port (the real aiohttp app, spoken to over HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from toposcale.extender.server import Extender, ServerConfig
from toposcale.extender.state import ClusterState

from toposcale.ports import free_port


class Served:
    def __init__(self, extender: Extender, url: str, session: aiohttp.ClientSession) -> None:
        self.extender, self.url, self.session = extender, url, session

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        ) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.text()


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(config=..., state=...) as s:` -> the extender on a free loopback port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def run(
        config: ServerConfig | None = None, state: ClusterState | None = None, **kw: Any
    ) -> AsyncIterator[Served]:
        cfg = config or ServerConfig()
        cfg.host, cfg.port = "127.0.0.1", free_port()
        ext = Extender(cfg, state, **kw)
        runner = web.AppRunner(ext.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        try:
            async with aiohttp.ClientSession() as session:
                yield Served(ext, f"http://127.0.0.1:{cfg.port}{ext.prefix}", session)
        finally:
            await runner.cleanup()

    return run
