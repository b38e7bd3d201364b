"""A kubelet pod-resources stand-in: a real gRPC server on a unix socket serving `v1.PodResourcesLister` from
the real kubelet proto (the agent's generated code): the agent's client talks to it exactly as to a kubelet.

State is plain data the test sets: `allocatable` (resource -> device IDs) and `pods` (list of
`(namespace, name, container, resource, [device IDs])`), `dynamic` (list of `(namespace, name, container,
claim name, [(driver, pool, device)])`: the DRA devices the kubelet reports in `dynamic_resources`, as
kubelet cm GetDynamicResources fills them, CDI device names included). `delay` makes every call slow;
`allocatable_unimplemented` answers GetAllocatableResources with UNIMPLEMENTED, as kubelets before 1.23
without the feature gate do.

What a real kubelet answers is tested against one (tests/kubelet: the agent's client and `agent --once` on its
socket, the agents of a real-kubelet fleet through a scheduling stream and a kubelet restart). This stand-in
stays for what a real kubelet cannot be made to do on demand, or not within the suite's time: a slow or
UNIMPLEMENTED answer, a socket that is not a kubelet, device IDs that are not the node's GPUs (another
deviceIDStrategy), GPUs the device plugin withholds, other resource names (MIG), DRA dynamic resources (no
DRA driver runs), a fresh agent's exact counters after one step and pods changing between two steps of its
loop within milliseconds (tests/agent), a kubelet failing and coming back with the control plane restarting
around it (tests/cluster), and the five-node fleet of tests/scheduler (8-GPU and NVSwitch boxes, one node per
fixture: five real nodes would cost a minute of start-up and 2-core CPU throughout its tests).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile

import grpc
from toposcale.extender.agent.podresources import api_pb2, api_pb2_grpc


class PodResourcesStandIn(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self) -> None:
        # unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
        self._dir = tempfile.mkdtemp(prefix="podres-")
        self.socket = os.path.join(self._dir, "kubelet.sock")
        self.allocatable: dict[str, list[str]] = {}
        self.pods: list[tuple[str, str, str, str, list[str]]] = []
        self.dynamic: list[tuple[str, str, str, str, list[tuple[str, str, str]]]] = []
        self.delay = 0.0
        self.allocatable_unimplemented = False
        self.calls: dict[str, int] = {"List": 0, "GetAllocatableResources": 0}
        self._server: grpc.aio.Server | None = None

    async def start(self) -> PodResourcesStandIn:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        shutil.rmtree(self._dir, ignore_errors=True)

    async def List(self, request, context):
        self.calls["List"] += 1
        await asyncio.sleep(self.delay)
        by_pod: dict[tuple[str, str], dict[str, api_pb2.ContainerResources]] = {}

        def container(ns: str, pod: str, ctr: str) -> api_pb2.ContainerResources:
            ctrs = by_pod.setdefault((ns, pod), {})
            if ctr not in ctrs:
                ctrs[ctr] = api_pb2.ContainerResources(name=ctr)
            return ctrs[ctr]

        for ns, pod, ctr, resource, ids in self.pods:
            container(ns, pod, ctr).devices.append(
                api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)
            )
        for ns, pod, ctr, claim, devices in self.dynamic:
            container(ns, pod, ctr).dynamic_resources.append(
                api_pb2.DynamicResource(
                    claim_name=claim,
                    claim_namespace=ns,
                    claim_resources=[
                        api_pb2.ClaimResource(
                            cdi_devices=[api_pb2.CDIDevice(name=f"k8s.{driver}/gpu={device}")],
                            driver_name=driver,
                            pool_name=pool,
                            device_name=device,
                        )
                        for driver, pool, device in devices
                    ],
                )
            )
        return api_pb2.ListPodResourcesResponse(
            pod_resources=[
                api_pb2.PodResources(namespace=ns, name=pod, containers=list(ctrs.values()))
                for (ns, pod), ctrs in by_pod.items()
            ]
        )

    async def GetAllocatableResources(self, request, context):
        self.calls["GetAllocatableResources"] += 1
        if self.allocatable_unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method GetAllocatableResources")
        await asyncio.sleep(self.delay)
        return api_pb2.AllocatableResourcesResponse(
            devices=[
                api_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                for r, ids in self.allocatable.items()
            ]
        )
