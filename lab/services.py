"""toposcale's own services served in-process on a loopback port for a test: the real aiohttp app, spoken to
over HTTP (the `serve` fixture of tests/extender and tests/dra).

    async with serve_extender(config=..., state=...) as s:
        status, body = await s.post("/filter", args)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from toposcale.extender.server import Extender, ServerConfig
from toposcale.extender.state import ClusterState

from lab.procs import free_port


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


@contextlib.asynccontextmanager
async def serve_extender(
    config: ServerConfig | None = None, state: ClusterState | None = None, **kw: Any
) -> AsyncIterator[Served]:
    """The extender on a free loopback port (config's host and port are set here)."""
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
