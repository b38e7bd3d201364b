"""The Helm chart deploy/helm/toposcale, with the real helm v4 (scripts/helm.sh bin: helm.sh/helm/v4 v4.3.2).

- `helm lint --strict` (every variant) and `helm template t deploy/helm/toposcale` (the issue's acceptance);
- the default render is deploy/all object by object (and the cert-manager, custom-metrics, KEDA, monitors and
  default-scheduler variants are their kustomize counterparts), up to what helm adds: the labels
  app.kubernetes.io/instance, managed-by, version and helm.sh/chart, checksum/ pod annotations (kustomize
  rolls pods with a hash in generated ConfigMap names instead, which is stripped here), the API default
  imagePullPolicy, and no Namespace object (`helm install --create-namespace` makes it);
- every rendered object validates (kubernetes-validate, strict), and a wrong value fails with the schema's
  message;
- against the session's real control plane (tests/conftest.py `kube_cluster`): `helm install
  --dry-run=server`, the chart's objects server-side dry-run applied, a real `helm install`, `helm upgrade`
  (the self-signed certificate is kept), `helm uninstall` (nothing of the release is left, cluster-scoped
  objects included).

The same control plane holds deploy/all in namespace `toposcale` (lab/peers/deployed.py), with
cluster-scoped objects (toposcale-adapter ClusterRoles, ...) and the one APIService
v1beta1.external.metrics.k8s.io. The release here is `helmtest` in a fresh namespace: every cluster-scoped
name and kube-system RoleBinding carries the release's fullname (helmtest-toposcale-...), so nothing clashes;
the APIService (whose name Kubernetes fixes) is off for the real install (adapter.apiService.enabled=false),
and checked with a server-side dry run only. cert-manager, Prometheus Operator and KEDA kinds have no CRDs
there: the install uses adapter.tls.mode=self-signed, monitors and KEDA are off by default. No kubelet runs
pods, and other tests register Nodes (lab/kube/kubelet.py): the release runs no pods (replicas 0, an
agent nodeSelector no node has), so it never lands on their Nodes.

helm cannot be built (no Go, no module proxy): these tests fail with the reason, never skip.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lab.kube.client import KUBECTL, kubectl, run_helm

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "toposcale"
HELM_VERSION = "v4.3.2"

HELM_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
}
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh", "cert-manager.io"}
VERSIONS = sorted({"1.30.0", kubernetes_validate.latest_version()})

# The values of each variant, and what it is compared with.
CERT_MANAGER = ["adapter.tls.mode=cert-manager"]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "cert-manager": CERT_MANAGER,
    "custom-metrics": ["adapter.customMetrics.enabled=true"],
    "keda": [*CERT_MANAGER, "adapter.keda.enabled=true"],
    "monitors": [*CERT_MANAGER, "monitors.enabled=true"],
    "default-scheduler": [*CERT_MANAGER, "scheduler.mode=default-scheduler"],
    "prometheus": [
        "adapter.mode=prometheus",
        "adapter.prometheusUrl=http://prometheus-operated.monitoring.svc:9090",
    ],
    "no-rbac-no-sa": ["rbac.create=false", "serviceAccount.create=false", "dashboards.enabled=false"],
}


# -- helm --


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def template(
    helm: Path,
    values: list[str],
    release: str = "toposcale",
    namespace: str = "toposcale",
) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *sets(values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kustomize(folder: Path) -> list[dict[str, Any]]:
    r = subprocess.run([str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {folder} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# -- comparison --


def key(o: dict[str, Any]) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def _drop_helm_labels(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_helm_labels(v) for k, v in node.items() if k not in HELM_LABELS}
    if isinstance(node, list):
        return [_drop_helm_labels(v) for v in node]
    return node


def _rename(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rename(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename(v, names) for v in node]
    if isinstance(node, str):
        return names.get(node, node)
    return node


def normalize(o: dict[str, Any]) -> dict[str, Any]:
    """What both renderers mean, without what helm adds or kustomize hashes (see the module docstring)."""
    o = _drop_helm_labels(copy.deepcopy(o))
    if o["metadata"].get("labels") == {}:
        del o["metadata"]["labels"]
    tmpl = o.get("spec", {}).get("template", {}).get("metadata", {})
    ann = {k: v for k, v in (tmpl.get("annotations") or {}).items() if not k.startswith("checksum/")}
    if "annotations" in tmpl:
        if ann:
            tmpl["annotations"] = ann
        else:
            del tmpl["annotations"]
    for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        # the API's default for an image with a tag other than :latest
        if c.get("imagePullPolicy") == "IfNotPresent" and not c["image"].endswith(":latest"):
            del c["imagePullPolicy"]
    if o["kind"] == "ConfigMap":
        for k, v in list(o.get("data", {}).items()):
            if k.endswith((".yaml", ".yml")):
                o["data"][k] = yaml.safe_load(v)
            elif k.endswith(".json"):
                o["data"][k] = json.loads(v)
    return o


def kustomize_hash_names(kust: list[dict[str, Any]], chart: list[dict[str, Any]]) -> dict[str, str]:
    """kustomize's generated names (toposcale-adapter-rules-<hash>) -> the chart's fixed ones."""
    plain = {o["metadata"]["name"] for o in chart if o["kind"] in ("ConfigMap", "Secret")}
    out = {}
    for o in kust:
        m = re.fullmatch(r"(.+)-[a-z0-9]{10}", o["metadata"]["name"])
        if o["kind"] in ("ConfigMap", "Secret") and m and m.group(1) in plain:
            out[o["metadata"]["name"]] = m.group(1)
    return out


def differences(expected: list[dict[str, Any]], rendered: list[dict[str, Any]]) -> list[str]:
    """One entry per object that is missing, extra or different (with a diff), object by object."""
    names = kustomize_hash_names(expected, rendered)
    want = {key(n): n for n in (normalize(_rename(o, names)) for o in expected)}
    got = {key(n): n for n in (normalize(o) for o in rendered)}
    problems = [f"missing from the chart: {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"only in the chart: {k}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        if want[k] != got[k]:
            a = yaml.safe_dump(want[k], sort_keys=True).splitlines()
            b = yaml.safe_dump(got[k], sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(a, b, "kustomize", "helm", lineterm="", n=2))
            problems.append(f"{k} differs:\n{diff}")
    return problems


def without(objects: list[dict[str, Any]], drop: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gone = {key(o) for o in drop}
    return [o for o in objects if key(o) not in gone]


def no_namespace(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # `helm install --create-namespace` makes it; a chart does not own its release's namespace
    return [o for o in objects if o["kind"] != "Namespace"]


def cert_manager_install() -> list[dict[str, Any]]:
    """The kustomize cert-manager install: deploy/all-cert-manager, then its APIService."""
    return no_namespace(kustomize(DEPLOY / "all-cert-manager")) + kustomize(
        DEPLOY / "adapter/cert-manager/apiservice"
    )


def without_certificates(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The self-signed objects up to the certificate material (make-certs.py's files in kustomize, genCA in
    helm), which differs per run."""
    objects = copy.deepcopy(objects)
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == "toposcale-adapter-tls":
            assert set(o["data"]) == {"tls.crt", "tls.key", "ca.crt"}
            o["data"] = "<certificates>"
        if o["kind"] == "APIService":
            assert o["spec"].get("caBundle")
            o["spec"]["caBundle"] = "<ca>"
    return objects


# -- fixtures --


@pytest.fixture(scope="session")
def certs_deploy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/ with make-certs.py run in it (what deploy/all needs first)."""
    copy_dir = tmp_path_factory.mktemp("helm-deploy") / "deploy"
    shutil.copytree(DEPLOY, copy_dir, ignore=shutil.ignore_patterns("helm"))
    subprocess.run(
        [sys.executable, str(copy_dir / "adapter/self-signed/make-certs.py")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return copy_dir


@pytest.fixture(scope="session")
def renders(helm: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: template(helm, values) for name, values in VARIANTS.items()}


# -- helm itself --


def test_helm_is_the_pinned_release(helm: Path) -> None:
    assert run_helm(helm, "version", "--template", "{{.Version}}").stdout.strip() == HELM_VERSION
    assert f"helm.sh/helm/v4 {HELM_VERSION}" in (ROOT / "tests/helm/go.mod").read_text()


# -- lint and template --


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lint_strict(helm: Path, variant: str) -> None:
    r = run_helm(helm, "lint", "--strict", str(CHART), *sets(VARIANTS[variant]), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize("values", [[], [*CERT_MANAGER, "adapter.customMetrics.enabled=true"]])
def test_template_with_any_release_name(helm: Path, values: list[str]) -> None:
    """`helm template t deploy/helm/toposcale` (namespace default): every name carries the release's fullname
    (t-toposcale-...), so releases never share an object, cluster-scoped ones and kube-system's included; the
    APIServices are the one exception (their names are the API groups')."""
    objs = template(helm, values, release="t", namespace="default")
    assert objs
    for o in objs:
        name, ns = o["metadata"]["name"], o["metadata"].get("namespace")
        if o["kind"] == "APIService":
            assert name in ("v1beta1.external.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io")
            assert o["spec"]["service"] == {
                "name": "t-toposcale-adapter",
                "namespace": "default",
                "port": 443,
            }
            continue
        assert name.startswith("t-toposcale-") or name.startswith("t-toposcale:"), f"{o['kind']}/{name}"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == "t"
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert ns in ("default", "kube-system"), f"{o['kind']}/{name} in {ns}"
            assert ns == "default" or o["kind"] == "RoleBinding"
    config = next(o for o in objs if o["metadata"]["name"] == "t-toposcale-scheduler-config")
    cfg = yaml.safe_load(config["data"]["config.yaml"])
    assert cfg["extenders"][0]["urlPrefix"] == "http://t-toposcale-extender.default.svc:8888"
    assert cfg["leaderElection"]["resourceNamespace"] == "default"
    assert cfg["leaderElection"]["resourceName"] == "t-toposcale-scheduler"
    if values:
        cert = next(
            o for o in objs if o["kind"] == "Certificate" and o["metadata"]["name"].endswith("-serving")
        )
        assert cert["spec"]["dnsNames"][0] == "t-toposcale-adapter.default.svc"
    else:
        secret = next(o for o in objs if o["kind"] == "Secret")
        check_serving_cert(secret | {"type": "kubernetes.io/tls"}, "t-toposcale-adapter.default.svc")


def test_default_values_render_deploy_all(
    helm: Path, renders: dict[str, list[dict[str, Any]]], certs_deploy: Path
) -> None:
    """The object-by-object comparison the issue asks for: the two cannot drift. Up to the certificate
    material (make-certs.py's files there, helm's genCA here)."""
    expected = without_certificates(no_namespace(kustomize(certs_deploy / "all")))
    assert differences(expected, without_certificates(renders["default"])) == []
    # the one APIService of a default install: custom.metrics.k8s.io is left to whoever serves it
    assert [o["metadata"]["name"] for o in renders["default"] if o["kind"] == "APIService"] == [
        "v1beta1.external.metrics.k8s.io"
    ]


def test_custom_metrics_renders_the_component(
    renders: dict[str, list[dict[str, Any]]], certs_deploy: Path
) -> None:
    """adapter.customMetrics.enabled is deploy/all with the adapter/custom-metrics component."""
    from tests.deploy.conftest import with_components

    overlay = with_components(certs_deploy, "all+custom-metrics")
    expected = without_certificates(no_namespace(kustomize(overlay)))
    assert differences(expected, without_certificates(renders["custom-metrics"])) == []


def test_cert_manager_renders_deploy_all_cert_manager(renders: dict[str, list[dict[str, Any]]]) -> None:
    """adapter.tls.mode=cert-manager: deploy/all-cert-manager and deploy/adapter/cert-manager/apiservice (one
    release; helm refuses it against a cluster without cert-manager instead of splitting the apply)."""
    assert differences(cert_manager_install(), renders["cert-manager"]) == []


def test_keda_variant_renders_deploy_adapter_keda(renders: dict[str, list[dict[str, Any]]]) -> None:
    all_objs = no_namespace(kustomize(DEPLOY / "all-cert-manager"))
    expected = without(all_objs, kustomize(DEPLOY / "adapter/cert-manager")) + kustomize(
        DEPLOY / "adapter/keda"
    )
    assert differences(expected, renders["keda"]) == []
    assert not [o for o in renders["keda"] if o["kind"] == "APIService"]


def test_monitors_variant_renders_deploy_monitors(renders: dict[str, list[dict[str, Any]]]) -> None:
    expected = cert_manager_install() + kustomize(DEPLOY / "monitors")
    assert differences(expected, renders["monitors"]) == []


def test_default_scheduler_variant(renders: dict[str, list[dict[str, Any]]]) -> None:
    """No second scheduler; the ConfigMap holds
    deploy/extender/default-scheduler/kube-scheduler-config.yaml."""
    all_objs = cert_manager_install()
    scheduler = [
        o
        for o in all_objs
        if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "toposcale-scheduler"
    ]
    assert {o["kind"] for o in scheduler} == {
        "Deployment",
        "ServiceAccount",
        "ConfigMap",
        "ClusterRoleBinding",
        "RoleBinding",
        "Role",
        "NetworkPolicy",  # the extender admits the second scheduler's pods (deploy/extender)
    }
    rendered = renders["default-scheduler"]
    cm = next(o for o in rendered if o["metadata"]["name"] == "toposcale-default-scheduler-config")
    want = yaml.safe_load((DEPLOY / "extender/default-scheduler/kube-scheduler-config.yaml").read_text())
    assert yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"]) == want
    assert differences(without(all_objs, scheduler), without(rendered, [cm])) == []


def test_the_comparison_sees_a_change(renders: dict[str, list[dict[str, Any]]]) -> None:
    """The comparison above can fail: one changed field, one extra label of our own, one dropped object."""
    expected = cert_manager_install()
    changed = copy.deepcopy(renders["cert-manager"])
    agent = next(o for o in changed if o["kind"] == "DaemonSet")
    agent["spec"]["template"]["spec"]["containers"][0]["args"].append("--verbose")
    agent["metadata"]["labels"]["team"] = "gpu"
    changed = [
        o for o in changed if o["kind"] != "PodDisruptionBudget" or "extender" not in o["metadata"]["name"]
    ]
    problems = differences(expected, changed)
    assert len(problems) == 2, problems
    assert "+        - --verbose" in problems[1] and "+    team: gpu" in problems[1], problems[1]
    assert problems[0] == "missing from the chart: ('PodDisruptionBudget', 'toposcale', 'toposcale-extender')"


def test_prometheus_mode_adds_the_flag(renders: dict[str, list[dict[str, Any]]]) -> None:
    adapter = next(
        o for o in renders["prometheus"] if key(o) == ("Deployment", "toposcale", "toposcale-adapter")
    )
    args = adapter["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--prometheus-url=http://prometheus-operated.monitoring.svc:9090"
    default = next(o for o in renders["default"] if key(o) == key(adapter))
    assert default["spec"]["template"]["spec"]["containers"][0]["args"] == args[:-1]


def test_rbac_and_service_accounts_off(renders: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {o["kind"] for o in renders["no-rbac-no-sa"]}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert "Deployment" in kinds and "DaemonSet" in kinds


def test_common_values(helm: Path) -> None:
    """The values the README names reach the objects."""
    objs = template(
        helm,
        [
            "image.repository=registry.example.com/toposcale",
            "image.tag=0.2.0",
            "image.pullPolicy=Always",
            "adapter.replicas=3",
            "extender.replicas=4",
            "extender.weight=7",
            "adapter.resources.limits.memory=1Gi",
            "agent.nodeSelector.gpu=yes",
            "agent.tolerations[0].operator=Exists",
            "priorityClassName=high",
            "serviceAccount.name=ts",
            "adapter.rules[0].name=my_metric",
            "adapter.rules[0].series[0]=my_series",
            "adapter.rules[0].aggregation=sum",
            "agent.runtimeClassName=",
        ],
    )
    by = {key(o): o for o in objs}
    adapter = by[("Deployment", "toposcale", "toposcale-adapter")]
    pod = adapter["spec"]["template"]["spec"]
    assert adapter["spec"]["replicas"] == 3
    assert pod["containers"][0]["image"] == "registry.example.com/toposcale:0.2.0"
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "1Gi"
    assert pod["priorityClassName"] == "high"
    assert pod["serviceAccountName"] == "ts-adapter"
    assert by[("Deployment", "toposcale", "toposcale-extender")]["spec"]["replicas"] == 4
    cfg = yaml.safe_load(by[("ConfigMap", "toposcale", "toposcale-scheduler-config")]["data"]["config.yaml"])
    assert cfg["extenders"][0]["weight"] == 7
    agent = by[("DaemonSet", "toposcale", "toposcale-agent")]["spec"]["template"]["spec"]
    # --set merges maps (lists it replaces): drop the default with nodeSelector.nvidia\.com/gpu\.present=null
    assert agent["nodeSelector"] == {"nvidia.com/gpu.present": "true", "gpu": "yes"}
    assert agent["tolerations"] == [{"operator": "Exists"}]
    assert "runtimeClassName" not in agent
    assert agent["priorityClassName"] == "system-node-critical"  # its own class wins over the top-level one
    assert by[("ServiceAccount", "toposcale", "ts-agent")]
    rules = yaml.safe_load(by[("ConfigMap", "toposcale", "toposcale-adapter-rules")]["data"]["rules.yaml"])
    assert [r["name"] for r in rules["rules"]] == ["my_metric"]
    reader = by[("ClusterRole", "", "toposcale:external-metrics-reader")]
    assert reader["rules"][0]["resources"] == ["my_metric"]


def test_chart_files_are_the_generated_copies() -> None:
    """The chart reads rules and dashboards from files/ (.Files.Get), which deploy/generate.py copies byte
    for byte (tests/deploy runs its --check too)."""
    assert (CHART / "files/rules.yaml").read_bytes() == (ROOT / "adapter/rules/default.yaml").read_bytes()
    src = sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    assert src and sorted(p.name for p in (CHART / "files/dashboards").iterdir()) == src
    for name in src:
        assert (CHART / "files/dashboards" / name).read_bytes() == (ROOT / "dashboards" / name).read_bytes()


def test_rendered_data_is_the_files_byte_for_byte(renders: dict[str, list[dict[str, Any]]]) -> None:
    by = {key(o): o for o in renders["default"]}
    rules = by[("ConfigMap", "toposcale", "toposcale-adapter-rules")]["data"]["rules.yaml"]
    assert rules == (CHART / "files/rules.yaml").read_text()
    for p in (CHART / "files/dashboards").glob("*.json"):
        cm = by[("ConfigMap", "toposcale", f"toposcale-dashboard-{p.stem}")]
        assert cm["data"] == {p.name: p.read_text()}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates(renders: dict[str, list[dict[str, Any]]], version: str) -> None:
    errors, skipped = [], set()
    for variant, objs in renders.items():
        for obj in objs:
            group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
            if group in CRD_GROUPS:
                skipped.add(f"{obj['apiVersion']}/{obj['kind']}")
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                errors.append(f"{variant}: {obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{variant}: no {version} schema for {obj['apiVersion']} {obj['kind']}")
    assert errors == []
    assert skipped == {
        "cert-manager.io/v1/Issuer",
        "cert-manager.io/v1/Certificate",
        "monitoring.coreos.com/v1/PodMonitor",
        "monitoring.coreos.com/v1/ServiceMonitor",
    }


# -- wrong values --

WRONG_VALUES = [
    (["adapter.mode=pull"], "at '/adapter/mode': value must be one of 'scrape', 'prometheus'"),
    (["adapter.mode=prometheus"], "at '/adapter/prometheusUrl': minLength: got 0, want 1"),
    (
        ["adapter.mode=prometheus", "adapter.prometheusUrl=prometheus:9090"],
        "at '/adapter/prometheusUrl': 'prometheus:9090' does not match pattern",
    ),
    (["adapter.prometheusUrl=http://p:9090"], "adapter.prometheusUrl is set but adapter.mode is scrape"),
    (["extender.weight=0"], "at '/extender/weight': minimum: got 0, want 1"),
    (["extender.weight=five"], "at '/extender/weight': got string, want integer"),
    (["adapter.replicsa=3"], "at '/adapter': additional properties 'replicsa' not allowed"),
    (
        ["adapter.tls.mode=vault"],
        "at '/adapter/tls/mode': value must be one of 'cert-manager', 'self-signed'",
    ),
    (["scheduler.mode=both"], "value must be one of 'second-scheduler', 'default-scheduler'"),
    (["rbac.create=maybe"], "at '/rbac/create': got string, want boolean"),
    (["adapter.extraArgs[0]=cache-ttl=5"], "at '/adapter/extraArgs/0': 'cache-ttl=5' does not match pattern"),
    (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
]


@pytest.mark.parametrize(("values", "message"), WRONG_VALUES, ids=[v[0][-1] for v in WRONG_VALUES])
def test_a_wrong_value_fails_with_the_schemas_message(helm: Path, values: list[str], message: str) -> None:
    r = run_helm(helm, "template", "t", str(CHART), *sets(values), check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr


# -- the real API server --


@pytest.fixture(scope="module")
def namespace(kube_cluster: Any) -> Any:
    ns = f"helm-{uuid.uuid4().hex[:8]}"
    kubectl(kube_cluster, "create", "namespace", ns)
    yield ns
    kubectl(kube_cluster, "delete", "namespace", ns, "--wait=false", check=False)


# In the shared control plane: no APIService (the cluster's ones belong to deploy/all's tests), no
# CRD kinds, no pods (see the module docstring).
CLUSTER_VALUES = [
    "adapter.tls.mode=self-signed",
    "adapter.apiService.enabled=false",
    "adapter.replicas=0",
    "extender.replicas=0",
    "scheduler.replicas=0",
    "agent.nodeSelector.toposcale\\.io/helm-test=no-such-node",
]
RELEASE = "helmtest"


def test_server_dry_run(helm: Path, kube_cluster: Any, namespace: str) -> None:
    r = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        "--dry-run=server",
        *sets(CLUSTER_VALUES),
        kubeconfig=kube_cluster.admin_kubeconfig,
    )
    assert "DESCRIPTION: Dry run complete" in r.stdout, r.stdout
    assert releases(helm, kube_cluster, namespace) == []


def test_the_api_server_accepts_every_object(helm: Path, kube_cluster: Any, namespace: str) -> None:
    """Every object of the default render that the bare cluster has a kind for, the APIService included,
    through the API server's validation and admission (server-side apply, dry run: nothing is stored)."""
    objs = template(helm, ["adapter.customMetrics.enabled=true"], release="helmdry", namespace=namespace)
    keep = [o for o in objs if o["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert {o["kind"] for o in keep} >= {"APIService", "Deployment", "DaemonSet", "Secret", "ClusterRole"}
    r = kubectl(
        kube_cluster,
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager=helm-chart-test",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(keep),
    )
    assert len(r.stdout.strip().splitlines()) == len(keep), r.stdout


def release_objects(cluster: Any, namespace: str) -> list[str]:
    """Everything labelled as this release's, in its namespace, kube-system and cluster-wide."""
    sel = f"app.kubernetes.io/instance={RELEASE}"
    found = []
    for ns_args, kinds in (
        (
            ["-n", namespace],
            "deployments,daemonsets,services,configmaps,secrets,serviceaccounts,"
            "poddisruptionbudgets,roles,rolebindings",
        ),
        (["-n", "kube-system"], "rolebindings"),
        ([], "clusterroles,clusterrolebindings,apiservices"),
    ):
        r = kubectl(cluster, "get", kinds, *ns_args, "-l", sel, "-o", "name")
        found += r.stdout.split()
    return sorted(found)


def test_install_upgrade_uninstall(helm: Path, kube_cluster: Any, namespace: str) -> None:
    kc = kube_cluster.admin_kubeconfig
    run_helm(helm, "install", RELEASE, str(CHART), "-n", namespace, *sets(CLUSTER_VALUES), kubeconfig=kc)
    try:
        status = json.loads(
            run_helm(helm, "status", RELEASE, "-n", namespace, "-o", "json", kubeconfig=kc).stdout
        )
        assert status["info"]["status"] == "deployed"
        objs = release_objects(kube_cluster, namespace)
        for want in (
            "deployment.apps/helmtest-toposcale-adapter",
            "daemonset.apps/helmtest-toposcale-agent",
            "clusterrole.rbac.authorization.k8s.io/helmtest-toposcale:external-metrics-reader",
            "rolebinding.rbac.authorization.k8s.io/helmtest-toposcale-adapter-auth-reader",
            "secret/helmtest-toposcale-adapter-tls",
            "configmap/helmtest-toposcale-dashboard-gpu-fleet",
        ):
            assert want in objs, objs
        assert not [o for o in objs if o.startswith("apiservice")]
        # the deploy/all objects of other tests (if applied) are untouched: their names differ
        assert not [o for o in objs if re.search(r"/toposcale[-:]", o)]

        secret = get_json(kube_cluster, "-n", namespace, "secret", "helmtest-toposcale-adapter-tls")
        check_serving_cert(secret, f"helmtest-toposcale-adapter.{namespace}.svc")
        # an upgrade keeps the certificate (lookup), it does not make a new CA the clients do not know
        run_helm(
            helm,
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            *sets(CLUSTER_VALUES),
            "--set",
            "extender.weight=6",
            kubeconfig=kc,
        )
        again = get_json(kube_cluster, "-n", namespace, "secret", "helmtest-toposcale-adapter-tls")
        assert again["data"] == secret["data"]
        cm = get_json(kube_cluster, "-n", namespace, "configmap", "helmtest-toposcale-scheduler-config")
        assert yaml.safe_load(cm["data"]["config.yaml"])["extenders"][0]["weight"] == 6

        # a wrong value fails the install with the schema's message, before anything is created
        r = run_helm(
            helm,
            "install",
            "helmbad",
            str(CHART),
            "-n",
            namespace,
            "--set",
            "adapter.mode=pull",
            check=False,
            kubeconfig=kc,
        )
        assert r.returncode != 0 and "value must be one of 'scrape', 'prometheus'" in r.stderr, r.stderr
        assert releases(helm, kube_cluster, namespace) == [RELEASE]
    finally:
        r = run_helm(
            helm,
            "uninstall",
            RELEASE,
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "120s",
            check=False,
            kubeconfig=kc,
        )
    assert r.returncode == 0, r.stderr
    assert release_objects(kube_cluster, namespace) == []
    assert releases(helm, kube_cluster, namespace) == []


def releases(helm: Path, cluster: Any, namespace: str) -> list[str]:
    """The releases in `namespace`, as helm lists them and as its storage holds them (Secrets owner=helm, any
    state: a failed install leaves one too)."""
    listed = run_helm(helm, "list", "-n", namespace, "-q", kubeconfig=cluster.admin_kubeconfig).stdout.split()
    stored = json.loads(
        kubectl(cluster, "get", "secrets", "-n", namespace, "-l", "owner=helm", "-o", "json").stdout
    )
    assert sorted({s["metadata"]["labels"]["name"] for s in stored["items"]}) == sorted(listed)
    return sorted(listed)


def get_json(cluster: Any, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)


def check_serving_cert(secret: dict[str, Any], host: str) -> None:
    from cryptography import x509

    crt = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    sans = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert host in sans and f"{host}.cluster.local" in sans
    crt.verify_directly_issued_by(ca)
    assert secret["type"] == "kubernetes.io/tls"


def test_pod_deletion_cost_grants_exactly_patch_in_each_serving_namespace(helm: Path) -> None:
    """adapter.podDeletionCost.targets (issue 29): the flag per target, and per serving namespace the
    Role/RoleBinding of deploy/examples/qwen/pod-deletion-cost (exactly `patch` on pods); nothing else."""
    default = template(helm, [])
    objs = template(helm, ["adapter.podDeletionCost.targets={llm/app,llm/tier,chat/app}"])
    added = [o for o in objs if key(o) not in {key(d) for d in default}]
    assert sorted((o["kind"], o["metadata"]["namespace"]) for o in added) == [
        ("Role", "chat"), ("Role", "llm"), ("RoleBinding", "chat"), ("RoleBinding", "llm")
    ]
    rbac = ROOT / "deploy" / "examples" / "qwen" / "pod-deletion-cost" / "rbac.yaml"
    component = {o["kind"]: o for o in yaml.safe_load_all(rbac.read_text())}
    for o in added:
        if o["kind"] == "Role":
            assert o["rules"] == component["Role"]["rules"] == [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}
            ]
        else:
            assert o["subjects"] == [
                {"kind": "ServiceAccount", "name": "toposcale-adapter", "namespace": "toposcale"}
            ]
    adapter = next(o for o in objs if key(o) == ("Deployment", "toposcale", "toposcale-adapter"))
    args = adapter["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--pod-deletion-cost")] == [
        "--pod-deletion-cost=llm/app", "--pod-deletion-cost=llm/tier", "--pod-deletion-cost=chat/app"
    ]
