"""deploy/examples/qwen's Deployment for `vllm_desired_replicas` on the real control plane: in-test vLLM
exporters (lab/peers/qwen.py) whose token counters a router-like task drives, a gateway serving its
pending requests (the rule's front door), the rules file with the rule, and the HPA that scales on it
(minReplicas 0).
Used by tests/cluster/test_desired_replicas.py (the real HPA) and tests/keda/test_keda_desired.py (KEDA)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import yaml

from lab.peers.deployed import Deployed, apply_objects
from lab.peers.exporters import Exporter
from lab.peers.qwen import QwenStack, qwen_objects

PRIOR = {"prompt_tokens_s": 1000.0, "generation_tokens_s": 1000.0}
TOKENS_PER_REQUEST = 1000.0


class Gateway(Exporter):
    """The front door: an inference gateway's pending requests per model, as /metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0.0

    def render(self) -> str:
        return (
            "# TYPE gateway_pending_requests gauge\n"
            f'gateway_pending_requests{{model="qwen"}} {self.pending!r}\n'
            'gateway_pending_requests{model="other"} 50.0\n'
        )


def hpa_spec() -> dict[str, Any]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm-qwen"},
        "minReplicas": 0,
        "maxReplicas": 4,
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": "vllm_desired_replicas",
                        "selector": {"matchLabels": {"app": "vllm", "model": "qwen2.5-7b-instruct"}},
                    },
                    "target": {"type": "AverageValue", "averageValue": "1"},
                },
            }
        ],
        "behavior": {
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Pods", "value": 4, "periodSeconds": 2}],
            },
            "scaleDown": {
                "stabilizationWindowSeconds": 0,
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
            },
        },
    }


class DesiredStack(QwenStack):
    """The qwen example with the HPA above and exporters serving token counters driven by `load`."""

    def __init__(
        self, deployed: Deployed, namespace: str, *, hpa: bool = True, first_ip: str = "127.0.0.2"
    ) -> None:
        """`hpa=False`: the Deployment alone (KEDA makes its own HPA)."""
        super().__init__(deployed, namespace, first_ip=first_ip)
        self.with_hpa = hpa
        self.tokens_per_s = 0.0  # prompt tokens per second over all ready pods (generated: a third of it)
        self._task: asyncio.Task[None] | None = None

    async def _pod_running(self, pod: dict[str, Any], ip: str) -> None:
        await super()._pod_running(pod, ip)
        e = self.exporters.get(pod["metadata"]["name"])
        if e is not None:
            e.running = 0.0
            e.prompt_tokens = e.generation_tokens = e.request_success = 0.0

    async def _drive(self) -> None:
        """A router spreading the load evenly over the pods that serve: their counters grow with it."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.25)
            now = loop.time()
            dt, last = now - last, now
            pods = list(self.exporters.values())
            for e in pods:
                share = self.tokens_per_s / len(pods) * dt
                e.prompt_tokens = (e.prompt_tokens or 0.0) + share
                e.generation_tokens = (e.generation_tokens or 0.0) + share / 3
                e.request_success = (e.request_success or 0.0) + share / TOKENS_PER_REQUEST
                e.running = 1.0 if self.tokens_per_s > 0 else 0.0

    async def start(self) -> DesiredStack:
        await self.kubelet.start()
        objs = qwen_objects(self.namespace)
        for o in objs:
            if o["kind"] == "HorizontalPodAutoscaler":
                o["spec"] = hpa_spec()
        if not self.with_hpa:
            objs = [o for o in objs if o["kind"] != "HorizontalPodAutoscaler"]
        await asyncio.to_thread(apply_objects, self.cluster, objs)
        self._task = asyncio.create_task(self._drive())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().stop()


def rules_file(deployed: Deployed, gateway: Gateway, path: Path) -> Path:
    base = yaml.safe_load((deployed.deploy_dir / "adapter" / "base" / "generated" / "rules.yaml").read_text())
    base["rules"] = [r for r in base["rules"] if r["name"] != "vllm_desired_replicas"]  # the built-in one
    base["rules"].append(
        {
            "name": "vllm_desired_replicas",
            "aggregation": "vllm_desired_replicas",
            "window_seconds": 6,
            "desired": {
                "algorithm": {"prior": PRIOR, "cold_start_s": 2, "scale_down_window_s": 12},
                "front_door": {
                    "url": gateway.url,
                    "series": "gateway_pending_requests",
                    "labels": {"model": "qwen"},
                },
            },
        }
    )
    path.write_text(yaml.safe_dump(base))
    return path
