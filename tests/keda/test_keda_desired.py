"""The real KEDA (operator + metrics server, lab/peers/keda.py) scaling deploy/examples/qwen-keda's
Deployment on toposcale's `vllm_desired_replicas` through the external scaler, on the session's real control
plane, with in-test vLLM exporters whose token counters the test drives and a gateway whose pending requests
are the rule's front door (tests/cluster/test_desired_replicas.py has the same story on a plain HPA).

The example's ScaledObject with one trigger, `metricName: vllm_desired_replicas`, `metricType: AverageValue`,
`targetValue: "1"` (adapter/README.md), and the speed-ups of test_keda_operator.py (pollingInterval 1 s,
cooldownPeriod 5 s, no scale-down stabilization).

1. no traffic: the count is 0, KEDA deactivates the Deployment: 1 -> 0;
2. requests wait at the gateway: with no pod, the front door's count (1) activates it (0 -> 1, KEDA), then
   the pods' token rate asks for 3 (KEDA's HPA);
3. the exporters fail: UNAVAILABLE, KEDA reports TriggerError and scales nothing;
4. the traffic stops: after the rule's window the count is 0: the HPA goes to 1, KEDA to 0.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lab.peers.deployed import Deployed
from lab.peers.desired_stack import DesiredStack, Gateway, rules_file
from lab.procs import wait_for

from .test_keda_operator import COOLDOWN_S, keda_on_toposcale, state

pytestmark = pytest.mark.timeout(600)
NS, FIRST_IP = "llm-keda-desired", "127.0.0.220"
SELECTOR = "app=vllm,model=qwen2.5-7b-instruct"


def one_trigger(so: dict[str, Any]) -> None:
    trigger = so["spec"]["triggers"][0]
    trigger["metricType"] = "AverageValue"
    trigger["metadata"].update(metricName="vllm_desired_replicas", labelSelector=SELECTOR, targetValue="1")
    so["spec"]["triggers"] = [trigger]


async def test_keda_scales_zero_to_n_to_zero_on_desired_replicas(deployed: Deployed, tmp_path: Path) -> None:
    gateway = Gateway()
    await gateway.start()
    try:
        stack = DesiredStack(deployed, NS, hpa=False, first_ip=FIRST_IP)
        rules = rules_file(deployed, gateway, tmp_path / "rules.yaml")
        async with keda_on_toposcale(
            deployed, tmp_path, NS, FIRST_IP, one_trigger, rules=rules, stack=stack
        ) as (stack, _):
            await story(stack, gateway)
    finally:
        await gateway.stop()


async def story(stack: DesiredStack, gateway: Gateway) -> None:
    cluster, ns = stack.cluster, stack.namespace

    async def at(n: int) -> dict[str, Any] | None:
        s = await state(cluster, ns)
        return s if s["replicas"] == n else None

    # 1. idle: KEDA takes the Deployment to 0
    await wait_for(lambda: at(0), 90, "KEDA to scale the idle Deployment to 0")
    hpa_metrics = (await state(cluster, ns))["status"].get("externalMetricNames")
    assert hpa_metrics == ["s0-vllm_desired_replicas"], hpa_metrics
    await wait_for(lambda: not stack.exporters, 30, "the pod to be gone")

    # 2. the gateway holds requests: activation from the front door, then the HPA on the token rate
    gateway.pending = 5.0
    await wait_for(lambda: stack.exporters, 60, "KEDA to activate the Deployment (0 -> 1) and a pod to serve")
    stack.tokens_per_s = 1500.0  # 1.5 + 0.5 replicas busy at the prior: ceil(2 / 0.8) = 3
    gateway.pending = 0.0

    async def three_or_more() -> dict[str, Any] | None:
        s = await state(cluster, ns)
        return s if s["replicas"] >= 3 else None

    s = await wait_for(three_or_more, 90, "KEDA's HPA to follow the token demand to 3 or more")
    n = s["replicas"]

    # 3. the exporters fail: UNAVAILABLE, never 0; KEDA holds
    stack.set(mode="error")

    async def trigger_error() -> dict[str, Any] | None:
        s = await state(cluster, ns)
        return s if s["conds"].get("Ready", {}).get("status") == "False" else None

    s = await wait_for(trigger_error, 60, "KEDA to report the failing trigger (Ready=False)")
    assert s["conds"]["Ready"]["reason"] == "TriggerError", s["conds"]
    for _ in range(2 * COOLDOWN_S):  # more than cooldownPeriod, many polling intervals and HPA syncs
        assert (await state(cluster, ns))["replicas"] == n
        await asyncio.sleep(1)

    # 4. back, and the traffic stops: after the window the count is 0, the HPA goes to 1 and KEDA to 0
    stack.tokens_per_s = 0.0
    stack.set(mode="ok")
    await wait_for(lambda: at(0), 120, "KEDA to scale the Deployment back to 0 once the traffic stopped")
