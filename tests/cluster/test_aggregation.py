"""external.metrics.k8s.io through the real aggregator: kube-apiserver proxies to the adapter process on
loopback (ExternalName Service `localhost`, the APIService's caBundle from deploy's make-certs.py), the
adapter trusts the aggregator's front-proxy certificate from the real `extension-apiserver-authentication`
ConfigMap and authorizes with real SubjectAccessReviews, all with its own ServiceAccount token.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lab.kube.cluster import Cluster, write_kubeconfig
from lab.peers.qwen import QwenStack

from .conftest import Deployed, forbidden, kubectl, run_adapter, wait_for

QUERY = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/vllm_requests_waiting?labelSelector=app%3Dvllm"


def user_kubeconfig(cluster: Cluster, tmp: Path, name: str, groups: tuple[str, ...] = ()) -> Path:
    from lab.pki import KubePki

    pki = KubePki(tmp / f"pki-{name}")
    # a person's client certificate from the cluster CA (as `kubeadm kubeconfig user` makes one)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate((cluster.pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((cluster.pki_dir / "ca.key").read_bytes(), None)
    pki.leaf(name, (ca_cert, ca_key), name, orgs=groups, client=True)  # type: ignore[arg-type]
    return write_kubeconfig(
        tmp / f"{name}.kubeconfig",
        cluster.server,
        cluster.ca_file,
        cert=pki.dir / f"{name}.crt",
        key=pki.dir / f"{name}.key",
        user=name,
    )


def raw(cluster: Cluster, path: str, kubeconfig: Path | None = None, *extra: str) -> tuple[int, str, str]:
    r = kubectl(cluster, "get", "--raw", path, *extra, kubeconfig=kubeconfig, check=False)
    return r.returncode, r.stdout, r.stderr


async def test_kubectl_reads_the_metric_through_the_real_aggregator(
    deployed: Deployed, tmp_path: Path
) -> None:
    cluster = deployed.cluster
    audit_start = len(cluster.audit_events())
    # The adapter outlives the namespace: with its APIService unavailable, the namespace controller cannot
    # discover every API and a namespace deletion waits (kube-controller-manager's behaviour).
    async with run_adapter(
        deployed,
        ["--kubeconfig", str(deployed.kubeconfigs["toposcale-adapter"])],
        tmp_path / "adapter.log",
    ) as adapter:
        async with QwenStack(deployed, "llm") as stack:
            await wait_for(lambda: len(stack.exporters) >= 1, 60, "the vLLM pod to run")
            stack.set(waiting=7, kv_cache=0.4)

            async def served() -> str | None:
                rc, out, _ = await asyncio.to_thread(raw, cluster, QUERY)
                # (the example's HPA reads it too: an answer from before the queue was set may be cached 2 s)
                return out if rc == 0 and '"value":"7"' in out.replace(" ", "") else None

            # the aggregator marks the APIService Available once it reaches the adapter
            body = json.loads(await wait_for(served, 60, "the aggregated API to answer 7"))
            assert body["kind"] == "ExternalMetricValueList"
            assert [i["value"] for i in body["items"]] == ["7"]
            assert body["items"][0]["metricName"] == "vllm_requests_waiting"

            # what the HPA controller's own identity reads (the ClusterRoleBinding in deploy/)
            rc, out, err = await asyncio.to_thread(
                raw,
                cluster,
                QUERY,
                None,
                "--as=system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                "--as-group=system:serviceaccounts",
            )
            assert rc == 0, err
            assert json.loads(out)["items"][0]["value"] == "7"

            # the value follows the exporters (the adapter's cache is 2 s)
            stack.set(waiting=12)

            async def twelve() -> bool:
                rc, out, _ = await asyncio.to_thread(raw, cluster, QUERY)
                return rc == 0 and [i["value"] for i in json.loads(out)["items"]] == ["12"]

            await wait_for(twelve, 20, "the new queue length")

            # a user the cluster knows but RBAC does not let read the group
            kc = user_kubeconfig(cluster, tmp_path, "mallory", ("dev",))
            rc, out, err = await asyncio.to_thread(raw, cluster, QUERY, kc)
            assert rc != 0
            assert (
                "Forbidden" in err and 'User "mallory" cannot list resource "vllm_requests_waiting"' in err
            ), err

            # discovery through the aggregator lists the rules' metrics
            r = await asyncio.to_thread(
                kubectl, cluster, "api-resources", "--api-group=external.metrics.k8s.io", "-o", "name"
            )
            names = set(r.stdout.split())
            assert {
                "vllm_requests_waiting.external.metrics.k8s.io",
                "vllm_kv_cache_usage.external.metrics.k8s.io",
            } <= names, r.stdout

            # an unknown namespace is the adapter's 404, passed through as a Status
            rc, out, err = await asyncio.to_thread(
                raw, cluster, "/apis/external.metrics.k8s.io/v1beta1/namespaces/nope/vllm_requests_waiting"
            )
            assert rc != 0 and "NotFound" in err, err
            assert adapter.proc.returncode is None
    assert forbidden(cluster, audit_start) == [], "the adapter's ServiceAccount got a 403"
    mine = [
        e
        for e in cluster.audit_events()[audit_start:]
        if e["user"]["username"] == "system:serviceaccount:toposcale:toposcale-adapter"
    ]
    verbs = {(e["verb"], e["objectRef"]["resource"]) for e in mine if e.get("objectRef")}
    # it really used its token for what deploy/ grants: SARs, pod lists, the auth ConfigMap
    assert ("create", "subjectaccessreviews") in verbs and ("list", "pods") in verbs, verbs
