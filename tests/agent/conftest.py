"""Agent test fixtures: real NVML captures (tests/fixtures/nvml), the kubelet pod-resources stand-in (a real
gRPC server on a unix socket), and the in-process Kubernetes API stand-in (tests/harness/kube_standin.py: the
apiserver's wire format, spoken to the real kubernetes-asyncio client; no kube-apiserver on test machines).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kube_standin import KubeStandIn

from .podresources_standin import PodResourcesStandIn

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
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
            "annotations": annotations or {},
        },
        "status": {"allocatable": {"nvidia.com/gpu": "4"}, "capacity": {"nvidia.com/gpu": "4"}},
    }


@pytest.fixture
async def kube() -> AsyncIterator[KubeStandIn]:
    async with KubeStandIn() as k:
        yield k


@pytest.fixture
async def api(kube: KubeStandIn, tmp_path: Path) -> AsyncIterator[Any]:
    """A real kubernetes-asyncio ApiClient (from toposcale.kube) pointed at the stand-in by a kubeconfig."""
    from toposcale.kube import api_client

    cfg = kube.write_kubeconfig(tmp_path / "kubeconfig")
    client = await api_client(cfg)
    try:
        yield client
    finally:
        await client.close()
