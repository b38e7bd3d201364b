"""The demo's HPA loop reading the real adapter (its aiohttp app in-process, direct-scrape source over a
simulated replica): values arrive as milli-values; a source that is down, a selector that matches nothing and
an unknown metric are errors, and the HPA rule then keeps the replicas instead of scaling on a made-up 0."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from toposcale.adapter.metrics import AdapterMetrics
from toposcale.adapter.rules import load_rules
from toposcale.adapter.server import build_app
from toposcale.adapter.sources.pods import StaticTargets, Target
from toposcale.adapter.sources.scrape import ScrapeSource

from toposcale.demo.external_metrics import read_external_metric
from toposcale.demo.hpa import ExternalMetric, HPAController, HPASpec, MetricError
from toposcale.demo.serving import ServingParams, new_request
from toposcale.demo.vllm_sim import HeldGPU, ReplicaServer, SimReplica

WAITING = ExternalMetric("vllm_requests_waiting", "app=vllm", "AverageValue", "4")


@pytest.fixture
async def setup() -> AsyncIterator[dict[str, Any]]:
    gpus = [HeldGPU(0, "GPU-0", "NVIDIA H100 80GB HBM3", 81559)]
    replica = SimReplica("vllm-qwen-0", "demo", "n0", gpus, ServingParams(max_num_seqs=10))
    rng = random.Random(0)
    for _ in range(30):  # more than the batch admits: 20 wait
        replica.model.submit(new_request(rng, 0.0, replica.params))
    replica.model.step(0.1, 0.1)
    replica.publish(0.1)
    server = ReplicaServer(replica)
    await server.start()
    rules = load_rules()
    target = Target(
        server.url, "demo", "vllm-qwen-0", {"namespace": "demo", "pod": "vllm-qwen-0", "app": "vllm"}
    )
    source = ScrapeSource(StaticTargets([target]), rules, ttl=0.01, timeout=1.0)
    runner = web.AppRunner(
        build_app(rules, source, cache_ttl=0.01, metrics=AdapterMetrics()), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as http:
        yield {
            "http": http,
            "url": f"http://127.0.0.1:{runner.addresses[0][1]}",
            "replica": replica,
            "server": server,
        }
    await runner.cleanup()
    await server.stop()


async def test_values_arrive_as_milli_values(setup: dict[str, Any]) -> None:
    got = await read_external_metric(setup["http"], setup["url"], "demo", "vllm_requests_waiting", "app=vllm")
    waiting = len(setup["replica"].model.waiting)
    assert waiting > 0 and got == [waiting * 1000]
    hpa = HPAController(HPASpec(min_replicas=1, max_replicas=10, metrics=(WAITING,)))
    decision = hpa.reconcile(0, 1, 1, {WAITING.name: got})
    assert decision.desired == min(-(-waiting // 4), 1 + 4)  # ceil(waiting / 4); default scale-up: +4 pods
    assert decision.desired > 1


@pytest.mark.parametrize(
    ("metric", "selector", "stop_replica", "message"),
    [
        ("vllm_requests_waiting", "app=vllm", True, "unable to fetch metrics"),  # every target down: 503
        ("vllm_requests_waiting", "app=nothing", False, "no metrics returned"),  # empty list
        ("no_such_metric", "app=vllm", False, "unable to fetch metrics"),  # 404
    ],
)
async def test_errors_keep_the_replicas(
    setup: dict[str, Any], metric: str, selector: str, stop_replica: bool, message: str
) -> None:
    if stop_replica:
        await setup["server"].stop()
    got = await read_external_metric(setup["http"], setup["url"], "demo", metric, selector)
    assert isinstance(got, MetricError), got
    assert message in str(got)
    hpa = HPAController(HPASpec(min_replicas=1, max_replicas=10, metrics=(WAITING,)))
    decision = hpa.reconcile(0, 3, 3, {WAITING.name: got})
    assert (decision.desired, decision.reason) == (3, "FailedGetExternalMetric")


async def test_unreachable_adapter_is_an_error() -> None:
    async with aiohttp.ClientSession() as http:
        got = await read_external_metric(
            http, "http://127.0.0.1:9", "demo", "vllm_requests_waiting", "app=vllm"
        )
    assert isinstance(got, MetricError) and "ClientConnectorError" in str(got)
