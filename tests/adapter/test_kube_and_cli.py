"""Pods found through the Kubernetes API (kubernetes-asyncio against the session's real kube-apiserver, in a
namespace of the test's own), and the `toposcale adapter` command as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from toposcale.adapter.rules import GpuOwner, Rule, RuleSet, ScrapeSpec
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.pods import KubePods
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import DcgmExporter, Gpu, VllmExporter
from tests.harness.kube_cluster import write_kubeconfig
from tests.harness.real_kube import RealKube
from toposcale import kube
from toposcale.ports import free_port

from .conftest import LOCAL, TOPOSCALE

EXE = TOPOSCALE
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def pod(name: str, ns: str, labels: dict[str, str], phase: str = "Running", ip: str = "127.0.0.1",
        ready: str = "True") -> dict:
    """A Pod as its kubelet reports it; no scheduler binds it (`schedulerName: nobody`): it stays so."""
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
    if ip:
        status["podIP"] = ip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "vllm/vllm-openai"}], "schedulerName": "nobody"},
        "status": status,
    }


@pytest.fixture
def real(kube_cluster: Any) -> Iterator[RealKube]:
    """The session's real kube-apiserver; `real.tag` makes the test's namespaces its own."""
    k = RealKube(kube_cluster)
    k.tag = uuid.uuid4().hex[:6]  # type: ignore[attr-defined]
    try:
        yield k
    finally:
        k.cleanup()


def namespace(real: RealKube, base: str) -> str:
    name = f"{base}-{real.tag}"  # type: ignore[attr-defined]
    real.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


class Relay:
    """A TCP relay in front of the API server that the test can take away, open connections included: what
    a client sees when the API server goes away."""

    def __init__(self, server: str) -> None:
        host, port = server.removeprefix("https://").rsplit(":", 1)
        self.target = (host, int(port))
        self.conns: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.conns |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.conns:
                w.close()
            self.server = None


async def test_pods_from_kubernetes_are_scraped(serve_adapter, real: RealKube, tmp_path: Path) -> None:
    ml, operator = namespace(real, "ml"), namespace(real, "gpu-operator")
    tag = real.tag  # type: ignore[attr-defined]
    vllm = VllmExporter(waiting=2, kv_cache=0.5)
    dcgm = DcgmExporter([Gpu(0, ml, "vllm-0", util=40), Gpu(1, ml, "vllm-1", util=60),
                         Gpu(2, ml, "pending-0", util=99)])
    relay = Relay(real.cluster.server)
    async with vllm, dcgm, relay.running() as server:
        # every pod's IP is loopback, so the rule's port decides which exporter answers
        real.add(pod("vllm-0", ml, {"app": "vllm"}))
        real.add(pod("vllm-1", ml, {"app": "vllm"}))
        real.add(pod("pending-0", ml, {"app": "vllm"}, phase="Pending", ip=""))
        real.add(pod("chat-0", ml, {"app": "chat"}))
        # the exporters of this test only: other tests' exporter pods on the shared server are not ours
        exporters = {"app.kubernetes.io/name": "dcgm-exporter", "toposcale.io/test": tag}
        real.add(pod("dcgm-x", operator, exporters))
        owner = GpuOwner(port=dcgm.port, exporters=",".join(f"{k}={v}" for k, v in exporters.items()))
        rules = RuleSet(rules=[
            Rule(name="waiting", series=["vllm:num_requests_waiting"], aggregation="sum",
                 scrape=ScrapeSpec(port=vllm.port)),
            Rule(name="gpu", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
                 gpu_owner=owner),
        ])
        pki = real.cluster.pki_dir
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server, real.cluster.ca_file,
                                      cert=pki / "admin.crt", key=pki / "admin.key")
        api = await kube.api_client(str(kubeconfig))
        pods = KubePods(api, ttl=0.05)
        source = ScrapeSource(pods, rules, ttl=0.05)
        adapter = await serve_adapter(rules, source, cache_ttl=0.05)

        code, body = await adapter.metric("waiting", namespace=ml, selector="app=vllm")
        assert code == 200, body
        assert body["items"][0]["value"] == "4"  # two Running pods (same exporter), the Pending one skipped
        code, body = await adapter.metric("gpu", namespace=ml, selector="app=vllm")
        assert body["items"][0]["value"] == "50"  # GPUs of vllm-0 and vllm-1 only
        code, body = await adapter.metric("waiting", namespace=f"absent-{tag}")
        assert (code, body["reason"]) == (404, "NotFound")
        real.delete("Pod", "vllm-1", ml)
        await asyncio.sleep(0.1)
        code, body = await adapter.metric("waiting", namespace=ml, selector="app=vllm")
        assert body["items"][0]["value"] == "2"
        await relay.stop()  # the API server goes away: an error, never a made-up value
        await asyncio.sleep(0.1)
        code, body = await adapter.metric("waiting", namespace=ml, selector="app=vllm")
        assert (code, body["reason"]) == (503, "ServiceUnavailable")
        assert "Kubernetes API" in body["message"]
        await pods.close()


async def _get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        for _ in range(150):
            try:
                async with s.get(url) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError(f"nothing answered {url}")


async def test_acceptance_scrape_targets_command(tmp_path: Path) -> None:
    async with VllmExporter(waiting=3) as a, VllmExporter(generation="v0", waiting=2) as b:
        targets = tmp_path / "targets.yaml"
        targets.write_text(yaml.safe_dump([
            {"url": a.url, "labels": {"namespace": "ml", "pod": "vllm-0", "app": "vllm"}},
            {"url": b.url, "labels": {"namespace": "ml", "pod": "vllm-1", "app": "vllm", "tier": "old"}},
        ]))
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            str(EXE), "adapter", "--scrape-targets", str(targets), "--port", str(port), *LOCAL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}{BASE}/namespaces/ml/vllm_requests_waiting"
            code, body = await _get_json(url + "?labelSelector=app%3Dvllm")
            assert (code, body["items"][0]["value"]) == (200, "5")
            code, body = await _get_json(url + "?labelSelector=tier%3Dold")
            assert body["items"][0]["value"] == "2"
            code, body = await _get_json(f"http://127.0.0.1:{port}/apis")
            assert body["kind"] == "APIGroupList"
            assert body["groups"][0]["name"] == "external.metrics.k8s.io"
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        assert any(entry["msg"] == "adapter listening" for entry in lines)  # structured logs


def test_bad_rules_file_fails_at_start_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "rules:\n  - name: q\n    series: ['vllm:num_requests_waiting']\n    aggregation: median\n"
    )
    res = subprocess.run([str(EXE), "adapter", *LOCAL, "--rules", str(bad), "--scrape-targets", "/dev/null",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "rules.0.aggregation" in res.stderr

    targets = tmp_path / "targets.yaml"
    targets.write_text("- url: ftp://x\n  labels: {namespace: ml}\n")
    res = subprocess.run([str(EXE), "adapter", *LOCAL, "--scrape-targets", str(targets), "--port",
                          str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert str(targets) in res.stderr and "0.url" in res.stderr and "'pod'" in res.stderr


async def _raw_get(port: int, path: str, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 request on its own connection; what came back before the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: adapter\r\nConnection: close\r\n{head}\r\n".encode())
    received = bytearray()
    try:
        await writer.drain()
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            received += chunk
    except ConnectionError:  # a server cutting a client off may reset: what arrived before still counts
        pass
    writer.close()
    return bytes(received)


async def test_header_size_follows_the_max_request_header_bytes_flag(tmp_path: Path) -> None:
    """Headers within --max-request-header-bytes are served, whatever aiohttp's own per-field default (8 KiB);
    above it the answer is 431, and the adapter keeps serving."""
    targets = tmp_path / "targets.yaml"
    targets.write_text("[]\n")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "adapter", "--scrape-targets", str(targets), "--port", str(port), "--bind-address",
        "127.0.0.1", "--max-request-header-bytes", "32768", *LOCAL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _get_json(f"http://127.0.0.1:{port}/apis")  # up
        token = "x" * 20 * 1024  # one 20 KiB field, e.g. a long bearer token
        answer = await _raw_get(port, "/healthz", {"X-Long": token})
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        many = {f"X-Remote-Group-{i}": "system:authenticated" for i in range(300)}  # ~12 KiB, 300 fields
        answer = await _raw_get(port, "/healthz", many)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer = await _raw_get(port, "/healthz", {"X-Long": "x" * 40 * 1024})
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        answer = await _raw_get(port, "/healthz", {})
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err


async def test_pod_counts_ready_and_starting(real: RealKube) -> None:
    # vllm_desired_replicas counts the replicas on their way: Pending, or Running but not Ready, and not
    # being deleted; Ready ones are the ones serving
    ml = namespace(real, "ml")
    real.add(pod("ready-0", ml, {"app": "vllm"}))
    real.add(pod("loading-0", ml, {"app": "vllm"}, ready="False"))
    real.add(pod("pending-0", ml, {"app": "vllm"}, phase="Pending", ip=""))
    # being deleted: a finalizer holds the Pod with its deletionTimestamp set until the test lets it go
    gone = pod("leaving-0", ml, {"app": "vllm"}, ready="False")
    gone["metadata"]["finalizers"] = ["toposcale.io/test-hold"]
    real.add(gone)
    real.delete("Pod", "leaving-0", ml)
    assert real.get("Pod", "leaving-0", ml)["metadata"]["deletionTimestamp"]
    real.add(pod("failed-0", ml, {"app": "vllm"}, phase="Failed", ip=""))
    real.add(pod("chat-0", ml, {"app": "chat"}))
    api = await kube.api_client(str(real.cluster.admin_kubeconfig))
    finder = KubePods(api, ttl=0.05)
    try:
        assert await finder.pod_counts(ml, parse_selector("app=vllm")) == (1, 2)
        assert await finder.pod_counts(ml, parse_selector("app=none")) == (0, 0)
    finally:
        await finder.close()
        release = {"metadata": {"finalizers": None}}
        real._call("PATCH", real._url("Pod", "leaving-0", ml), release, "application/merge-patch+json")
