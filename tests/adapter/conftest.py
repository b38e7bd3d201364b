"""Adapter test fixtures: an in-process adapter on a free loopback port, kubectl with a kubeconfig."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.rules import RuleSet, load_rules
from toposcale.adapter.server import build_app

TOPOSCALE = Path(sys.executable).parent / "toposcale"
# Issue 3 serves TLS with delegated authn/authz by default; local runs opt out (plain HTTP, anonymous).
LOCAL = ["--insecure-allow-anonymous"]


class Running:
    def __init__(self, runner: web.AppRunner, app: web.Application) -> None:
        self.runner = runner
        self.app = app
        self.port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path, params=params) as r:
            ctype = r.headers.get("Content-Type", "")
            body = await r.json() if "json" in ctype else await r.text()
            return r.status, body

    async def metric(
        self, metric: str, namespace: str = "ml", selector: str | None = None
    ) -> tuple[int, Any]:
        params = {"labelSelector": selector} if selector is not None else {}
        path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
        return await self.get(path, **params)


@pytest.fixture
def rules() -> RuleSet:
    return load_rules()


@pytest.fixture
async def serve_adapter() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(rules: RuleSet, source: Any, **kwargs: Any) -> Running:
        metrics = kwargs.pop("metrics", None) or AdapterMetrics()
        app = build_app(rules, source, metrics=metrics, **kwargs)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return Running(runner, app)

    yield start
    for r in runners:
        await r.cleanup()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "adapter", "cluster": {"server": server}}],
        "users": [{"name": "anonymous", "user": {}}],
        "contexts": [{"name": "adapter", "context": {"cluster": "adapter", "user": "anonymous"}}],
        "current-context": "adapter",
    }))
    return path


