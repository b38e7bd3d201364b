"""The real KEDA operator and metrics server (scripts/keda.sh, v2.21.0) as processes on loopback, against the
session's real control plane (lab/kube/cluster.py).

How it is wired, and why:
- KEDA's CRDs (ScaledObject, TriggerAuthentication, ...) from the same release are applied server-side and
  removed at the end, so the session's cluster is left as it was found.
- Operator and metrics server talk over KEDA's own mutual-TLS gRPC (the metrics server asks the operator for
  every metric): both read ca.crt / tls.crt / tls.key from one --cert-dir, as KEDA's cert rotation would lay
  them out; here a test CA signs one certificate (server and client) for 127.0.0.1 and the Service names.
- The metrics server is KEDA's aggregated external.metrics.k8s.io server. The cluster has one APIService
  v1beta1.external.metrics.k8s.io (toposcale's, from the session's deploy/): for the test it is pointed at
  KEDA's Service (type ExternalName, localhost: the aggregator dials localhost:<port> and verifies the
  certificate for keda-metrics-apiserver.keda.svc), as a KEDA cluster with deploy/adapter/keda would have it,
  and given back to toposcale afterwards.
- Both run with the admin kubeconfig: KEDA's own RBAC is not under test here, toposcale's is (the adapter runs
  with its ServiceAccount's token).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from lab.builds import keda_bin_dir
from lab.kube.cluster import Cluster, free_port
from lab.peers.deployed import kubectl
from lab.pki import KubePki
from lab.procs import Child

APISERVICE = "v1beta1.external.metrics.k8s.io"
KEDA_NS = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"


def make_tls(directory: Path, *hosts: str) -> Path:
    """ca.crt, tls.crt, tls.key in `directory`: a test CA and one certificate for `hosts` (server and
    client)."""
    pki = KubePki(directory)
    ca = pki.ca("ca", f"test CA {directory.name}")
    pki.leaf("tls", ca, hosts[0], hosts=hosts, server=True, client=True)
    (directory / "ca.key").unlink()  # only the certificates are needed from here on
    return directory


@contextlib.asynccontextmanager
async def child(argv: list[str], log: Path, env: dict[str, str]) -> AsyncIterator[Child]:
    async with Child(argv, log, extra_env=env) as proc:
        yield proc


async def wait_https(url: str, ctx: ssl.SSLContext | None, proc: Child, log: Path,
                     limit: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    async with aiohttp.ClientSession() as s:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise AssertionError(f"{url}: the process exited {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url, ssl=ctx if ctx is not None else False) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise AssertionError(f"{url} never answered 200:\n{tail(log)}")


def tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


@dataclass
class Keda:
    cluster: Cluster
    work: Path
    operator_log: Path
    metrics_log: Path

    def logs(self) -> str:
        return (f"--- keda operator log:\n{tail(self.operator_log)}\n"
                f"--- keda metrics server log:\n{tail(self.metrics_log)}")

    def operator_log_size(self) -> int:
        return self.operator_log.stat().st_size

    def cache_closed_reads(self, since: int) -> list[str]:
        """The operator's debug lines (after byte `since`) where a trigger read met its scalers cache closed:
        KEDA v2.21.0's race. A ScaledObject's scalers cache is cleared after any failing read, by the poll
        loop and by the metrics server's path (the HPA's queries) alike; a poll tick that reads the closed
        cache skips the trigger (pkg/scaling/scale_handler.go, getScalerState: observeMetric returns
        cache.ErrCacheClosed, `continue`, kedacore/keda#7737), so a failing trigger counts as neither active
        nor failed in that tick, and with no other trigger active KEDA scales to minReplicaCount."""
        with self.operator_log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [ln for ln in text.splitlines() if "scalers cache is closed" in ln]


def _apply(cluster: Cluster, obj: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "--field-manager=toposcale-tests",
            "-f", "-", stdin=json.dumps(obj))


@contextlib.asynccontextmanager
async def run_keda(cluster: Cluster, work: Path) -> AsyncIterator[Keda]:
    bins = keda_bin_dir()
    certs = make_tls(
        work / "certs",
        "127.0.0.1",
        "localhost",
        f"{METRICS_SERVICE}.{KEDA_NS}.svc",
        f"keda-operator.{KEDA_NS}.svc",
    )
    env = {
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "WATCH_NAMESPACE": "",  # all namespaces, as KEDA's manifests set it
        "POD_NAMESPACE": KEDA_NS,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NS,
    }
    kc = str(cluster.admin_kubeconfig)
    kubectl(cluster, "apply", "--server-side", "--field-manager=toposcale-tests", "-f", str(bins / "crds"))
    await wait_established(cluster, ["scaledobjects.keda.sh", "triggerauthentications.keda.sh"])
    _apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NS}})
    original = json.loads(kubectl(cluster, "get", "apiservice", APISERVICE, "-o", "json").stdout)["spec"]
    grpc_port, probe_port, ms_port, ms_metrics_port = free_port(), free_port(), free_port(), free_port()
    operator_log, metrics_log = work / "keda-operator.log", work / "keda-metrics-server.log"
    operator = [
        str(bins / "keda"),
        # debug: each trigger read is logged with its error, so a test can tell KEDA's scalers-cache race
        # (Keda.cache_closed_reads) from a value the scaler served
        "--zap-log-level=debug",
        "--zap-encoder=console",
        f"--cert-dir={certs}",
        f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
        f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        "--metrics-bind-address=0",  # its Prometheus endpoint is not needed
    ]
    metrics_server = [
        str(bins / "keda-adapter"),
        "--zap-log-level=info",
        "--zap-encoder=console",
        "--bind-address=127.0.0.1",
        f"--secure-port={ms_port}",
        f"--port={ms_metrics_port}",
        f"--cert-dir={certs}",  # also the gRPC client's ca.crt / tls.crt / tls.key
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-private-key-file={certs / 'tls.key'}",
        f"--metrics-service-address=127.0.0.1:{grpc_port}",
        f"--lister-kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
    ]
    try:
        async with child(operator, operator_log, env) as op:
            await wait_https(f"http://127.0.0.1:{probe_port}/readyz", None, op, operator_log)
            async with child(metrics_server, metrics_log, env) as ms:
                ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
                ctx.check_hostname = False
                # /healthz needs no credentials (the delegated authorizer's always-allow paths)
                await wait_https(f"https://127.0.0.1:{ms_port}/healthz", ctx, ms, metrics_log)
                _apply(cluster, {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": METRICS_SERVICE, "namespace": KEDA_NS},
                    "spec": {"type": "ExternalName", "externalName": "localhost"},
                })
                ca = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
                kubectl(cluster, "patch", "apiservice", APISERVICE, "--type=merge", "-p", json.dumps({
                    "spec": {"service": {"namespace": KEDA_NS, "name": METRICS_SERVICE, "port": ms_port},
                             "caBundle": ca},
                }))
                keda = Keda(cluster, work, operator_log, metrics_log)
                await wait_available(cluster, keda)
                yield keda
    finally:
        # toposcale's APIService back as the session's deploy/ made it; KEDA's CRDs removed (the test deleted
        # their objects while the operator still ran to take its finalizers off)
        kubectl(cluster, "patch", "apiservice", APISERVICE, "--type=merge", "-p",
                json.dumps({"spec": {"service": original["service"], "caBundle": original.get("caBundle")}}),
                check=False)
        # waited for: a CRD still terminating refuses the next test's objects
        kubectl(cluster, "delete", "-f", str(bins / "crds"), "--timeout=60s", "--ignore-not-found",
                check=False)
        # The `keda` namespace (only the ExternalName Service) stays: deleted without waiting, it raced with
        # the next test's Service (the aggregator then answered 503 for KEDA's metrics all that test long).


async def wait_established(cluster: Cluster, crds: list[str], limit: float = 60) -> None:
    # (`kubectl wait` fails outright on a CRD whose status the API server has not written yet)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        r = await asyncio.to_thread(kubectl, cluster, "get", "crd", *crds, "-o", "json")
        items = json.loads(r.stdout)["items"]
        if all(
            any(c["type"] == "Established" and c["status"] == "True"
                for c in (i.get("status") or {}).get("conditions") or [])
            for i in items
        ):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"KEDA's CRDs {crds} never became Established")


async def wait_available(cluster: Cluster, keda: Keda, limit: float = 60) -> None:
    """The aggregator reports the APIService Available (it reached KEDA's metrics server with the CA)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: Any = None
    while loop.time() < deadline:
        r = await asyncio.to_thread(kubectl, cluster, "get", "apiservice", APISERVICE, "-o", "json")
        conds = json.loads(r.stdout).get("status", {}).get("conditions") or []
        last = next((c for c in conds if c["type"] == "Available"), None)
        if last and last["status"] == "True":
            return
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"{APISERVICE} never became Available on KEDA's metrics server: {last}\n{keda.logs()}"
    )
