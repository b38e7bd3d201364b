"""The demo's scheduler loop against the real extender (its aiohttp app, in-process on a free port, no
Kubernetes): the scheduler's own GPU-count filter, filter then prioritize, prioritize skipped for a single
feasible node, and a failing extender reported as an error, never a placement."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from toposcale.extender.server import Extender, ServerConfig

from toposcale.demo.fleet import SimNode, build_fleet
from toposcale.demo.scheduler import ExtenderError, SchedulerClient, pod_object


@pytest.fixture
async def extender_url() -> AsyncIterator[str]:
    runner = web.AppRunner(Extender(ServerConfig(), None).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def payload() -> tuple[list[dict[str, Any]], dict[str, int], list[SimNode]]:
    nodes = build_fleet()
    return [n.node_object() for n in nodes], {n.name: len(n.free_ids()) for n in nodes}, nodes


POD = pod_object("vllm-qwen-9", "demo", 4, {"app": "vllm"})


async def test_best_connected_node_wins(extender_url: str) -> None:
    objs, free, _ = payload()
    client = SchedulerClient(extender_url, weight=5, rng=random.Random(0))
    async with aiohttp.ClientSession() as http:
        placement = await client.schedule(http, POD, objs, free, 4)
    assert placement.node == "gpu-hgx-h100-0"  # a whole NVSwitch domain free
    assert placement.extender_score == 10
    assert set(placement.feasible) == set(free)


async def test_nodes_without_enough_gpus_never_reach_the_extender(extender_url: str) -> None:
    objs, free, nodes = payload()
    for n in nodes:  # fill everything but the L40S box
        if n.name != "gpu-l40s-0":
            n.allocate("busy", n.free_ids(), "batch")
    objs = [n.node_object() for n in nodes]
    free = {n.name: len(n.free_ids()) for n in nodes}
    client = SchedulerClient(extender_url, weight=5, rng=random.Random(0))
    async with aiohttp.ClientSession() as http:
        placement = await client.schedule(http, POD, objs, free, 4)
    assert placement.node == "gpu-l40s-0"
    assert placement.extender_score is None  # one feasible node: prioritize is skipped
    assert placement.failed["gpu-hgx-h100-0"].startswith("Insufficient nvidia.com/gpu")
    nodes[-1].allocate("busy", nodes[-1].free_ids(), "batch")
    async with aiohttp.ClientSession() as http:
        none = await client.schedule(http, POD, [n.node_object() for n in nodes], dict.fromkeys(free, 0), 4)
    assert none.node is None and "0 nodes" in none.reason


async def test_an_unreachable_extender_is_an_error() -> None:
    objs, free, _ = payload()
    client = SchedulerClient("http://127.0.0.1:9", weight=5, rng=random.Random(0), timeout_s=2)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ExtenderError, match="extender filter"):
            await client.schedule(http, POD, objs, free, 4)
