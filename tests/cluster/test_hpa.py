"""The real HPA controller (kube-controller-manager, sync period 2 s) scaling deploy/examples/qwen on the
adapter's External metrics, read through the real aggregator, in both source modes.

Changed from the example for speed: the HPA's scaleDown behavior (stabilization 10 s instead of 600 s, up to
100% per 15 s instead of 1 pod per 300 s). Everything else, the two metrics, targets, scaleUp behavior and
min/max
replicas, is the example as shipped.

The story, as a user reads it in `kubectl describe hpa`:
1. queue 10 on one pod: the controller computes ceil(10 / 4) = 3 (averageValue 4; scaleUp allows +2 pods) and
   scales the Deployment to 3;
2. the metric source fails: ScalingActive=False / FailedGetExternalMetric, and the replicas stay at 3;
3. the queue drains to 0: after the stabilization window it scales down to minReplicas 1.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from lab.peers.prometheus import PrometheusServer
from lab.peers.qwen import QwenStack, condition

from .conftest import Deployed, forbidden, run_adapter, wait_for

SCALE_DOWN = {
    "stabilizationWindowSeconds": 10,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}


async def replicas(stack: QwenStack) -> tuple[int, int]:
    hpa, dep = await stack.hpa(), await stack.deployment()
    return hpa.get("status", {}).get("desiredReplicas", -1), dep["spec"]["replicas"]


async def scale_story(stack: QwenStack, fail: Any, recover: Any) -> None:
    await wait_for(lambda: len(stack.exporters) >= 1, 60, "the first vLLM pod to run")

    async def active() -> bool:
        c = condition(await stack.hpa(), "ScalingActive")
        return c.get("status") == "True"

    await wait_for(active, 90, "the HPA to read its metrics (ScalingActive=True)")
    assert await replicas(stack) == (1, 1)

    # 1. the queue rises: 10 waiting over 1 pod, target 4 per pod -> 3 replicas
    stack.set(waiting=10, kv_cache=0.2)

    async def three() -> bool:
        return await replicas(stack) == (3, 3)

    await wait_for(three, 60, "the HPA to scale to 3")
    hpa = await stack.hpa()
    current = {
        m["external"]["metric"]["name"]: m["external"]["current"] for m in hpa["status"]["currentMetrics"]
    }
    # the values the controller read through the aggregator: the sum, and the averaged KV cache (0.2 -> 200m)
    assert current["vllm_requests_waiting"]["averageValue"] in ("3334m", "3333m", "5", "10"), current
    assert current["vllm_kv_cache_usage"]["value"] == "200m", current
    await wait_for(lambda: len(stack.exporters) == 3, 60, "three pods running")

    # 2. the metric source fails: no scaling on a made-up value, not down to 1
    await fail()

    async def failing() -> dict[str, Any] | None:
        c = condition(await stack.hpa(), "ScalingActive")
        return c if c.get("status") == "False" else None

    c = await wait_for(failing, 60, "ScalingActive=False")
    assert c["reason"] == "FailedGetExternalMetric", c
    for _ in range(8):  # four sync periods and more
        assert await replicas(stack) == (3, 3)
        await asyncio.sleep(1)
    events = await stack.hpa_events()
    reasons = {e["reason"] for e in events}
    assert "FailedGetExternalMetric" in reasons, reasons
    described = await stack.describe_hpa()
    assert re.search(r"ScalingActive\s+False\s+FailedGetExternalMetric", described), described

    # 3. back, and drained: down to minReplicas after the stabilization window
    stack.set(waiting=0, kv_cache=0.1)
    await recover()

    async def one() -> bool:
        return await replicas(stack) == (1, 1)

    await wait_for(one, 90, "the HPA to scale down to 1")
    described = await stack.describe_hpa()
    assert "New size: 3; reason: external metric vllm_requests_waiting" in described, described
    assert "New size: 1; reason: All metrics below target" in described, described


async def test_hpa_scales_on_the_scrape_mode_adapter(deployed: Deployed, tmp_path: Path) -> None:
    cluster = deployed.cluster
    audit_start = len(cluster.audit_events())
    async with (
        QwenStack(deployed, "llm-scrape", scale_down=SCALE_DOWN) as stack,
        run_adapter(
            deployed,
            ["--kubeconfig", str(deployed.kubeconfigs["toposcale-adapter"])],
            tmp_path / "adapter.log",
        ) as adapter,
    ):

        async def fail() -> None:
            stack.set(mode="error")  # every pod's /metrics answers 500

        async def recover() -> None:
            stack.set(mode="ok")

        try:
            await scale_story(stack, fail, recover)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e
    assert forbidden(cluster, audit_start) == []


class FileSdPrometheus(PrometheusServer):
    def __init__(self, file_sd: Path) -> None:
        super().__init__([], scrape_interval="1s")
        self.file_sd = file_sd

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["scrape_configs"] = [
            {
                "job_name": "vllm",
                "file_sd_configs": [{"files": [str(self.file_sd)], "refresh_interval": "1s"}],
            }
        ]
        return cfg


async def test_hpa_scales_on_the_prometheus_mode_adapter(deployed: Deployed, tmp_path: Path) -> None:
    cluster = deployed.cluster
    audit_start = len(cluster.audit_events())
    ns = "llm-prom"
    first = 100  # pod IPs 127.0.0.100.. for this test's pods
    # The real Prometheus discovers the running pods from a file the in-test kubelet keeps (file_sd), with
    # each pod's namespace, name and `app` label, as a PodMonitor's pod discovery would.
    file_sd = tmp_path / "pods.json"
    file_sd.write_text("[]")
    prom = FileSdPrometheus(file_sd)
    await asyncio.to_thread(prom.start)
    try:
        async with (
            run_adapter(deployed, ["--prometheus-url", prom.url], tmp_path / "adapter.log") as adapter,
            QwenStack(
                deployed, ns, scale_down=SCALE_DOWN, first_ip=f"127.0.0.{first}", file_sd=file_sd
            ) as stack,
        ):

            async def fail() -> None:
                await asyncio.to_thread(prom.stop)  # Prometheus itself goes away

            async def recover() -> None:
                await asyncio.to_thread(prom.start)

            try:
                await scale_story(stack, fail, recover)
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- adapter log:\n{adapter.tail()}") from e
    finally:
        await asyncio.to_thread(prom.stop)
    assert forbidden(cluster, audit_start) == []
