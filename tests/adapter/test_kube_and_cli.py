"""Pods found through the Kubernetes API (kubernetes-asyncio against tests/harness/kube_standin.py, the
in-process API stand-in speaking the real wire format), and the `toposcale adapter` command as a user runs
it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import yaml
from toposcale.adapter.rules import GpuOwner, Rule, RuleSet, ScrapeSpec
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.pods import KubePods
from toposcale.adapter.sources.scrape import ScrapeSource

from tests.harness.exporters import DcgmExporter, Gpu, VllmExporter
from tests.harness.kube_standin import KubeStandIn
from toposcale.core import kube
from toposcale.core.ports import free_port

from .conftest import LOCAL, TOPOSCALE

EXE = TOPOSCALE
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def pod(name: str, ns: str, labels: dict[str, str], phase: str = "Running", ip: str = "127.0.0.1",
        ready: str = "True") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "vllm/vllm-openai"}]},
        "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


async def test_pods_from_kubernetes_are_scraped(serve_adapter, tmp_path: Path) -> None:
    vllm = VllmExporter(waiting=2, kv_cache=0.5)
    dcgm = DcgmExporter([Gpu(0, "ml", "vllm-0", util=40), Gpu(1, "ml", "vllm-1", util=60),
                         Gpu(2, "ml", "pending-0", util=99)])
    async with KubeStandIn() as k, vllm, dcgm:
        k.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"},
               "status": {"phase": "Active"}})
        # every pod's IP is loopback, so the rule's port decides which exporter answers
        k.add(pod("vllm-0", "ml", {"app": "vllm"}))
        k.add(pod("vllm-1", "ml", {"app": "vllm"}))
        k.add(pod("pending-0", "ml", {"app": "vllm"}, phase="Pending", ip=""))
        k.add(pod("chat-0", "ml", {"app": "chat"}))
        k.add(pod("dcgm-x", "gpu-operator", {"app.kubernetes.io/name": "dcgm-exporter"}))
        rules = RuleSet(rules=[
            Rule(name="waiting", series=["vllm:num_requests_waiting"], aggregation="sum",
                 scrape=ScrapeSpec(port=vllm.port)),
            Rule(name="gpu", series=["DCGM_FI_DEV_GPU_UTIL"], aggregation="avg", per_pod="none",
                 gpu_owner=GpuOwner(port=dcgm.port)),
        ])
        api = await kube.api_client(k.write_kubeconfig(tmp_path / "kubeconfig"))
        source = ScrapeSource(KubePods(api, ttl=0.05), rules, ttl=0.05)
        adapter = await serve_adapter(rules, source, cache_ttl=0.05)

        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert code == 200, body
        assert body["items"][0]["value"] == "4"  # two Running pods (same exporter), the Pending one skipped
        code, body = await adapter.metric("gpu", selector="app=vllm")
        assert body["items"][0]["value"] == "50"  # GPUs of vllm-0 and vllm-1 only
        code, body = await adapter.metric("waiting", namespace="absent")
        assert (code, body["reason"]) == (404, "NotFound")
        k.delete("Pod", "vllm-1", "ml")
        await asyncio.sleep(0.1)
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert body["items"][0]["value"] == "2"
        await k.stop()  # the API server goes away: an error, never a made-up value
        await asyncio.sleep(0.1)
        code, body = await adapter.metric("waiting", selector="app=vllm")
        assert (code, body["reason"]) == (503, "ServiceUnavailable")
        assert "Kubernetes API" in body["message"]


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


async def test_pod_counts_ready_and_starting(tmp_path: Path) -> None:
    # vllm_desired_replicas counts the replicas on their way: Pending, or Running but not Ready, and not
    # being deleted; Ready ones are the ones serving
    async with KubeStandIn() as k:
        k.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"},
               "status": {"phase": "Active"}})
        k.add(pod("ready-0", "ml", {"app": "vllm"}))
        k.add(pod("loading-0", "ml", {"app": "vllm"}, ready="False"))
        k.add(pod("pending-0", "ml", {"app": "vllm"}, phase="Pending", ip=""))
        gone = pod("leaving-0", "ml", {"app": "vllm"}, ready="False")
        gone["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
        k.add(gone)
        k.add(pod("failed-0", "ml", {"app": "vllm"}, phase="Failed", ip=""))
        k.add(pod("chat-0", "ml", {"app": "chat"}))
        api = await kube.api_client(k.write_kubeconfig(tmp_path / "kubeconfig"))
        finder = KubePods(api, ttl=0.05)
        try:
            assert await finder.pod_counts("ml", parse_selector("app=vllm")) == (1, 2)
            assert await finder.pod_counts("ml", parse_selector("app=none")) == (0, 0)
        finally:
            await finder.close()
