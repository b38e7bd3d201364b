"""The acceptance flags on the real `toposcale adapter` process: TLS from files, front-proxy and client-CA
authentication from the extension-apiserver-authentication ConfigMap, SubjectAccessReviews, the real kubectl
as the client, plain HTTP refused. Kubernetes is the in-process stand-in (lab/kube/standin.py, real
wire format) that the adapter reaches with --authentication-kubeconfig / --authorization-kubeconfig; the
metric source is an in-test vLLM exporter in the adapter's --scrape-targets mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from lab.kube.standin import KubeStandIn
from lab.peers.exporters import VllmExporter
from toposcale.core.ports import free_port

from .conftest import PKI, auth_configmap
from .test_kubectl import kubeconfig, kubectl

TOPOSCALE = Path(sys.executable).parent / "toposcale"
QUERY = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/vllm_requests_waiting?labelSelector=app%3Dvllm"


@contextlib.asynccontextmanager
async def adapter_process(argv: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(str(TOPOSCALE), "adapter", *argv, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def wait_serving(port: int, ctx: Any, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"adapter exited {proc.returncode}:\n{tail(log)}")
            try:
                async with s.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"adapter never became healthy:\n{tail(log)}")


@pytest.fixture
async def exporter() -> AsyncIterator[VllmExporter]:
    e = VllmExporter(waiting=7, running=1, kv_cache=0.5)
    await e.start()
    yield e
    await e.stop()


async def test_adapter_with_acceptance_flags(pki: PKI, kube: KubeStandIn, exporter: VllmExporter,
                                             tmp_path: Path) -> None:
    kube.add(auth_configmap(pki))
    sars: list[dict[str, Any]] = []

    def decide(spec: dict[str, Any]) -> Any:
        sars.append(spec)
        return spec["user"] in ("system:serviceaccount:kube-system:horizontal-pod-autoscaler", "alice")

    kube.sar_decider = decide
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump([{"url": exporter.url, "labels": {"namespace": "llm", "pod": "vllm-0",
                                                                         "app": "vllm"}}]))
    port = free_port()
    kc = kube.kubeconfig  # type: ignore[attr-defined]
    log = tmp_path / "adapter.log"
    argv = ["--scrape-targets", str(targets), "--port", str(port), "--bind-address", "127.0.0.1",
            "--tls-cert-file", str(pki.serving.cert_path),
            "--tls-private-key-file", str(pki.serving.key_path),
            "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--authorization-always-allow-paths", "/healthz,/livez,/readyz"]
    async with adapter_process(argv, log) as proc:
        ca_only = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        await wait_serving(port, ca_only, proc, log)
        url = f"https://127.0.0.1:{port}"

        # the aggregator: front-proxy certificate + identity headers
        fp = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        fp.load_cert_chain(pki.front_proxy.cert_path, pki.front_proxy.key_path)
        hdrs = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                "X-Remote-Group": "system:serviceaccounts"}
        async with aiohttp.ClientSession() as s:
            async with s.get(url + QUERY, ssl=fp, headers=hdrs) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["kind"] == "ExternalMetricValueList" and body["items"][0]["value"] == "7"
            async with s.get(url + QUERY, ssl=ca_only, headers=hdrs) as r:  # spoofed: no certificate
                assert r.status == 401
            async with s.get(url + "/metrics", ssl=ca_only) as r:
                assert r.status == 401, "/metrics is guarded"
        assert sars[0]["resourceAttributes"] == {"namespace": "llm", "verb": "list",
                                                 "group": "external.metrics.k8s.io", "version": "v1beta1",
                                                 "resource": "vllm_requests_waiting"}

        # a person with kubectl and a client certificate from the cluster CA
        rc, out, err = await kubectl(kubeconfig(tmp_path / "kc-alice", url, pki.ca.cert_path, pki.alice),
                                     "get", "--raw", QUERY)
        assert rc == 0, err
        assert json.loads(out)["items"][0]["value"] == "7"
        bob = pki.root.client(pki.ca, "bob")
        rc, out, err = await kubectl(kubeconfig(tmp_path / "kc-bob", url, pki.ca.cert_path, bob),
                                     "get", "--raw", QUERY)
        assert rc != 0 and 'User "bob" cannot list resource "vllm_requests_waiting"' in err, err

        # plain HTTP on the TLS port: not served, answered as kube-apiserver answers it
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 400
            assert await r.text() == "Client sent an HTTP request to an HTTPS server.\n"
    text = log.read_text()
    assert '"fingerprint": "SHA256:' in text, "the serving certificate's fingerprint is logged"


async def test_adapter_without_credentials_fails_clearly(tmp_path: Path) -> None:
    """No kubeconfig and not in a pod: a clear message and exit code 2, not a traceback."""
    log = tmp_path / "adapter.log"
    argv = ["--scrape-targets", str(tmp_path / "none.yaml"), "--port", str(free_port()),
            "--cert-dir", str(tmp_path / "certs"), "--authentication-kubeconfig", str(tmp_path / "missing")]
    async with adapter_process(argv, log) as proc:
        rc = await asyncio.wait_for(proc.wait(), 60)
    assert rc == 2
    text = log.read_text()
    assert "--insecure-allow-anonymous" in text and "Traceback" not in text


async def test_adapter_with_no_cluster_at_all_serves_only_what_the_flags_authorize(
        pki: PKI, exporter: VllmExporter, tmp_path: Path) -> None:
    """Not in a pod, no kubeconfig anywhere: like k8s.io/apiserver with an optional remote kubeconfig, the
    adapter starts (the issue-2 acceptance command runs as written), warns, trusts only the CA flags and
    authorizes only system:masters — an anonymous caller still gets 401, never data."""
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump([{"url": exporter.url, "labels": {"namespace": "llm", "pod": "vllm-0",
                                                                         "app": "vllm"}}]))
    port = free_port()
    log = tmp_path / "adapter.log"
    argv = ["--scrape-targets", str(targets), "--port", str(port),
            "--tls-cert-file", str(pki.serving.cert_path),
            "--tls-private-key-file", str(pki.serving.key_path),
            "--client-ca-file", str(pki.ca.cert_path)]
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env["HOME"] = str(home)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(str(TOPOSCALE), "adapter", *argv, stdout=out, stderr=out,
                                                    env=env)
    try:
        ca_only = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        await wait_serving(port, ca_only, proc, log)
        admin = pki.root.client(pki.ca, "admin", groups=["system:masters"])
        as_admin = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        as_admin.load_cert_chain(admin.cert_path, admin.key_path)
        as_alice = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        as_alice.load_cert_chain(pki.alice.cert_path, pki.alice.key_path)
        url = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + QUERY, ssl=ca_only) as r:
                assert r.status == 401
            async with s.get(url + QUERY, ssl=as_alice) as r:
                assert r.status == 403, "no SubjectAccessReview possible: only system:masters is authorized"
            async with s.get(url + QUERY, ssl=as_admin) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["items"][0]["value"] == "7"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert "no Kubernetes credentials" in log.read_text()
