"""Installing into a cluster that already runs things (issue 27), on a real control plane of its own.

The session's shared control plane holds deploy/all with its APIServices (lab/peers/deployed.py); these
tests need a cluster where the metrics API groups are someone else's, so this module starts a second one the
way README's lab command does (`python -m lab.kube.cluster up DIR --bin-dir ... --scheduler-config
deploy/extender/scheduler-config.yaml`, which also proves that command). On it, with the real kubectl, the
real helm (tests/helm) and the real aggregator:

- a prometheus-adapter-like APIService on v1beta1.custom.metrics.k8s.io: the default install (kustomize and
  Helm) leaves `/apis`' custom.metrics.k8s.io exactly as it was; the opt-in is refused naming the owner
  (`toposcale preflight --custom-metrics`, `helm upgrade --set adapter.customMetrics.enabled=true`) unless
  forced, and forced it does take the group's preferred version;
- KEDA's own APIService (config/metrics-server/api_service.yaml of the KEDA module the suite builds) on
  external.metrics.k8s.io: preflight and Helm refuse the default install naming KEDA; the KEDA variant
  installs and leaves KEDA's APIService alone;
- no cert-manager: deploy/all without make-certs.py's files fails at the build, deploy/all-cert-manager fails
  on its Issuer/Certificate, and neither leaves an APIService; Helm refuses tls.mode=cert-manager;
- deploy/examples/qwen applies without the Prometheus Operator;
- `kubectl delete -k deploy/all` and `helm uninstall` leave no APIService behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.builds import kube_bin_dir
from lab.kube.client import run_helm
from lab.kube.cluster import Cluster
from lab.objects import make_node
from lab.peers.deployed import TOPOSCALE, kubectl

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "toposcale"
DEPLOY = ROOT / "deploy"
EXTERNAL = "v1beta1.external.metrics.k8s.io"
CUSTOM = "v1beta2.custom.metrics.k8s.io"
# A prometheus-adapter as its Helm chart registers it: custom.metrics.k8s.io/v1beta1 from its Service.
PROMETHEUS_ADAPTER = {
    "apiVersion": "apiregistration.k8s.io/v1",
    "kind": "APIService",
    "metadata": {
        "name": "v1beta1.custom.metrics.k8s.io",
        "labels": {"app.kubernetes.io/name": "prometheus-adapter", "app.kubernetes.io/component": "metrics"},
    },
    "spec": {
        "group": "custom.metrics.k8s.io",
        "version": "v1beta1",
        "service": {"name": "prometheus-adapter", "namespace": "monitoring", "port": 443},
        "insecureSkipTLSVerify": True,
        "groupPriorityMinimum": 100,
        "versionPriority": 100,
    },
}
# The release runs no pod (no kubelet here): nothing to wait for at install or uninstall.
QUIET = ["adapter.replicas=0", "extender.replicas=0", "scheduler.replicas=0"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    d = tmp_path_factory.mktemp("plain") / "cluster"
    up = [sys.executable, "-m", "lab.kube.cluster"]
    r = subprocess.run(
        [
            *up,
            "up",
            str(d),
            "--bin-dir",
            str(kube_bin_dir()),
            "--scheduler-config",
            str(DEPLOY / "extender" / "scheduler-config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"the README's lab command failed:\n{r.stderr}"
    try:
        yield Cluster.load(d)
    finally:
        subprocess.run([*up, "down", str(d)], capture_output=True, timeout=120, cwd=ROOT)


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def apis_group(cluster: Cluster, group: str) -> dict[str, Any] | None:
    """The group's entry in `/apis` as kube-apiserver's aggregator serves it (versions, preferredVersion)."""
    doc = json.loads(kubectl(cluster, "get", "--raw", "/apis").stdout)
    return next((g for g in doc["groups"] if g["name"] == group), None)


def apiservices(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl(cluster, "get", "apiservices", "-o", "json").stdout)["items"]
    return {a["metadata"]["name"]: a for a in items if "metrics.k8s.io" in a["metadata"]["name"]}


def preflight(cluster: Cluster, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOPOSCALE), "preflight", "--kubeconfig", str(cluster.admin_kubeconfig), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def deploy_copy(tmp_path: Path, *, certs: bool) -> Path:
    """deploy/ as a user's checkout has it, after make-certs.py or before."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("helm"))
    if certs:
        subprocess.run(
            [sys.executable, str(copy / "adapter/self-signed/make-certs.py")],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return copy


def kubectl_k(cluster: Cluster, verb: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, verb, "-k", str(folder), *extra, check=False, timeout=300)


def keda_source() -> Path:
    """KEDA's module source (the version tests/keda builds), from the Go module cache."""
    r = subprocess.run(
        ["go", "mod", "download", "-json", "github.com/kedacore/keda/v2"],
        cwd=ROOT / "tests/keda",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"KEDA's module cannot be downloaded (tests/keda/go.mod):\n{r.stderr}"
    return Path(json.loads(r.stdout)["Dir"])


# --------------------------------------------------------------------------------------------------- tests


def test_the_lab_command_runs_the_shipped_scheduler_config(plain: Cluster) -> None:
    """The fixture started kube-scheduler with deploy/extender/scheduler-config.yaml (kube_cluster runs a copy
    pointed at this control plane): a pod naming its profile is bound by it."""
    kubectl(plain, "apply", "-f", "-", stdin=json.dumps(make_node("lab-node", cpu="4", memory="8Gi")))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "lab-pod", "namespace": "default"},
        "spec": {
            "schedulerName": "toposcale-scheduler",
            "automountServiceAccountToken": False,
            # admission taints a new Node not-ready until a kubelet reports; there is none here
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    try:
        for _ in range(300):  # the default ServiceAccount comes from the controller-manager, just started
            if kubectl(plain, "apply", "-f", "-", stdin=json.dumps(pod), check=False).returncode == 0:
                break
            time.sleep(0.2)
        node = ""
        for _ in range(300):
            node = kubectl(
                plain, "get", "pod", "-n", "default", "lab-pod", "-o", "jsonpath={.spec.nodeName}"
            ).stdout
            if node:
                break
            time.sleep(0.2)
        assert node == "lab-node", (plain.dir / "kube-scheduler.log").read_text()[-3000:]
    finally:
        kubectl(plain, "delete", "pod", "-n", "default", "lab-pod", "--wait=false", check=False)
        kubectl(plain, "delete", "node", "lab-node", check=False)


def test_preflight_on_a_plain_cluster(plain: Cluster) -> None:
    r = preflight(plain)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "external.metrics.k8s.io: not served; this install registers it" in out
    assert "custom.metrics.k8s.io: not served; this install leaves it alone" in out
    assert "cert-manager (cert-manager.io/v1 Certificate, Issuer): absent" in out
    assert "  APIService v1beta1.external.metrics.k8s.io: new" in out
    assert "  RoleBinding kube-system/toposcale-adapter-auth-reader: new" in out
    version = json.loads(kubectl(plain, "version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert f"registry.k8s.io/kube-scheduler:{version}" in out
    assert "warning: registry.k8s.io/kube-scheduler:v1.30.14 is" in out  # the pin is older than this server
    assert out.rstrip().endswith("no conflict: the install can go ahead")
    # cert-manager asked for but absent: a conflict, exit 1
    r = preflight(plain, "--tls", "cert-manager")
    assert r.returncode == 1 and "conflict: cert-manager kinds Certificate, Issuer" in r.stdout, r.stdout


def test_prometheus_adapter_keeps_custom_metrics(plain: Cluster, helm: Path, tmp_path: Path) -> None:
    kubectl(plain, "create", "namespace", "monitoring")
    kubectl(plain, "apply", "-f", "-", stdin=json.dumps(PROMETHEUS_ADAPTER))
    try:
        before = apis_group(plain, "custom.metrics.k8s.io")
        assert before is not None and before["preferredVersion"]["version"] == "v1beta1"

        # preflight: the default install leaves the group alone; the opt-in is refused naming the owner
        r = preflight(plain)
        assert r.returncode == 0, r.stdout
        assert (
            "custom.metrics.k8s.io: v1beta1.custom.metrics.k8s.io served by prometheus-adapter (Service "
            "monitoring/prometheus-adapter): this install leaves it alone" in r.stdout
        )
        r = preflight(plain, "--custom-metrics")
        assert r.returncode == 1, r.stdout
        assert (
            "conflict: custom.metrics.k8s.io is already served by prometheus-adapter (APIService "
            "v1beta1.custom.metrics.k8s.io, Service monitoring/prometheus-adapter)" in r.stdout
        )
        assert preflight(plain, "--custom-metrics", "--force").returncode == 0

        # kustomize, defaults: succeeds fully, registers external metrics only, custom.metrics as it was
        deploy = deploy_copy(tmp_path, certs=True)
        r = kubectl_k(plain, "apply", deploy / "all")
        assert r.returncode == 0, r.stderr
        # the Pod Security warning docs/install.md explains: the agent's, nothing else's
        warned = [line for line in r.stderr.splitlines() if "would violate PodSecurity" in line]
        assert warned and all('"restricted:latest"' in w for w in warned), r.stderr
        assert "daemonset.apps/toposcale-agent" in r.stdout
        assert apis_group(plain, "custom.metrics.k8s.io") == before
        assert set(apiservices(plain)) == {EXTERNAL, "v1beta1.custom.metrics.k8s.io"}
        assert apiservices(plain)[EXTERNAL]["spec"]["caBundle"]  # registered with its CA, never without
        # uninstall: no APIService of ours is left, the other provider's is untouched. (--wait=false: the
        # namespace controller finishes only once discovery answers for every APIService, and this stand-in
        # has no backend; the finally below waits for it once the stand-in is gone.)
        r = kubectl_k(plain, "delete", deploy / "all", "--wait=false")
        assert r.returncode == 0, r.stderr
        assert set(apiservices(plain)) == {"v1beta1.custom.metrics.k8s.io"}
        assert apis_group(plain, "custom.metrics.k8s.io") == before

        # Helm, defaults: the same
        kc = plain.admin_kubeconfig
        run_helm(
            helm,
            "install",
            "toposcale",
            str(CHART),
            "-n",
            "ts-helm",
            "--create-namespace",
            *sets(QUIET),
            kubeconfig=kc,
        )
        try:
            assert set(apiservices(plain)) == {EXTERNAL, "v1beta1.custom.metrics.k8s.io"}
            assert apis_group(plain, "custom.metrics.k8s.io") == before
            # the opt-in is refused, naming the owner, and changes nothing
            r = run_helm(
                helm,
                "upgrade",
                "toposcale",
                str(CHART),
                "-n",
                "ts-helm",
                "--reuse-values",
                "--set",
                "adapter.customMetrics.enabled=true",
                check=False,
                kubeconfig=kc,
            )
            assert r.returncode != 0
            assert (
                "APIService v1beta1.custom.metrics.k8s.io is already served by prometheus-adapter (Service "
                "monitoring/prometheus-adapter)" in r.stderr
            ), r.stderr
            assert "adapter.customMetrics.force=true" in r.stderr
            assert set(apiservices(plain)) == {EXTERNAL, "v1beta1.custom.metrics.k8s.io"}
            # forced, it is the claim docs/install.md describes: the group's preferred version is toposcale's
            run_helm(
                helm,
                "upgrade",
                "toposcale",
                str(CHART),
                "-n",
                "ts-helm",
                "--reuse-values",
                *sets(["adapter.customMetrics.enabled=true", "adapter.customMetrics.force=true"]),
                kubeconfig=kc,
            )
            taken = apis_group(plain, "custom.metrics.k8s.io")
            assert taken is not None and taken["preferredVersion"]["version"] == "v1beta2"
        finally:
            r = run_helm(
                helm,
                "uninstall",
                "toposcale",
                "-n",
                "ts-helm",
                "--wait",
                "--timeout",
                "120s",
                check=False,
                kubeconfig=kc,
            )
        assert r.returncode == 0, r.stderr
        assert set(apiservices(plain)) == {"v1beta1.custom.metrics.k8s.io"}
        assert apis_group(plain, "custom.metrics.k8s.io") == before
    finally:
        kubectl(plain, "delete", "apiservice", "v1beta1.custom.metrics.k8s.io", check=False)
        kubectl(plain, "delete", "namespace", "monitoring", "ts-helm", "--wait=false", check=False)
        kubectl(plain, "wait", "--for=delete", "namespace/toposcale", "--timeout=180s", check=False)
    gone = kubectl(plain, "get", "namespace", "toposcale", check=False)
    assert gone.returncode != 0, f"deploy/all's namespace is left: {gone.stdout}"


def test_keda_keeps_external_metrics(plain: Cluster, helm: Path) -> None:
    src = keda_source()
    keda_apiservice = src / "config/metrics-server/api_service.yaml"
    crds = sorted((src / "config/crd/bases").glob("keda.sh_*.yaml"))
    kubectl(plain, "apply", "-f", str(keda_apiservice))
    for crd in crds:
        kubectl(plain, "apply", "--server-side", "-f", str(crd))
    kc = plain.admin_kubeconfig
    try:
        before = apiservices(plain)[EXTERNAL]
        r = preflight(plain)
        assert r.returncode == 1, r.stdout
        assert (
            "conflict: external.metrics.k8s.io is already served by KEDA (APIService "
            "v1beta1.external.metrics.k8s.io, Service keda/keda-metrics-apiserver)" in r.stdout
        )
        assert "deploy/adapter/keda (kustomize) or --set adapter.keda.enabled=true (Helm)" in r.stdout
        r = preflight(plain, "--keda")
        assert r.returncode == 0, r.stdout

        # Helm, defaults: refused before anything is created, naming KEDA and the variant
        r = run_helm(
            helm,
            "install",
            "toposcale",
            str(CHART),
            "-n",
            "ts-keda",
            "--create-namespace",
            *sets(QUIET),
            check=False,
            kubeconfig=kc,
        )
        assert r.returncode != 0
        assert (
            "APIService v1beta1.external.metrics.k8s.io is already served by KEDA (Service "
            "keda/keda-metrics-apiserver)" in r.stderr
        ), r.stderr
        assert "--set adapter.keda.enabled=true" in r.stderr
        assert run_helm(helm, "list", "-n", "ts-keda", "-q", kubeconfig=kc).stdout.strip() == ""
        assert kubectl(plain, "get", "clusterrole", "toposcale-adapter", check=False).returncode != 0

        # the KEDA variant: installed, KEDA's APIService as it was
        run_helm(
            helm,
            "install",
            "toposcale",
            str(CHART),
            "-n",
            "ts-keda",
            "--create-namespace",
            *sets([*QUIET, "adapter.keda.enabled=true"]),
            kubeconfig=kc,
        )
        try:
            after = apiservices(plain)[EXTERNAL]
            assert (
                after["spec"] == before["spec"]
                and after["metadata"]["labels"] == before["metadata"]["labels"]
            )
        finally:
            r = run_helm(
                helm,
                "uninstall",
                "toposcale",
                "-n",
                "ts-keda",
                "--wait",
                "--timeout",
                "120s",
                check=False,
                kubeconfig=kc,
            )
        assert r.returncode == 0, r.stderr
        assert apiservices(plain)[EXTERNAL]["spec"] == before["spec"]  # uninstall took only its own objects
    finally:
        kubectl(plain, "delete", "-f", str(keda_apiservice), check=False)
        for crd in crds:
            kubectl(plain, "delete", "-f", str(crd), "--wait=false", check=False)
        kubectl(plain, "delete", "namespace", "ts-keda", "--wait=false", check=False)


def test_without_cert_manager_no_apiservice_that_cannot_serve(
    plain: Cluster, helm: Path, tmp_path: Path
) -> None:
    # deploy/all before make-certs.py: the build fails, nothing reaches the cluster
    pristine = deploy_copy(tmp_path, certs=False)
    r = kubectl_k(plain, "apply", pristine / "all")
    assert r.returncode != 0 and "tls.crt" in r.stderr, r.stderr
    assert apiservices(plain) == {}
    assert kubectl(plain, "get", "namespace", "toposcale", check=False).returncode != 0
    # the cert-manager path without cert-manager: fails on its kinds, and it holds no APIService
    r = kubectl_k(plain, "apply", pristine / "all-cert-manager")
    try:
        assert r.returncode != 0 and 'no matches for kind "Certificate"' in r.stderr, r.stderr
        assert apiservices(plain) == {}
    finally:
        kubectl_k(plain, "delete", pristine / "all-cert-manager", "--ignore-not-found", "--wait=false")
    # Helm refuses tls.mode=cert-manager there, before creating anything
    r = run_helm(
        helm,
        "install",
        "toposcale",
        str(CHART),
        "-n",
        "ts-cm",
        "--create-namespace",
        *sets([*QUIET, "adapter.tls.mode=cert-manager"]),
        check=False,
        kubeconfig=plain.admin_kubeconfig,
    )
    assert r.returncode != 0 and "the cluster serves no cert-manager.io/v1 Certificate" in r.stderr, r.stderr
    assert apiservices(plain) == {}
    kubectl(plain, "delete", "namespace", "ts-cm", "--wait=false", check=False)


def test_qwen_example_applies_without_the_prometheus_operator(plain: Cluster) -> None:
    r = kubectl_k(plain, "apply", DEPLOY / "examples" / "qwen")
    try:
        assert r.returncode == 0, r.stderr
        applied = {line.split()[0] for line in r.stdout.splitlines()}
        assert applied == {
            "namespace/llm",
            "service/vllm-qwen",
            "deployment.apps/vllm-qwen",
            "horizontalpodautoscaler.autoscaling/vllm-qwen",
        }, r.stdout
        assert kubectl(plain, "get", "pvc", "-n", "llm", "-o", "name").stdout.strip() == ""
        dep = json.loads(kubectl(plain, "get", "deployment", "-n", "llm", "vllm-qwen", "-o", "json").stdout)
        vol = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "models", "emptyDir": {"sizeLimit": "40Gi"}} in vol
    finally:
        kubectl(plain, "delete", "namespace", "llm", "--wait=false", check=False)
