"""deploy/ on the real API server: accepted by server-side apply, and RBAC proven by the real authorizer.

kube-apiserver's own validation, defaulting and admission decide here (no offline schema). Kinds whose CRDs a
bare control plane lacks (PodMonitor, ServiceMonitor, Certificate, ...) are left out and named.
"""

from __future__ import annotations

import json
from typing import Any

from lab.kube.cluster import Cluster
from lab.peers.qwen import qwen_objects

from .conftest import CRD_KINDS, ROOT, Deployed, apply_objects, kubectl, render


def test_all_self_signed_is_accepted_and_every_object_exists(deployed: Deployed) -> None:
    # deploy/all needs no CRD: everything in it was applied
    assert deployed.left_out == []
    kinds = {o["kind"] for o in deployed.objects}
    assert {
        "Namespace",
        "Deployment",
        "DaemonSet",
        "APIService",
        "ClusterRole",
        "ConfigMap",
        "Secret",
        "KubeSchedulerConfiguration",
    } - kinds == {"KubeSchedulerConfiguration"}
    for o in deployed.objects:
        ns = o["metadata"].get("namespace")
        args = ["get", o["kind"].lower() + "." + _group(o), o["metadata"]["name"], "-o", "json"]
        if ns:
            args += ["-n", ns]
        if o["kind"] == "Service" and o["metadata"]["name"] == "toposcale-adapter":
            continue  # replaced by the ExternalName Service (conftest)
        live = json.loads(kubectl(deployed.cluster, *args).stdout)
        assert live["metadata"]["name"] == o["metadata"]["name"]
    # the APIService is registered with the aggregator
    svc = json.loads(
        kubectl(deployed.cluster, "get", "apiservice", "v1beta1.external.metrics.k8s.io", "-o", "json").stdout
    )
    assert svc["spec"]["group"] == "external.metrics.k8s.io"
    assert svc["spec"]["service"]["name"] == "toposcale-adapter"


def _group(o: dict[str, Any]) -> str:
    group = o["apiVersion"].rpartition("/")[0]
    return group or ""


def test_the_qwen_example_is_accepted(deployed: Deployed) -> None:
    # into a namespace of its own (the aggregation test uses `llm`), otherwise as the deploy renders it
    objects = render(ROOT / "deploy" / "examples" / "qwen")
    # no CRD kind: the PodMonitors are an opt-in component (test_install_safety.py applies the example bare)
    assert [o["kind"] for o in objects if o["kind"] in CRD_KINDS] == []
    apply_objects(deployed.cluster, qwen_objects("llm-manifests"))
    try:
        hpa = json.loads(
            kubectl(deployed.cluster, "get", "hpa", "-n", "llm-manifests", "vllm-qwen", "-o", "json").stdout
        )
        # defaulting and conversion by the real server kept the example's two External metrics
        assert [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == [
            "vllm_requests_waiting",
            "vllm_kv_cache_usage",
        ]
        dep = json.loads(
            kubectl(
                deployed.cluster, "get", "deployment", "-n", "llm-manifests", "vllm-qwen", "-o", "json"
            ).stdout
        )
        assert dep["spec"]["template"]["spec"]["schedulerName"] == "toposcale-scheduler"
        # the weights in the pod's own cache: no PVC a cluster without a ReadWriteMany class leaves Pending
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "models", "emptyDir": {"sizeLimit": "40Gi"}} in volumes
    finally:
        kubectl(deployed.cluster, "delete", "namespace", "llm-manifests", "--wait=false", check=False)


def test_the_qwen_dra_example_is_accepted(deployed: Deployed) -> None:
    # server-side dry run into a namespace of its own (created for real: a dry-run Namespace is not there
    # for the objects after it); what the server would store is read from the dry run's answer
    ns = "llm-dra-manifests"
    objects = []
    for o in render(ROOT / "deploy" / "examples" / "qwen-dra"):
        if o["kind"] in CRD_KINDS or o["kind"] == "Namespace":
            continue
        o["metadata"]["namespace"] = ns
        objects.append(o)
    kubectl(deployed.cluster, "create", "namespace", ns)
    try:
        out = kubectl(
            deployed.cluster, "apply", "--server-side", "--dry-run=server", "--field-manager=toposcale-tests",
            "-o", "json", "-f", "-", stdin="\n".join(json.dumps(o) for o in objects),
        ).stdout
        items = json.loads(out)
        items = items.get("items", [items])
        by_kind = {i["kind"]: i for i in items}
        tpl = by_kind["ResourceClaimTemplate"]["spec"]["spec"]["devices"]
        assert tpl["requests"][0]["exactly"] == {
            "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 4
        }
        pcie_root = "resource.kubernetes.io/pcieRoot"
        assert tpl["constraints"] == [{"requests": ["gpus"], "matchAttribute": pcie_root}]
        pod = by_kind["Deployment"]["spec"]["template"]["spec"]
        assert pod["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": "vllm-qwen-gpus"}]
        assert pod["schedulerName"] == "toposcale-scheduler"
        res = pod["containers"][0]["resources"]
        assert res["claims"] == [{"name": "gpus"}] and "nvidia.com/gpu" not in res["requests"]
    finally:
        kubectl(deployed.cluster, "delete", "namespace", ns, "--wait=false", check=False)


def test_a_broken_manifest_is_refused_by_the_real_server(deployed: Deployed) -> None:
    # the same apply path rejects what the server's validation rejects (so acceptance above means something)
    bad = render(ROOT / "deploy" / "extender")
    dep = next(o for o in bad if o["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    r = kubectl(
        deployed.cluster,
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps(dep),
        check=False,
    )
    assert r.returncode != 0
    assert "containerPort" in r.stderr and "must be between 1 and 65535" in r.stderr, r.stderr


# --------------------------------------------------------------------- RBAC, decided by the real authorizer


def rules_review(cluster: Cluster, kubeconfig: Any, namespace: str) -> set[tuple[str, str, str, str]]:
    """What the caller may do in `namespace`, as the real authorizer lists it (SelfSubjectRulesReview)."""
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    # --validate=false: kubectl's client-side validation would list CRDs, which none of these may do
    out = json.loads(
        kubectl(
            cluster,
            "create",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "json",
            kubeconfig=kubeconfig,
            stdin=json.dumps(body),
        ).stdout
    )
    got = set()
    for rule in out["status"]["resourceRules"]:
        for g in rule.get("apiGroups", [""]):
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        got.add((g, r, v, name))
    return got


def declared(deployed: Deployed, sa: str, namespace: str) -> set[tuple[str, str, str, str]]:
    """The rules deploy/ binds to `sa` in `namespace`, with built-in roles read from the server itself."""
    out: set[tuple[str, str, str, str]] = set()
    for b in deployed.objects:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] != namespace:
            continue
        if not any(
            s.get("kind") == "ServiceAccount"
            and s["name"] == sa
            and s.get("namespace", "toposcale") == "toposcale"
            for s in b["subjects"]
        ):
            continue
        ref = b["roleRef"]
        args = ["get", ref["kind"].lower(), ref["name"], "-o", "json"]
        if ref["kind"] == "Role":
            args += ["-n", b["metadata"]["namespace"]]
        role = json.loads(kubectl(deployed.cluster, *args).stdout)
        for rule in role.get("rules") or []:
            for g in rule.get("apiGroups", [""]):
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            out.add((g, r, v, name))
    return out


def test_each_service_account_may_do_exactly_what_deploy_binds(deployed: Deployed, tmp_path: Any) -> None:
    cluster = deployed.cluster
    # what any authenticated service account may do (system:basic-user, system:discovery, ...)
    # (in `default`: the audit log proving "no 403" watches the toposcale namespace's accounts)
    kubectl(cluster, "create", "serviceaccount", "-n", "default", "rbac-baseline")
    try:
        from lab.kube.cluster import write_kubeconfig

        from .conftest import sa_token

        base_kc = write_kubeconfig(
            tmp_path / "baseline.kubeconfig",
            cluster.server,
            cluster.ca_file,
            token=sa_token(cluster, "default", "rbac-baseline"),
        )
        for ns in ("llm", "kube-system"):
            baseline = rules_review(cluster, base_kc, ns)
            for sa, kc in deployed.kubeconfigs.items():
                own = rules_review(cluster, kc, ns) - baseline
                want = declared(deployed, sa, ns) - baseline
                assert own == want, f"{sa} in {ns}: authorizer {sorted(own ^ want)} differs from deploy/"
                assert own, f"{sa} has no grants of its own in {ns}"
    finally:
        kubectl(cluster, "delete", "serviceaccount", "-n", "default", "rbac-baseline", check=False)
        kubectl(cluster, "delete", "secret", "-n", "default", "rbac-baseline-test-token", check=False)


def test_the_real_authorizer_answers_the_calls_each_component_makes(deployed: Deployed) -> None:
    cases = {
        "toposcale-agent": [
            ("patch", "nodes", "", True),
            ("get", "nodes", "", True),
            ("list", "pods", "", False),
            ("update", "nodes", "", False),
            ("list", "resourceslices.resource.k8s.io", "", True),
            ("list", "resourceclaims.resource.k8s.io", "", True),
            ("update", "resourceclaims.resource.k8s.io", "llm", False),
            ("list", "deviceclasses.resource.k8s.io", "", False),
        ],
        "toposcale-extender": [
            ("watch", "nodes", "", True),
            ("list", "pods", "", True),
            ("patch", "nodes", "", False),
            ("get", "secrets", "toposcale", False),
            ("watch", "resourceclaimtemplates.resource.k8s.io", "", True),
            ("create", "resourceclaimtemplates.resource.k8s.io", "llm", False),
        ],
        "toposcale-adapter": [
            ("list", "pods", "llm", True),
            ("get", "namespaces", "", True),
            ("create", "subjectaccessreviews.authorization.k8s.io", "", True),
            ("create", "tokenreviews.authentication.k8s.io", "", True),
            ("watch", "pods", "llm", False),
            ("get", "secrets", "llm", False),
        ],
    }
    for sa, checks in cases.items():
        for verb, resource, ns, allowed in checks:
            args = ["auth", "can-i", verb, resource]
            if ns:
                args += ["-n", ns]
            r = kubectl(deployed.cluster, *args, kubeconfig=deployed.kubeconfigs[sa], check=False)
            assert (r.stdout.strip() == "yes") is allowed, f"{sa} {verb} {resource}: {r.stdout} {r.stderr}"
    # and the ConfigMap with the front-proxy CA, in kube-system only
    r = kubectl(
        deployed.cluster,
        "auth",
        "can-i",
        "get",
        "configmaps/extension-apiserver-authentication",
        "-n",
        "kube-system",
        kubeconfig=deployed.kubeconfigs["toposcale-adapter"],
        check=False,
    )
    assert r.stdout.strip() == "yes"
