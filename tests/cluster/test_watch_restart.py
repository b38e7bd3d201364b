"""The components across a kube-apiserver restart and an etcd compaction that expires their watches (a real
410 Gone from the real watch cache), each with its own ServiceAccount token:

- the agent (`toposcale agent`, NVML replayed from the real 4x H100 capture, the kubelet pod-resources API
  from the gRPC stand-in) keeps publishing: an allocation made after the restart reaches the Node's
  annotation;
- the extender in watch mode (`nodeCacheCapable: true`) relists and sees that annotation: its prediction for a
  pending 2-GPU pod moves to the GPUs left free;
- the adapter in scrape mode (pods found through the API) keeps serving through the aggregator.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from lab.kube.client import ApiSession
from lab.kube.cluster import free_port
from lab.kube.podresources import PodResourcesStandIn
from lab.objects import make_node
from lab.peers.qwen import QwenStack

from .conftest import ROOT, Deployed, forbidden, kubectl, process, run_adapter, wait_for

TOPOSCALE = Path(sys.executable).parent / "toposcale"
CAPTURE = ROOT / "tests" / "fixtures" / "nvml" / "h100-x4-vm-nvswitch" / "nvml_capture.json"
UUIDS = [  # the capture's GPUs in index order
    "GPU-d18ee334-0283-aa14-30a0-fbb38fd4a135",
    "GPU-488290dd-3675-700a-155b-412da55952b4",
    "GPU-e9511db5-5cb3-f7d6-bd3d-4c48f3381515",
    "GPU-516b4bde-1da2-d515-236e-88546b8989c7",
]
ALLOCATION = "toposcale.io/gpu-allocation"


async def explain(port: int, pod: str) -> dict[str, Any] | None:
    async with aiohttp.ClientSession() as s:
        try:
            async with s.get(f"http://127.0.0.1:{port}/explain", params={"pod": pod}) as r:
                return await r.json() if r.status == 200 else None
        except aiohttp.ClientError:
            return None


def predicted(doc: dict[str, Any] | None, node: str) -> list[str] | None:
    if not doc:
        return None
    for n in doc.get("nodes", []):
        if n.get("node") == node:
            return n.get("gpus")
    return None


async def test_agent_extender_and_adapter_survive_restart_and_compaction(
    deployed: Deployed, tmp_path: Path
) -> None:
    cluster = deployed.cluster
    audit_start = len(cluster.audit_events())
    node = "watch-gpu-0"
    kubelet = await PodResourcesStandIn().start()
    kubelet.allocatable = {"nvidia.com/gpu": list(UUIDS)}
    async with ApiSession(cluster) as api:
        await api.create("/api/v1/nodes", make_node(node, gpus=4))
        await api.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "watch"}}
        )
        # a pending 2-GPU pod nobody schedules: what the extender would give it is its /explain
        await api.create(
            "/api/v1/namespaces/watch/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "pending-2gpu"},
                "spec": {
                    "schedulerName": "nobody",
                    "containers": [
                        {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
                    ],
                },
            },
        )
    agent_port, ext_port = free_port(), free_port()
    agent = [
        str(TOPOSCALE),
        "agent",
        "--node-name",
        node,
        "--from-capture",
        str(CAPTURE),
        "--pod-resources-socket",
        kubelet.socket,
        "--kubeconfig",
        str(deployed.kubeconfigs["toposcale-agent"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(agent_port),
        "--interval",
        "0.5",
        "--min-publish-interval",
        "0.5",
    ]
    extender = [
        str(TOPOSCALE),
        "extender",
        "--kubeconfig",
        str(deployed.kubeconfigs["toposcale-extender"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(ext_port),
    ]
    try:
        async with (
            run_adapter(
                deployed,
                ["--kubeconfig", str(deployed.kubeconfigs["toposcale-adapter"])],
                tmp_path / "adapter.log",
            ) as adapter,
            QwenStack(deployed, "llm-watch", first_ip="127.0.0.60") as stack,
            process(agent, tmp_path / "agent.log") as agent_proc,
            process(extender, tmp_path / "extender.log") as ext_proc,
        ):
            await wait_for(lambda: len(stack.exporters) >= 1, 60, "the vLLM pod")
            stack.set(waiting=5)
            query = (
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm-watch/vllm_requests_waiting"
                "?labelSelector=app%3Dvllm"
            )

            def served(value: str) -> Any:
                def check() -> bool:
                    r = kubectl(cluster, "get", "--raw", query, check=False)
                    return r.returncode == 0 and [i["value"] for i in json.loads(r.stdout)["items"]] == [
                        value
                    ]

                return lambda: asyncio.to_thread(check)

            await wait_for(served("5"), 60, "the adapter's value through the aggregator")
            # all four GPUs free: the extender predicts the first NVLink pair
            first: list[str] = await wait_for(
                lambda: _predicted(ext_port, node), 60, "the extender's prediction"
            )
            assert len(first) == 2

            # the restart, with writes in between and etcd compacted at the latest revision
            before_restart = len(cluster.audit_events())
            await asyncio.to_thread(cluster.restart, "kube-apiserver", down_s=1.0)
            after_ready = len(cluster.audit_events())
            async with ApiSession(cluster) as api:
                for i in range(5):
                    await api.create(
                        "/api/v1/namespaces/watch/configmaps",
                        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{i}"}},
                    )
            await asyncio.to_thread(cluster.etcd_compact)

            # after it: the kubelet gives the pair the extender predicted to a pod
            taken = list(first)  # the device IDs (UUIDs) the device plugin would hand out
            assert set(taken) <= set(UUIDS)
            kubelet.pods = [("watch", "vllm-0", "vllm", "nvidia.com/gpu", taken)]

            async def published() -> bool:
                async with ApiSession(cluster) as api:
                    n = await api.get(f"/api/v1/nodes/{node}")
                ann = n["metadata"].get("annotations", {}).get(ALLOCATION)
                return bool(ann) and sorted(json.loads(ann)["allocated"]) == sorted(taken)

            await wait_for(published, 60, "the agent to publish the new allocation after the restart")

            async def moved() -> list[str] | None:
                got = await _predicted(ext_port, node)
                return got if got and not set(got) & set(first) else None

            second = await wait_for(moved, 60, "the extender to see the new allocation")
            assert len(second) == 2
            stack.set(waiting=9)
            await wait_for(served("9"), 60, "the adapter's value after the restart")
            for p in (agent_proc, ext_proc, adapter.proc):
                assert p.returncode is None, "a component exited across the restart"
        ext_log = (tmp_path / "extender.log").read_text()
        # The reflectors relisted after the restart: on the real 410 of the expired watch, or, when their
        # first call after it met the restarting server's 403 (RBAC not synced yet), on that error (a list,
        # as client-go's reflector does); either way the prediction above moved, so the view is current.
        gone = [
            line
            for line in ext_log.splitlines()
            if "watch history expired, relisting" in line
            or "resource version gone, relisting" in line
            or ("list/watch failed" in line and '"HTTP 4' in line)
        ]
        assert gone, ext_log[-3000:]
        print("extender after the restart:", *gone, sep="\n")
    finally:
        await kubelet.stop()
        async with ApiSession(cluster) as api:
            await api.delete(f"/api/v1/nodes/{node}")
            await api.delete("/api/v1/namespaces/watch")
    assert forbidden(cluster, audit_start, before_restart) == []
    # While a restarted kube-apiserver starts, before /readyz, its RBAC authorizer may not have synced yet and
    # can answer 403 to anyone (kube-apiserver's behaviour, not toposcale's RBAC): those are only reported.
    print("403s while kube-apiserver was starting:", forbidden(cluster, before_restart, after_ready))
    assert forbidden(cluster, after_ready) == []


async def _predicted(port: int, node: str) -> list[str] | None:
    return predicted(await explain(port, "watch/pending-2gpu"), node)
