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
from toposcale.demo.scheduler import ExtenderError, SchedulerClient, most_allocated, pick, pod_object


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


def test_most_allocated_points_follow_the_kube_scheduler_formula() -> None:
    # most_allocated.go: requested (including this pod) * 100 // capacity, integers as in Go
    assert most_allocated(4, 8) == 50
    assert most_allocated(5, 8) == 62  # 62.5 truncated
    assert most_allocated(8, 8) == 100
    assert most_allocated(12, 8) == 100  # clamped to capacity
    assert most_allocated(1, 0) == 0


def test_pick_adds_most_allocated_gpu_points_to_the_extender_points() -> None:
    rng = random.Random(0)
    # Same extender score: the half-full box (8 of 8 GPUs with the pod: 100) beats the empty one (4 of 8: 50).
    fit = {"full": most_allocated(8, 8), "empty": most_allocated(4, 8)}
    assert pick(["empty", "full"], {"empty": 8, "full": 8}, 5, rng, fit) == ("full", 100 + 400)
    # One extender step is worth 5 x 10 = 50 points: it offsets the 50-point MostAllocated gap (a tie) ...
    tied = {pick(["empty", "full"], {"empty": 9, "full": 8}, 5, random.Random(s), fit)[0] for s in range(40)}
    assert tied == {"empty", "full"}
    # ... and two steps outweigh it.
    assert pick(["empty", "full"], {"empty": 10, "full": 8}, 5, rng, fit) == ("empty", 50 + 500)


async def test_the_scheduler_sends_the_pod_to_the_fuller_of_two_equally_scored_boxes(
    extender_url: str,
) -> None:
    # Two identical NVSwitch boxes, one already running a 4-GPU replica: the extender scores any four GPUs
    # of either box alike (all NVLink), so MostAllocated decides, as in the shipped profile.
    from toposcale.demo.fleet import NodeSpec

    specs = tuple(
        NodeSpec(f"hgx-{i}", "hgx-h100-nvswitch-8gpu.txt", "NVIDIA H100 80GB HBM3", 81559) for i in (0, 1)
    )
    nodes = build_fleet(specs)
    nodes[1].allocate("vllm-qwen-0", nodes[1].free_ids()[4:], "demo")
    objs = [n.node_object() for n in nodes]
    free = {n.name: len(n.free_ids()) for n in nodes}
    for seed in range(6):
        client = SchedulerClient(extender_url, weight=5, rng=random.Random(seed))
        async with aiohttp.ClientSession() as http:
            placement = await client.schedule(http, POD, objs, free, 4)
        assert placement.node == "hgx-1", seed
