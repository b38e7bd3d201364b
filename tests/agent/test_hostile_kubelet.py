"""The agent's pod-resources client against a hostile kubelet socket (issue 28): a server that never answers,
a List answer past the message-size bound, garbage and duplicate device IDs. Each ends in "allocation unknown"
(`allocated: null`, a one-line reason of bounded length) or the allocation the kubelet really gave, never a
made-up or partial list; the agent's /healthz keeps answering meanwhile. Unix sockets only, a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import aiohttp
from toposcale.extender.agent.podresources import client as podresources
from toposcale.extender.agent.podresources.client import PodResourcesClient
from toposcale.extender.agent.replay import ReplayBackend
from toposcale.extender.agent.service import AgentService, ServiceConfig
from toposcale.extender.topology.annotations import ALLOCATION_ANNOTATION

from lab.kube.podresources import PodResourcesStandIn
from lab.peers.hostile import probe_during

from .conftest import X4_UUIDS, load_x4


@contextlib.contextmanager
def _silent_socket() -> Iterator[str]:
    """A unix socket that takes connections (the kernel's backlog) and what they send, but never answers."""
    folder = tempfile.mkdtemp(prefix="podres-")
    path = os.path.join(folder, "kubelet.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(64)
        yield path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _agent(socket_path: str) -> AgentService:
    """The agent service without an apiserver (nothing published): its documents and /healthz."""
    cfg = ServiceConfig(node_name="gpu-1", socket=socket_path, host="127.0.0.1", port=0, kubelet_timeout=0.5)
    return AgentService(cfg, backend=ReplayBackend(load_x4()))


async def test_a_socket_that_never_answers_is_unknown_within_the_timeout_and_healthz_answers() -> None:
    with _silent_socket() as path:
        svc = _agent(path)
        await svc.start_http()
        first = await svc.step()  # the agent has observed once: /healthz says ok, kubelet trouble reported
        docs: list[dict] = [first or {}]

        async def steps() -> None:
            for _ in range(3):
                docs.append(await svc.step() or {})
                svc.kubelet._retry_at = 0.0  # ask again at once: the second step meets the silent socket too

        async def healthz() -> int:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{svc.port}/healthz") as r:
                return r.status

        try:
            probes = await asyncio.wait_for(probe_during(steps(), healthz), 10)
        finally:
            await svc.stop()
    assert probes.failed == 0, probes
    assert [d[ALLOCATION_ANNOTATION]["allocated"] for d in docs] == [None] * 4  # unknown, never []
    assert "timed out" in (svc.state.kubelet_error or "")


async def test_a_list_answer_over_the_size_bound_is_an_error_never_a_partial_allocation(
    kubelet: PodResourcesStandIn, monkeypatch
) -> None:
    monkeypatch.setattr(podresources, "MAX_MESSAGE_BYTES", 64 * 1024)  # the bound, small for the suite
    kubelet.pods = [("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[0]])] + [
        ("a", f"p{i}", "c", "nvidia.com/gpu", [f"GPU-{i:060d}"]) for i in range(2000)
    ]
    client = PodResourcesClient(kubelet.socket)
    try:
        snap = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.allocated is None and snap.holders == {}
    assert "RESOURCE_EXHAUSTED" in (snap.error or ""), snap.error


async def test_garbage_device_ids_are_unknown_with_a_short_reason(kubelet: PodResourcesStandIn) -> None:
    kubelet.allocatable = {"nvidia.com/gpu": X4_UUIDS}
    kubelet.pods = [
        ("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[0]]),
        ("a", "q", "c", "nvidia.com/gpu", ["", "\x00\n" + "G" * 200_000, "GPU-" + "f" * 100_000]),
    ]
    svc = _agent(kubelet.socket)
    try:
        docs = await svc.step()
    finally:
        await svc.stop()
    assert docs is not None and docs[ALLOCATION_ANNOTATION]["allocated"] is None
    reason = svc.state.kubelet_error or ""
    assert "not the discovered GPUs' ids" in reason and len(reason) < 1024 and "\n" not in reason, len(reason)


async def test_a_gpu_listed_twice_is_held_once_by_a_known_holder(kubelet: PodResourcesStandIn) -> None:
    kubelet.allocatable = {"nvidia.com/gpu": X4_UUIDS}
    kubelet.pods = [
        ("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[1], X4_UUIDS[1]]),
        ("b", "q", "c", "nvidia.com/gpu", [X4_UUIDS[1], X4_UUIDS[2]]),
        ("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[2]]),
    ]
    client = PodResourcesClient(kubelet.socket)
    try:
        snap = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.error is None and snap.allocated == {X4_UUIDS[1], X4_UUIDS[2]}
