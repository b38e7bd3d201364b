"""deploy/ builds with the real kubectl and every object validates against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from .conftest import DEPLOY, ROOT, WITH_COMPONENTS, Build, components, kustomizations

# Kinds from CRDs: kubernetes-validate ships the built-in API only and these machines cannot fetch the
# projects' CRD schemas. They are skipped from schema validation (the checks below and in test_crosschecks
# pin the fields toposcale relies on).
CRD_GROUPS = {"monitoring.coreos.com", "keda.sh", "cert-manager.io"}
VERSIONS = sorted({"1.30.0", kubernetes_validate.latest_version()})
# Builds that need a newer API than the oldest Kubernetes the install supports: the DRA example uses
# resource.k8s.io/v1 (GA in 1.34) and a Pod's resourceClaims[].resourceClaimTemplateName (1.31 shape). They
# are validated against the versions that have them, and only those.
MIN_VERSION = {"examples/qwen-dra": (1, 34)}


def _version(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def _load_generate() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_files_match_their_sources() -> None:
    stale = _load_generate().stale()
    assert stale == [], f"deploy/ is out of date with its sources, run `python deploy/generate.py`: {stale}"


@pytest.mark.parametrize("name", kustomizations() + list(WITH_COMPONENTS))
def test_kustomization_builds(builds: dict[str, Build], name: str) -> None:
    objs = builds[name].objects
    assert objs, f"{name} renders nothing"
    for o in objs:
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o


def test_every_opt_in_component_is_built() -> None:
    """A component (kind: Component) builds only inside a kustomization: each is built as its comments say
    to use it (conftest WITH_COMPONENTS), so a new one without a build here fails."""
    used = {c for _, comps in WITH_COMPONENTS.values() for c in comps}
    assert set(components()) - used <= {"adapter/custom-metrics/base"}  # included by adapter/custom-metrics
    assert used <= set(components())


@pytest.mark.parametrize("version", VERSIONS)
def test_objects_validate_against_kubernetes_schemas(
    every_object: list[tuple[str, dict[str, Any]]], version: str
) -> None:
    errors, skipped, too_new = [], set(), set()
    for build, obj in every_object:
        if _version(version) < MIN_VERSION.get(build, (0, 0)):
            too_new.add(build)
            continue
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if group in CRD_GROUPS:
            skipped.add(f"{obj['apiVersion']}/{obj['kind']}")
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            errors.append(f"{build}: {obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{build}: no {version} schema for {obj['apiVersion']} {obj['kind']}")
    assert errors == []
    assert too_new == {b for b, v in MIN_VERSION.items() if _version(version) < v}
    # exactly the CRD kinds we ship are the ones not validated
    assert skipped == {
        "cert-manager.io/v1/Issuer",
        "cert-manager.io/v1/Certificate",
        "monitoring.coreos.com/v1/PodMonitor",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "keda.sh/v1alpha1/ScaledObject",
        "keda.sh/v1alpha1/TriggerAuthentication",
    }


def test_a_broken_object_fails_validation() -> None:
    """The validation above can fail: a typo'd field is rejected in strict mode."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPortt": 8080}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


def test_crd_objects_have_the_fields_their_controllers_need(
    every_object: list[tuple[str, dict[str, Any]]],
) -> None:
    for _, o in every_object:
        spec = o.get("spec", {})
        if o["kind"] == "PodMonitor":
            assert spec["selector"]["matchLabels"] and spec["podMetricsEndpoints"]
            assert all(ep.get("port") for ep in spec["podMetricsEndpoints"])
        elif o["kind"] == "ServiceMonitor":
            assert spec["selector"]["matchLabels"] and spec["endpoints"]
            assert all(ep.get("port") for ep in spec["endpoints"])
        elif o["kind"] == "ScaledObject":
            assert spec["scaleTargetRef"]["name"] and spec["triggers"]
            for t in spec["triggers"]:
                need = ({"scalerAddress", "metricName", "targetValue"} if t["type"] == "external"
                        else {"serverAddress", "query", "threshold"})
                assert set(t["metadata"]) >= need
        elif o["kind"] == "TriggerAuthentication":
            assert all(r["parameter"] and r["name"] and r["key"] for r in spec["secretTargetRef"])
        elif o["kind"] == "Certificate":
            assert spec["secretName"] and spec["issuerRef"]["name"]
        elif o["kind"] == "Issuer":
            assert ("selfSigned" in spec) != ("ca" in spec)


def test_every_object_is_namespaced_explicitly(every_object: list[tuple[str, dict[str, Any]]]) -> None:
    """No `namespace:` transformer is used (it would move the kube-system RoleBinding), so each namespaced
    object names its namespace; a missing one would land wherever the user's kubectl context points."""
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}
    missing = [
        f"{b}: {o['kind']}/{o['metadata']['name']}"
        for b, o in every_object
        if o["kind"] not in cluster_scoped and not o["metadata"].get("namespace")
    ]
    assert missing == []


def test_no_wildcards_in_rbac(every_object: list[tuple[str, dict[str, Any]]]) -> None:
    for b, o in every_object:
        if o["kind"] in ("Role", "ClusterRole"):
            for rule in o["rules"]:
                for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    assert "*" not in rule.get(key, []), f"{b}: {o['kind']}/{o['metadata']['name']} {key}"


def test_apiservice_never_skips_tls_verification(every_object: list[tuple[str, dict[str, Any]]]) -> None:
    for b, o in every_object:
        if o["kind"] == "APIService":
            assert not o["spec"].get("insecureSkipTLSVerify"), b


def test_toposcale_containers_are_hardened(every_object: list[tuple[str, dict[str, Any]]]) -> None:
    seen = 0
    for b, o in every_object:
        if o["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = o["spec"]["template"]["spec"]
        for c in pod["containers"]:
            if o["metadata"]["namespace"] == "llm":
                continue  # the example workload (vLLM) is not ours to harden
            seen += 1
            sc = c.get("securityContext", {})
            where = f"{b}: {o['metadata']['name']}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert c["resources"]["requests"], where
            assert c.get("livenessProbe") and c.get("readinessProbe"), where
            non_root = sc.get("runAsNonRoot", pod.get("securityContext", {}).get("runAsNonRoot"))
            if o["metadata"]["name"] != "toposcale-agent":  # see deploy/agent/daemonset.yaml for why
                assert non_root is True, where
    assert seen >= 4


def test_dockerfile_builds_a_non_root_image_of_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # The base is a build argument (scripts/build-image.sh passes a local debootstrap image); `docker build .`
    # takes its default, which must be the slim Python image.
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), f)
             for f in re.findall(r"^FROM\s+(\S+)", text, re.M)]
    assert froms and all(re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", f) for f in froms), froms
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["toposcale"\]', text, re.M)
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
            assert path.rstrip("/") not in ignored, f".dockerignore drops {path}, which the image needs"


def test_self_signed_certificate_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "adapter/self-signed/make-certs.py"),
            "--out",
            str(tmp_path),
            "--days",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "valid 30 days" in out.stdout
    assert {p.name for p in tmp_path.iterdir()} == {
        "ca.crt",
        "tls.crt",
        "tls.key",
        "apiservice-cabundle.yaml",
    }
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
