"""A fake DRA driver on the session's real control plane (lab/kube/cluster.py): Nodes, the
ResourceSlices NVIDIA's k8s-dra-driver-gpu would publish for them (from the fixture topologies), the
`gpu.nvidia.com` DeviceClass serving `nvidia.com/gpu` (KEP-5004), ResourceClaimTemplates, and claims whose
`status.allocation` the test writes itself to take devices ("earlier claims"). No kubelet: the session's own
kube-scheduler (default profile, DRA GA) allocates and binds; nothing has to run.

`DraLab` works in a namespace of its own; its Nodes carry the taint `toposcale.io/dra-test` (other tests'
pods never land on them) and every object it made is deleted on exit, the DeviceClass included.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any

from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth

from lab import FIXTURES as LAB_FIXTURES
from lab.kube.client import ApiError, ApiSession
from lab.kube.cluster import Cluster
from lab.objects import make_node

Obj = dict[str, Any]
FIXTURES = LAB_FIXTURES / "topologies"
TAINT = {"key": "toposcale.io/dra-test", "value": "true", "effect": "NoSchedule"}
RES = "/apis/resource.k8s.io/v1"
CLASS = dra.DRIVER


class DraLab:
    def __init__(self, cluster: Cluster, *, concurrency: int = 12) -> None:
        self.cluster = cluster
        self.ns = f"dra-{uuid.uuid4().hex[:6]}"
        self.api = ApiSession(cluster)
        self.nodes: list[str] = []
        self.slices: list[str] = []
        self._sem = asyncio.Semaphore(concurrency)
        self.device_class: Obj = {}

    async def __aenter__(self) -> DraLab:
        await self.api.__aenter__()
        await self.api.create("/api/v1/namespaces", {"metadata": {"name": self.ns}})
        with contextlib.suppress(ApiError):
            await self.api.delete(f"{RES}/deviceclasses/{CLASS}")
        self.device_class = await self.api.create(f"{RES}/deviceclasses", synth.gpu_device_class(CLASS))
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(ApiError):
            await self.api.delete(f"/api/v1/namespaces/{self.ns}")
        await self.gather(self.api.delete(f"{RES}/resourceslices/{s}") for s in self.slices)
        await self.gather(self.api.delete(f"/api/v1/nodes/{n}") for n in self.nodes)
        with contextlib.suppress(ApiError):
            await self.api.delete(f"{RES}/deviceclasses/{CLASS}")
        await self.api.__aexit__()

    async def gather(self, coros: Any) -> list[Any]:
        async def one(c: Any) -> Any:
            async with self._sem:
                return await c

        return await asyncio.gather(*(one(c) for c in coros))

    # -- objects --

    async def add_node(self, name: str, slices: list[Obj]) -> None:
        """A Ready, schedulable Node (no GPUs in allocatable: the extended resource goes through DRA)."""
        await self.api.create("/api/v1/nodes", make_node(name, labels={"toposcale.io/dra-test": "true"}))
        self.nodes.append(name)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "in-test",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        await self.api.call(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": {"conditions": [ready]}},
            content_type="application/strategic-merge-patch+json",
        )
        # TaintNodesByCondition tainted it not-ready at creation; no node lifecycle controller lifts it here.
        await self.api.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": [TAINT]}})
        for s in slices:
            await self.api.create(f"{RES}/resourceslices", s)
            self.slices.append(s["metadata"]["name"])

    async def take_devices(self, node: str, devices: list[str]) -> None:
        """An earlier claim holding `devices` of the node's pool: allocated (status written), not reserved."""
        if not devices:
            return
        name = f"taken-{node}"
        spec = {
            "devices": {
                "requests": [{"name": "taken", "exactly": {"deviceClassName": CLASS, "count": len(devices)}}]
            }
        }
        c = await self.api.create(
            f"{RES}/namespaces/{self.ns}/resourceclaims", {"metadata": {"name": name}, "spec": spec}
        )
        c["status"] = {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "taken", "driver": dra.DRIVER, "pool": node, "device": d} for d in devices
                    ]
                }
            }
        }
        await self.api.call("PUT", f"{RES}/namespaces/{self.ns}/resourceclaims/{name}/status", c)

    async def template(self, name: str, count: int, match_pcie_root: bool) -> Obj:
        spec: Obj = {
            "devices": {"requests": [{"name": "gpus", "exactly": {"deviceClassName": CLASS, "count": count}}]}
        }
        if match_pcie_root:
            spec["devices"]["constraints"] = [{"matchAttribute": dra.PCIE_ROOT}]
        return await self.api.create(
            f"{RES}/namespaces/{self.ns}/resourceclaimtemplates",
            {"metadata": {"name": name}, "spec": {"spec": spec}},
        )

    def pod(self, name: str, node: str, *, gpus: int = 0, template: str | None = None) -> Obj:
        container: Obj = {"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {}}
        spec: Obj = {
            "containers": [container],
            "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            # matchFields on metadata.name: NodeAffinity's PreFilter narrows the cycle to this one node.
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                        ]
                    }
                }
            },
        }
        if gpus:
            q = {"nvidia.com/gpu": str(gpus)}
            container["resources"] = {"requests": dict(q), "limits": dict(q)}
        if template:
            spec["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": template}]
            container["resources"] = {"claims": [{"name": "gpus"}]}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }

    async def create_pod(self, pod: Obj) -> Obj:
        return await self.api.create(f"/api/v1/namespaces/{self.ns}/pods", pod)

    async def pods(self) -> dict[str, Obj]:
        got = await self.api.get(f"/api/v1/namespaces/{self.ns}/pods")
        return {p["metadata"]["name"]: p for p in got.get("items", [])}

    async def claims(self) -> dict[str, Obj]:
        got = await self.api.get(f"{RES}/namespaces/{self.ns}/resourceclaims")
        return {c["metadata"]["name"]: c for c in got.get("items", [])}


def outcome(pod: Obj) -> str | None:
    """'bound', 'unschedulable' (the DRA allocator found nothing on the node), or None (not decided yet)."""
    if pod["spec"].get("nodeName"):
        return "bound"
    for c in (pod.get("status") or {}).get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("reason") == "Unschedulable"
            and "cannot allocate all claims" in (c.get("message") or "")
        ):
            return "unschedulable"
    return None


def pod_claim_name(pod: Obj) -> str | None:
    """The claim holding a pod's devices: the scheduler-made one for an extended resource
    (`status.extendedResourceClaimStatus.resourceClaimName`), else the template's
    (`status.resourceClaimStatuses`)."""
    st = pod.get("status") or {}
    ext = st.get("extendedResourceClaimStatus")
    if ext:
        return ext.get("resourceClaimName")
    for s in st.get("resourceClaimStatuses") or []:
        return s.get("resourceClaimName")
    return None
