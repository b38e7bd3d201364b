"""toposcale deployed on the real control plane (lab/kube/cluster.py), for the session fixture
`deployed` (tests/conftest.py).

`deployed`: deploy/all applied with `kubectl apply --server-side` (certificates from the deploy's own
make-certs.py), with the opt-in custom-metrics component listed in it as its comment says (the custom.metrics
tests need that API), then the toposcale Deployments scaled to 0: there is no kubelet to run their pods, so
each component runs as a process on loopback instead, authenticated by its own ServiceAccount's token (a
Secret of type kubernetes.io/service-account-token filled by the real token controller). The adapter Service
becomes `type: ExternalName, externalName: localhost` so the real aggregator proxies to the adapter process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.kube.client import KUBECTL, kubectl
from lab.kube.cluster import Cluster, write_kubeconfig
from lab.procs import Child, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOPOSCALE = BIN / "toposcale"
# Kinds whose CRDs a bare control plane does not have (prometheus-operator, cert-manager, KEDA): left out of
# the apply and named in the test's output.
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "Certificate", "Issuer", "ScaledObject", "TriggerAuthentication"}
COMPONENTS = ("toposcale-adapter", "toposcale-extender", "toposcale-agent")


def render(kustomization: Path) -> list[dict[str, Any]]:
    r = subprocess.run(
        [str(KUBECTL), "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def apply_objects(cluster: Cluster, objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Server-side apply of every object whose kind the cluster serves; returns (applied, left-out kinds)."""
    keep = [o for o in objects if o["kind"] not in CRD_KINDS]
    left = sorted({f"{o['kind']}/{o['metadata']['name']}" for o in objects if o["kind"] in CRD_KINDS})
    kubectl(
        cluster,
        "apply",
        "--server-side",
        "--field-manager=toposcale-tests",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(keep),
    )
    return keep, left


@dataclass
class Deployed:
    cluster: Cluster
    objects: list[dict[str, Any]]
    left_out: list[str]
    deploy_dir: Path  # the copy of deploy/ with make-certs.py's output
    kubeconfigs: dict[str, Path]  # ServiceAccount name -> kubeconfig with its token

    @property
    def serving_cert(self) -> Path:
        return self.deploy_dir / "adapter" / "self-signed" / "tls.crt"

    @property
    def serving_key(self) -> Path:
        return self.deploy_dir / "adapter" / "self-signed" / "tls.key"

    @property
    def serving_ca(self) -> Path:
        return self.deploy_dir / "adapter" / "self-signed" / "ca.crt"


def sa_token(cluster: Cluster, namespace: str, sa: str, *, timeout: float = 60) -> str:
    """A long-lived token for `sa` from the real token controller (kube-controller-manager)."""
    name = f"{sa}-test-token"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"kubernetes.io/service-account.name": sa},
        },
    }
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(secret))
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = kubectl(cluster, "get", "secret", "-n", namespace, name, "-o", "json")
        data = json.loads(r.stdout).get("data") or {}
        if data.get("token"):
            return base64.b64decode(data["token"]).decode()
        time.sleep(0.3)
    raise AssertionError(f"the token controller never filled {namespace}/{name}")


def deploy_toposcale(cluster: Cluster, work: Path) -> Deployed:
    """deploy/all (+ adapter/custom-metrics) applied, Deployments at 0, the ExternalName Service, a token per
    component."""
    deploy = work / "deploy"
    shutil.copytree(ROOT / "deploy", deploy)
    subprocess.run(
        [
            sys.executable,
            str(deploy / "adapter" / "self-signed" / "make-certs.py"),
            "--out",
            str(deploy / "adapter" / "self-signed"),
        ],
        check=True,
        capture_output=True,
    )
    kust = deploy / "all" / "kustomization.yaml"
    k = yaml.safe_load(kust.read_text())
    k["components"] = ["../adapter/custom-metrics"]  # the opt-in, as deploy/all's comment says
    kust.write_text(yaml.safe_dump(k, sort_keys=False))
    objects, left = apply_objects(cluster, render(deploy / "all"))
    # No kubelet runs the pods: the components run as local processes with the ServiceAccounts' tokens.
    for o in objects:
        if o["kind"] == "Deployment" and o["metadata"]["namespace"] == "toposcale":
            kubectl(cluster, "scale", "-n", "toposcale", "deployment", o["metadata"]["name"], "--replicas=0")
    # The aggregator resolves an ExternalName Service to https://<externalName>:<APIService port>.
    kubectl(cluster, "delete", "service", "-n", "toposcale", "toposcale-adapter")
    kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "toposcale-adapter", "namespace": "toposcale"},
                "spec": {"type": "ExternalName", "externalName": "localhost"},
            }
        ),
    )
    kcs = {}
    for sa in COMPONENTS:
        token = sa_token(cluster, "toposcale", sa)
        kcs[sa] = write_kubeconfig(
            work / f"{sa}.kubeconfig", cluster.server, cluster.ca_file, token=token, user=sa
        )
    return Deployed(cluster, objects, left, deploy, kcs)


def forbidden(cluster: Cluster, since: int = 0, until: int | None = None) -> list[str]:
    """403s the API server gave toposcale's ServiceAccounts (its audit log), for events since..until."""
    out = []
    for ev in cluster.audit_events()[since:until]:
        code = (ev.get("responseStatus") or {}).get("code")
        if code == 403:
            out.append(f"{ev['user']['username']} {ev['verb']} {ev['requestURI']}")
    return out




# --- toposcale's components as processes against the deploy ------------------------------------------------


@contextlib.asynccontextmanager
async def process(argv: list[str], log: Path) -> AsyncIterator[Child]:
    """A toposcale command as a child process, output to `log`; terminated (then killed) on exit."""
    async with Child(argv, log, extra_env={"PYTHONUNBUFFERED": "1"}) as child:
        yield child


@dataclass
class AdapterProc:
    port: int
    proc: Child
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def run_adapter(d: Deployed, args: list[str], log: Path) -> AsyncIterator[AdapterProc]:
    """`toposcale adapter` with the deploy's serving certificate and its ServiceAccount's credentials, and the
    APIService pointed at it (port and caBundle)."""
    port = free_port()
    kc = str(d.kubeconfigs["toposcale-adapter"])
    argv = [
        str(TOPOSCALE),
        "adapter",
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        "--tls-cert-file",
        str(d.serving_cert),
        "--tls-private-key-file",
        str(d.serving_key),
        "--authentication-kubeconfig",
        kc,
        "--authorization-kubeconfig",
        kc,
        "--rules",
        str(d.deploy_dir / "adapter" / "base" / "generated" / "rules.yaml"),
        *args,
    ]
    async with process(argv, log) as proc:
        ap = AdapterProc(port, proc, log)
        ctx = ssl.create_default_context(cafile=str(d.serving_ca))
        ctx.check_hostname = False
        url = f"https://127.0.0.1:{port}/healthz"
        await proc.until(lambda: asyncio.to_thread(http_ok, url, context=ctx), 30, "healthy")
        ca = base64.b64encode(d.serving_ca.read_bytes()).decode()
        for apiservice in ("v1beta1.external.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"):
            await asyncio.to_thread(
                kubectl,
                d.cluster,
                "patch",
                "apiservice",
                apiservice,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"service": {"port": port}, "caBundle": ca}}),
            )
        yield ap
