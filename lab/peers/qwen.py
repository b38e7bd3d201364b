"""deploy/examples/qwen on the real control plane, with in-test vLLM exporters where its pods would run.

The example's objects (Namespace, Deployment, HPA, Service; its PodMonitors and PVC are opt-in components)
are applied as the deploy renders them, into a namespace of the test's choosing. The in-test kubelet binds the
Deployment's pods (`schedulerName: toposcale-scheduler`: no real scheduler is under test here), marks them
Running and Ready with pod IPs 127.0.0.2, 127.0.0.3, ..., and a VllmExporter (real vLLM V1 exposition text)
listens at `<podIP>:8000`, the port the default rules scrape.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

from lab.kube.client import ApiSession
from lab.kube.kubelet import FakeKubelet
from lab.objects import make_node
from lab.peers.deployed import CRD_KINDS, ROOT, Deployed, apply_objects, kubectl, render
from lab.peers.exporters import VllmExporter

VLLM_PORT = 8000


def qwen_objects(namespace: str, *, scale_down: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for o in render(ROOT / "deploy" / "examples" / "qwen"):
        if o["kind"] in CRD_KINDS:
            continue
        o = copy.deepcopy(o)
        if o["kind"] == "Namespace":
            o["metadata"]["name"] = namespace
        else:
            o["metadata"]["namespace"] = namespace
        if o["kind"] == "HorizontalPodAutoscaler" and scale_down is not None:
            o["spec"]["behavior"]["scaleDown"] = scale_down
        out.append(o)
    return out


class QwenStack:
    def __init__(
        self,
        deployed: Deployed,
        namespace: str,
        *,
        nodes: int = 2,
        scale_down: dict[str, Any] | None = None,
        first_ip: str = "127.0.0.2",
        file_sd: Path | None = None,
    ) -> None:
        self.deployed = deployed
        self.cluster = deployed.cluster
        self.namespace = namespace
        self.scale_down = scale_down
        self.exporters: dict[str, VllmExporter] = {}  # pod name -> its exporter
        self.waiting_first = 0.0  # the queue of the oldest pod; the others' are 0
        self.kv_cache = 0.1
        self.mode = "ok"
        self.file_sd = file_sd
        self.kubelet = FakeKubelet(
            self.cluster,
            [make_node(f"{namespace}-gpu-{i}", gpus=8) for i in range(nodes)],
            binder=True,
            on_running=self._pod_running,
            on_deleted=self._pod_deleted,
            first_ip=first_ip,
        )

    async def _pod_running(self, pod: dict[str, Any], ip: str) -> None:
        if pod["metadata"]["namespace"] != self.namespace:
            return
        e = VllmExporter(waiting=0.0, running=1.0, kv_cache=self.kv_cache, host=ip, port=VLLM_PORT)
        e.mode = self.mode
        await e.start()
        self.exporters[pod["metadata"]["name"]] = e
        self._apply_values()

    async def _pod_deleted(self, pod: dict[str, Any]) -> None:
        e = self.exporters.pop(pod["metadata"]["name"], None)
        if e is not None:
            await e.stop()
        self._apply_values()

    def _apply_values(self) -> None:
        for i, e in enumerate(self.exporters.values()):  # insertion order: the first pod first
            e.waiting = self.waiting_first if i == 0 else 0.0
            e.kv_cache = self.kv_cache
            e.mode = self.mode
        if self.file_sd is not None:
            # Prometheus file-based discovery of the running pods, as a PodMonitor's pod discovery gives it:
            # the pod's address with its namespace, name and `app` label.
            groups = [
                {"targets": [e.address], "labels": {"namespace": self.namespace, "pod": name, "app": "vllm"}}
                for name, e in self.exporters.items()
            ]
            tmp = self.file_sd.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.file_sd)

    def set(
        self, *, waiting: float | None = None, kv_cache: float | None = None, mode: str | None = None
    ) -> None:
        if waiting is not None:
            self.waiting_first = waiting
        if kv_cache is not None:
            self.kv_cache = kv_cache
        if mode is not None:
            self.mode = mode
        self._apply_values()

    async def start(self) -> QwenStack:
        await self.kubelet.start()
        await asyncio.to_thread(
            apply_objects, self.cluster, qwen_objects(self.namespace, scale_down=self.scale_down)
        )
        return self

    async def stop(self) -> None:
        # Scale to 0 and remove the pods at once (no real kubelet would finish a graceful deletion), then
        # delete the namespace without waiting: kube-controller-manager's cached discovery can keep an
        # aggregated group stale for up to 30 s after its APIService came back (namespace deletion waits).
        await asyncio.to_thread(
            kubectl,
            self.cluster,
            "scale",
            "-n",
            self.namespace,
            "deployment/vllm-qwen",
            "--replicas=0",
            check=False,
        )
        await asyncio.to_thread(
            kubectl,
            self.cluster,
            "delete",
            "pods",
            "-n",
            self.namespace,
            "--all",
            "--grace-period=0",
            "--force",
            check=False,
        )
        await asyncio.to_thread(
            kubectl, self.cluster, "delete", "namespace", self.namespace, "--wait=false", check=False
        )
        await self.kubelet.stop()
        for e in self.exporters.values():
            await e.stop()
        self.exporters.clear()

    async def __aenter__(self) -> QwenStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def get(self, path: str) -> dict[str, Any]:
        async with ApiSession(self.cluster) as api:
            return await api.get(path)

    async def hpa(self) -> dict[str, Any]:
        return await self.get(
            f"/apis/autoscaling/v2/namespaces/{self.namespace}/horizontalpodautoscalers/vllm-qwen"
        )

    async def deployment(self) -> dict[str, Any]:
        return await self.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/vllm-qwen")

    async def hpa_events(self) -> list[dict[str, Any]]:
        r = await asyncio.to_thread(
            kubectl,
            self.cluster,
            "get",
            "events",
            "-n",
            self.namespace,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=vllm-qwen",
        )
        return json.loads(r.stdout)["items"]

    async def describe_hpa(self) -> str:
        r = await asyncio.to_thread(
            kubectl, self.cluster, "describe", "hpa", "-n", self.namespace, "vllm-qwen"
        )
        return r.stdout


def condition(hpa: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in hpa.get("status", {}).get("conditions") or []:
        if c["type"] == kind:
            return c
    return {}
