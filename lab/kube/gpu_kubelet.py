"""An in-test kubelet that plays the NVIDIA device plugin's part too, for the tests against the real
kube-scheduler (tests/scheduler).

It extends lab/kube/kubelet.py's FakeKubelet (fake Ready Nodes, pods bound to them marked Running): when
a pod is bound to one of its nodes it assigns GPUs the way the kubelet and the NVIDIA device plugin do. The
kubelet hands the plugin the node's free device IDs in Go map order, and the plugin's GetPreferredAllocation
runs go-gpuallocator's best-effort policy on them: here the **real** policy runs (the Go program of
tests/gpuallocator, built by `scripts/gpuallocator.sh bin`), on the node's free GPUs in an order shuffled for
every pod. The IDs it returns are what this node's kubelet pod-resources API (the gRPC stand-in of
lab/kube/podresources.py) reports from then on, so the real `toposcale agent` of that node
publishes them in `toposcale.io/gpu-allocation`. When the pod is deleted its GPUs are free again.

Everything runs on an event loop in a thread of its own: the agents poll the pod-resources servers every
0.5 s, between tests too, so the servers must never wait on a test's loop. Tests read `assigned`, `held()`
and `free()` from their own thread.

The Go program's view of a node's hardware is what NVML would answer there, built as the differential test
tests/extender/test_allocator_vs_go.py builds it (`nvml_of_model` for `nvidia-smi topo -m` fixtures,
`nvml_of_capture` for NVML captures), so go-gpuallocator derives the links itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from toposcale.extender.agent.discovery import discover
from toposcale.extender.agent.replay import ReplayBackend, load_capture
from toposcale.extender.pods import gpu_request
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.topo_text import parse_topo_text

from lab.kube.cluster import Cluster
from lab.kube.kubelet import FakeKubelet
from lab.kube.podresources import PodResourcesStandIn
from lab.objects import make_node

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
RESOURCE = "nvidia.com/gpu"
# What deploy/ expects of a GPU node: the taint the vLLM example and the agent tolerate, the label the agent's
# DaemonSet selects (GPU Operator feature discovery sets it).
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_LABEL = {"nvidia.com/gpu.present": "true"}


@dataclass
class GpuNode:
    """One fake GPU node: its hardware (a topo -m fixture or an NVML capture) and its kubelet's state."""

    name: str
    source: Path  # tests/fixtures/topologies/*.txt or tests/fixtures/nvml/*/nvml_capture.json
    topo: Topology = field(init=False)
    nvml: dict[str, Any] = field(init=False)  # the Go program's input for this box
    go_ids: list[str] = field(init=False)  # Go device index -> device-plugin ID
    standin: PodResourcesStandIn = field(init=False)

    def __post_init__(self) -> None:
        from lab.peers.gpuallocator import NVSWITCH_FIXTURES, nvml_of_capture, nvml_of_model

        if self.source.suffix == ".json":
            cap = load_capture(self.source)
            self.topo = discover(ReplayBackend(cap)).topology
            self.nvml = nvml_of_capture(self.name, cap)
            self.go_ids = [g["uuid"] for g in self.nvml["gpus"]]  # the agent's ids are the UUIDs
        else:
            self.topo = parse_topo_text(self.source.read_text())
            self.nvml = nvml_of_model(self.name, self.topo, switched=self.source.stem in NVSWITCH_FIXTURES)
            self.go_ids = [g.id for g in self.topo.gpus]  # GPU0..: the agent's ids for a topo -m file
        assert sorted(self.go_ids) == sorted(g.id for g in self.topo.gpus), self.name
        self.standin = PodResourcesStandIn()
        self.standin.allocatable = {RESOURCE: [g.id for g in self.topo.gpus]}

    @property
    def gpus(self) -> int:
        return len(self.topo)

    @property
    def agent_source(self) -> list[str]:
        flag = "--from-capture" if self.source.suffix == ".json" else "--from-topo-file"
        return [flag, str(self.source)]

    def node_object(self, labels: dict[str, str]) -> dict[str, Any]:
        return make_node(
            self.name, gpus=self.gpus, labels={**GPU_LABEL, **labels}, taints=[dict(GPU_TAINT)]
        )


class GoAllocator:
    """The go-gpuallocator program: one run per allocation, as the device plugin calls it once per pod."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.calls = 0

    async def allocate(self, node: GpuNode, available: list[str], size: int) -> list[str]:
        index = {gid: i for i, gid in enumerate(node.go_ids)}
        doc = {
            "topologies": [node.nvml],
            "queries": [
                {"topology": 0, "available": [index[a] for a in available], "required": [], "size": size}
            ],
        }
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(json.dumps(doc).encode())
        self.calls += 1
        answer = json.loads(out) if out else {}
        if proc.returncode != 0 or answer.get("error"):
            raise RuntimeError(
                f"gpuallocator failed ({proc.returncode}): {answer.get('error')} {err[-500:]!r}"
            )
        got = answer["answers"][0]
        if -1 in got:
            raise RuntimeError(f"gpuallocator padded the answer for {node.name}: {got}")
        return [node.go_ids[i] for i in got]


@dataclass
class Assignment:
    node: str
    gpus: list[str]  # in the order go-gpuallocator returned them
    offered: list[str]  # the free IDs, in the order the kubelet passed them


class GpuKubelet:
    """FakeKubelet + a pod-resources server per node + the real device-plugin policy, on a loop thread."""

    def __init__(
        self, cluster: Cluster, nodes: list[GpuNode], go_binary: str, *, labels: dict[str, str], seed: int = 1
    ) -> None:
        self.cluster = cluster
        self.nodes = {n.name: n for n in nodes}
        self.go = GoAllocator(go_binary)
        self.labels = labels
        self.rng = random.Random(seed)
        self.assigned: dict[str, Assignment] = {}  # "ns/name" -> GPUs the device plugin gave the pod
        self.errors: list[str] = []  # admissions that could not be served (more GPUs asked than free, ...)
        self.released: list[str] = []
        self.warnings: list[str] = []  # what went wrong around the pods, not with them
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gpu-kubelet", daemon=True)
        self._fake: FakeKubelet | None = None
        self._reconciler: asyncio.Task[None] | None = None

    # -- from the test's thread --

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> GpuKubelet:
        self._thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.run(self._stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)

    def held(self, node: str) -> set[str]:
        with self._lock:
            return {g for a in self.assigned.values() if a.node == node for g in a.gpus}

    def free(self, node: str) -> set[str]:
        return {g.id for g in self.nodes[node].topo.gpus} - self.held(node)

    def assignment(self, key: str) -> Assignment | None:
        with self._lock:
            return self.assigned.get(key)

    # -- on the loop thread --

    async def _start(self) -> None:
        for n in self.nodes.values():
            await n.standin.start()
        self._fake = FakeKubelet(
            self.cluster,
            [n.node_object(self.labels) for n in self.nodes.values()],
            on_running=self._admit,
            on_deleted=self._release,
        )
        await self._fake.start()
        api = self._fake._api
        assert api is not None
        for n in self.nodes.values():
            # kube-apiserver's TaintNodesByCondition admission taints every new Node not-ready; the node
            # lifecycle controller (not run here) would lift it once the kubelet reports Ready.
            await api.merge_patch(f"/api/v1/nodes/{n.name}", {"spec": {"taints": [dict(GPU_TAINT)]}})
        self._reconciler = asyncio.create_task(self._reconcile())

    async def _reconcile(self) -> None:
        """What a kubelet's pod sync does: GPUs of pods the API no longer has are freed. FakeKubelet's watch
        relists after an error (a 410 once kube-apiserver compacts etcd, every 5 minutes), and a pod deleted
        in that gap never comes as a DELETED event."""
        api = self._fake._api if self._fake is not None else None
        assert api is not None
        while True:
            await asyncio.sleep(1.0)
            with self._lock:
                before = set(self.assigned)  # assigned before the list: a pod bound after it is not in it
            try:
                listing = await api.get("/api/v1/pods", params={"fieldSelector": "spec.nodeName!="})
            except Exception as exc:  # the API server restarting: next round
                self.warnings.append(f"reconcile: {exc}")
                continue
            live = {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in listing["items"]}
            gone = sorted(before - live)
            if gone:
                self.warnings.append(f"reconcile freed the GPUs of pods deleted unseen: {gone}")
            for key in gone:
                ns, name = key.split("/", 1)
                await self._release({"metadata": {"namespace": ns, "name": name}})

    async def _stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
        if self._fake is not None:
            self.errors += self._fake.errors
            await self._fake.stop()
        for n in self.nodes.values():
            await n.standin.stop()

    async def _admit(self, pod: dict[str, Any], _ip: str) -> None:
        """What the kubelet's device manager does at admission: ask the device plugin for the pod's GPUs."""
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        node = self.nodes[pod["spec"]["nodeName"]]
        k = gpu_request(pod, RESOURCE)
        if k <= 0 or self.assignment(key) is not None:
            return
        free = sorted(self.free(node.name))
        self.rng.shuffle(free)  # Go map order: different for every pod
        if len(free) < k:
            self.errors.append(f"{key} on {node.name}: asks {k} GPUs, {len(free)} free")
            return
        try:
            gpus = await self.go.allocate(node, free, k)
        except RuntimeError as exc:
            self.errors.append(f"{key} on {node.name}: {exc}")
            return
        with self._lock:
            self.assigned[key] = Assignment(node.name, gpus, free)
        self._sync(node)

    async def _release(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        with self._lock:
            a = self.assigned.pop(key, None)
        if a is not None:
            self.released.append(key)
            self._sync(self.nodes[a.node])

    def _sync(self, node: GpuNode) -> None:
        """The node's pod-resources answer: one container per pod holding its GPUs."""
        with self._lock:
            rows = [
                (key.split("/")[0], key.split("/")[1], "main", RESOURCE, list(a.gpus))
                for key, a in self.assigned.items()
                if a.node == node.name
            ]
        node.standin.pods = rows
