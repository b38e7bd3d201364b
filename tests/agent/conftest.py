"""Agent test fixtures: real NVML captures (tests/fixtures/nvml), the kubelet pod-resources stand-in (a real
gRPC server on a unix socket), and the real kube-apiserver of the session's control plane (tests/conftest.py),
reached with the agent's own ServiceAccount token through the real kubernetes-asyncio client.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.kube.client import RealKube
from lab.kube.podresources import PodResourcesStandIn
from lab.objects import make_node

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NVML = FIXTURES / "nvml"
X4 = NVML / "h100-x4-vm-nvswitch"
X4B = NVML / "h100-x4-vm-nvswitch-b"  # a second 4x H100 machine, captured after the first one's fixes
VM1 = NVML / "h100-vm-1gpu"
TOPOLOGIES = FIXTURES / "topologies"

# The real 4x H100 capture's GPU UUIDs in index order (h100-x4-vm-nvswitch/smi_q.xml shows them).
X4_UUIDS = [
    "GPU-d18ee334-0283-aa14-30a0-fbb38fd4a135",
    "GPU-488290dd-3675-700a-155b-412da55952b4",
    "GPU-e9511db5-5cb3-f7d6-bd3d-4c48f3381515",
    "GPU-516b4bde-1da2-d515-236e-88546b8989c7",
]


def load_x4() -> dict[str, Any]:
    return copy.deepcopy(json.loads((X4 / "nvml_capture.json").read_text()))


@pytest.fixture
async def kubelet() -> AsyncIterator[PodResourcesStandIn]:
    stand_in = await PodResourcesStandIn().start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()


def node(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A 4-GPU Node as its kubelet registers it, before (or with) the agent's annotations."""
    return make_node(name, gpus=4, annotations=annotations)


@pytest.fixture
def kube(kube_cluster: Any, deployed: Any) -> Iterator[RealKube]:
    """The real kube-apiserver of the session's control plane; Nodes a test adds are deleted after it."""
    k = RealKube(kube_cluster)
    k.audit_start = len(kube_cluster.audit_events())  # type: ignore[attr-defined]
    try:
        yield k
    finally:
        k.cleanup()


@pytest.fixture
async def api(kube: RealKube, deployed: Any) -> AsyncIterator[Any]:
    """A real kubernetes-asyncio ApiClient (toposcale.core.kube) with the agent's own ServiceAccount token:
    every call the agent code makes in these tests is decided by the real RBAC of deploy/agent."""
    from toposcale.core.kube import api_client

    client = await api_client(str(deployed.kubeconfigs["toposcale-agent"]))
    try:
        yield client
    finally:
        await client.close()
