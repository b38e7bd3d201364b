"""An in-test "kubelet" for fake Nodes on the real control plane (lab/kube/cluster.py); the real kubelet
runs in tests/kubelet (lab/kube/kubelet_lab.py).

It registers fake Nodes (Ready, with capacity), watches the real API server for pods bound to them and marks
each one Running and Ready with a pod IP, the way a kubelet's status manager does (PATCH of `pods/status`).
Each pod gets its own loopback address (127.0.0.2, 127.0.0.3, ...) so that in-test exporters can listen at
`<podIP>:<port>` as a pod's container would; `on_running(pod, ip)` lets a test start one there.

What it does not do: run containers, probe, report node heartbeats (the node lifecycle controller is off),
or delete pods gracefully: a pod with a deletionTimestamp is removed at once (grace period 0), as a kubelet
would after its containers stopped.

`binder=True` also binds pending pods of `scheduler_name` to the least-loaded fake node through the
`pods/binding` subresource. It stands in for a scheduler in tests that are not about scheduling (the HPA and
aggregation tests; the scheduler tests run the real kube-scheduler with the toposcale extender instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lab.kube.client import ApiError, ApiSession
from lab.kube.cluster import Cluster

logger = logging.getLogger("tests.kubelet")
Obj = dict[str, Any]


class FakeKubelet:
    def __init__(
        self,
        cluster: Cluster,
        nodes: list[Obj],
        *,
        binder: bool = False,
        scheduler_name: str = "toposcale-scheduler",
        on_running: Callable[[Obj, str], Awaitable[None]] | None = None,
        on_deleted: Callable[[Obj], Awaitable[None]] | None = None,
        first_ip: str = "127.0.0.2",
    ) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.node_names = {n["metadata"]["name"] for n in nodes}
        self.binder = binder
        self.scheduler_name = scheduler_name
        self.on_running = on_running
        self.on_deleted = on_deleted
        self._next_ip = ipaddress.ip_address(first_ip)
        self.ips: dict[str, str] = {}  # "ns/name" -> pod IP
        self.bound: dict[str, str] = {}  # "ns/name" -> node
        self._api: ApiSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._handled: set[str] = set()
        self.errors: list[str] = []

    async def start(self) -> FakeKubelet:
        self._api = await ApiSession(self.cluster).__aenter__()
        for n in self.nodes:
            name = n["metadata"]["name"]
            with contextlib.suppress(ApiError):
                await self._api.delete(f"/api/v1/nodes/{name}")
            await self._api.create("/api/v1/nodes", n)
            await self.set_node_ready(name)
        self._task = asyncio.create_task(self._run())
        return self

    async def set_node_ready(self, name: str) -> None:
        assert self._api is not None
        now = _now()
        await self._api.call(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "in-test kubelet",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ]
                }
            },
            content_type="application/strategic-merge-patch+json",
        )

    async def stop(self, *, delete_nodes: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._api is not None:
            if delete_nodes:
                for name in self.node_names:
                    with contextlib.suppress(ApiError):
                        await self._api.delete(f"/api/v1/nodes/{name}")
            await self._api.__aexit__()

    async def __aenter__(self) -> FakeKubelet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        assert self._api is not None
        rv = ""
        while True:
            try:
                if not rv:
                    listing = await self._api.get("/api/v1/pods")
                    rv = listing["metadata"]["resourceVersion"]
                    for pod in listing["items"]:
                        await self._handle("ADDED", pod)
                async for ev in self._api.watch(
                    "/api/v1/pods",
                    {"resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "300"},
                ):
                    if ev["type"] == "ERROR":
                        rv = ""
                        break
                    rv = ev["object"]["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        await self._handle(ev["type"], ev["object"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API server restarting, a 410: relist and go on
                self.errors.append(str(e))
                rv = ""
                await asyncio.sleep(0.5)

    def _ip_for(self, key: str) -> str:
        if key not in self.ips:
            self.ips[key] = str(self._next_ip)
            self._next_ip += 1
        return self.ips[key]

    async def _handle(self, kind: str, pod: Obj) -> None:
        assert self._api is not None
        meta, spec = pod["metadata"], pod.get("spec", {})
        key = f"{meta['namespace']}/{meta['name']}"
        node = spec.get("nodeName", "")
        if kind == "DELETED":
            self._handled.discard(key)
            self.bound.pop(key, None)
            if self.on_deleted is not None and node in self.node_names:
                await self.on_deleted(pod)
            return
        if not node:
            if self.binder and spec.get("schedulerName") == self.scheduler_name and key not in self.bound:
                await self._bind(pod)
            return
        if node not in self.node_names:
            return
        if meta.get("deletionTimestamp"):
            await self._api.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                params={"gracePeriodSeconds": "0"},
            )
            return
        self.bound[key] = node
        if key in self._handled:
            return
        self._handled.add(key)
        ip = self._ip_for(key)
        if self.on_running is not None:
            await self.on_running(pod, ip)
        await self.mark_running(pod, ip)

    async def _bind(self, pod: Obj) -> None:
        assert self._api is not None
        load = {n: 0 for n in sorted(self.node_names)}
        for n in self.bound.values():
            if n in load:
                load[n] += 1
        target = min(load, key=lambda n: (load[n], n))
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        self.bound[key] = target
        try:
            await self._api.create(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": target},
                },
            )
        except ApiError as e:
            self.bound.pop(key, None)
            self.errors.append(str(e))

    async def mark_running(self, pod: Obj, ip: str, *, ready: bool = True) -> None:
        assert self._api is not None
        meta, spec = pod["metadata"], pod["spec"]
        now = _now()
        ready_s = "True" if ready else "False"
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready_s, "lastTransitionTime": now},
                {"type": "Ready", "status": ready_s, "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": ready,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for c in spec.get("containers", [])
            ],
        }
        try:
            await self._api.call(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"status": status},
                content_type="application/merge-patch+json",
            )
        except ApiError as e:
            if e.status != 404:
                self.errors.append(str(e))


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
