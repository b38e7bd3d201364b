"""The real HPA controller scaling deploy/examples/qwen's Deployment on `vllm_desired_replicas` through the
real aggregator (scrape mode, pods from the Kubernetes API), with minReplicas 0 (HPAScaleToZero, beta, on in
Kubernetes 1.37), in-test vLLM exporters whose token counters the test drives, and a gateway whose pending
requests are the front door.

The story, as a user reads it in `kubectl get hpa`:
1. no traffic: after the scale-down window the metric is 0 and the HPA scales 1 -> 0 (ScaledToZero=True);
2. requests wait at the gateway: with no pod to read, the front door is the demand: 0 -> 1, and once the
   pods serve 2 replicas' worth of tokens per second the count rises to N >= 3 (at 80% each);
3. the exporters fail: the metric is an error (503), the HPA holds N (ScalingActive=False), never 0;
4. the traffic stops: after the window (12 s here) the count falls to 0 and the HPA follows: N -> 0.

Changed for speed: the HPA's behavior (no stabilization, 100% per 2 s down, 4 pods per 2 s up), the rule's
rate window (6 s), scale-down window (12 s) and cold start (2 s), a small prior capacity (1000 prompt and
1000 generated tokens per second per replica).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lab.peers.desired_stack import DesiredStack, Gateway, rules_file
from lab.peers.qwen import condition

from .conftest import Deployed, forbidden, run_adapter, wait_for


async def test_hpa_scales_zero_to_n_to_zero_on_desired_replicas(deployed: Deployed, tmp_path: Path) -> None:
    cluster = deployed.cluster
    audit_start = len(cluster.audit_events())
    gateway = Gateway()
    await gateway.start()
    kc = str(deployed.kubeconfigs["toposcale-adapter"])
    args = ["--kubeconfig", kc, "--rules", str(rules_file(deployed, gateway, tmp_path / "rules.yaml"))]
    try:
        async with (
            DesiredStack(deployed, "llm-desired") as stack,
            run_adapter(deployed, args, tmp_path / "adapter.log") as adapter,
        ):
            try:
                await story(stack, gateway)
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e
    finally:
        await gateway.stop()
    assert forbidden(cluster, audit_start) == []


async def story(stack: DesiredStack, gateway: Gateway) -> None:
    async def replicas() -> int:
        return int((await stack.deployment())["spec"]["replicas"])

    async def hpa_condition(kind: str) -> dict[str, Any]:
        return condition(await stack.hpa(), kind)

    # 1. idle: the one replica goes away after the window; the HPA records that it scaled to zero
    async def zero() -> bool:
        return await replicas() == 0 and (await hpa_condition("ScaledToZero")).get("status") == "True"

    await wait_for(zero, 120, "the idle Deployment to be scaled to 0 (ScaledToZero=True)")
    await wait_for(lambda: not stack.exporters, 30, "the pod to be gone")

    # 2. requests wait at the gateway: 0 -> 1 from the front door; the pods' token rate then asks for more
    gateway.pending = 5.0

    async def some() -> bool:
        return await replicas() >= 1

    await wait_for(some, 60, "the HPA to scale from 0 on the front door's demand")
    stack.tokens_per_s = 1500.0  # 1.5 + 0.5 replicas busy at the prior: ceil(2 / 0.8) = 3
    await wait_for(lambda: stack.exporters, 30, "a pod serving")
    gateway.pending = 0.0  # dispatched to the pods

    async def many() -> int | None:
        n = await replicas()
        return n if n >= 3 else None

    n = await wait_for(many, 90, "the HPA to follow the token demand to 3 or more")
    described = await stack.describe_hpa()
    assert "vllm_desired_replicas" in described, described

    # 3. the exporters fail: an error, not 0; the HPA holds
    stack.set(mode="error")

    async def failing() -> dict[str, Any] | None:
        c = await hpa_condition("ScalingActive")
        return c if c.get("status") == "False" else None

    c = await wait_for(failing, 60, "ScalingActive=False while the exporters fail")
    assert c["reason"] == "FailedGetExternalMetric", c
    held = await replicas()
    assert held >= n, (held, n)
    for _ in range(8):  # four sync periods and more
        assert await replicas() == held
        await asyncio.sleep(1)

    # 4. back, and the traffic stops: after the window, down to 0
    stack.tokens_per_s = 0.0
    stack.set(mode="ok")

    async def down() -> bool:
        return await replicas() == 0

    await wait_for(down, 120, "the HPA to scale to 0 once the traffic stopped for the window")
    events = " ".join(e.get("message", "") for e in await stack.hpa_events())
    assert "New size: 0; reason: All metrics below target" in events, events
    assert "New size: 1; reason: external metric vllm_desired_replicas" in events, events
    assert (await hpa_condition("ScaledToZero")).get("status") == "True"
