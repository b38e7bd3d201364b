"""deploy/ agrees with the code: names, ports, paths, routes, metric names, annotation keys, RBAC.

Each check reads the value from the code (module constants, argparse parsers, rules file, API calls in the
source) rather than repeating it, so a change on either side fails here until the other follows.
"""

from __future__ import annotations

import ast
import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from toposcale.extender import wire
from toposcale.extender.topology import annotations

from toposcale import cli

from .conftest import DEPLOY, ROOT, Build

RULES_FILE = ROOT / "adapter" / "rules" / "default.yaml"


def rule_names() -> set[str]:
    return {r["name"] for r in yaml.safe_load(RULES_FILE.read_text())["rules"]}


def container(obj: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    cs = obj["spec"]["template"]["spec"]["containers"]
    return cs[0] if name is None else next(c for c in cs if c["name"] == name)


def arg_value(c: dict[str, Any], flag: str) -> str | None:
    for a in c.get("args", []) + c.get("command", []):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p.get("name") == port)


def service_target(build: Build, name: str, namespace: str, port: int) -> tuple[dict[str, Any], int]:
    """The workload behind Service name:port and the container port number the traffic reaches."""
    svc = build.one("Service", name)
    assert svc["metadata"]["namespace"] == namespace
    sp = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
    assert sp is not None, f"Service {name} has no port {port}"
    workloads = [
        o
        for o in build.objects
        if o["kind"] in ("Deployment", "DaemonSet")
        and o["metadata"]["namespace"] == namespace
        and svc["spec"]["selector"].items() <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(workloads) == 1, f"Service {name} selects {len(workloads)} workloads"
    w = workloads[0]
    return w, port_number(container(w), sp.get("targetPort", sp["port"]))


# ------------------------------------------------------------------ CLI contracts


@pytest.mark.parametrize("name", ["toposcale-adapter", "toposcale-extender", "toposcale-agent"])
def test_container_args_parse_with_the_real_cli(builds: dict[str, Build], name: str) -> None:
    obj = next(
        o
        for o in builds["all"].objects
        if o["metadata"]["name"] == name and o["kind"] in ("Deployment", "DaemonSet")
    )
    c = container(obj)
    assert c["image"].split(":")[0] == "ghcr.io/toposcale/toposcale"
    sub = c["args"][0]
    assert sub in cli.SUBCOMMANDS
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices or {}
    assert sub in choices
    args, unknown = parser.parse_known_args(c["args"])
    assert unknown == [], f"`toposcale {sub}` has no such flags: {unknown}"
    assert c["ports"][0]["containerPort"] == args.port


# ------------------------------------------------------------------ adapter


def combined(builds: dict[str, Build], *names: str) -> Build:
    """What a sequence of applies leaves in the cluster (the cert-manager variant is two)."""
    return Build("+".join(names), [o for n in names for o in builds[n].objects])


# (the adapter, the APIServices) of each install path
INSTALLS = {
    "self-signed": ("adapter/self-signed", "adapter/self-signed"),
    "all": ("all", "all"),
    "all+custom-metrics": ("all+custom-metrics", "all+custom-metrics"),
    "cert-manager": ("all-cert-manager", "adapter/cert-manager/apiservice"),
    "cert-manager+custom-metrics": ("all-cert-manager", "adapter/cert-manager/apiservice+custom-metrics"),
}


@pytest.mark.parametrize("variant", list(INSTALLS))
def test_apiservice_reaches_the_adapter_port(builds: dict[str, Build], variant: str) -> None:
    b = combined(builds, *dict.fromkeys(INSTALLS[variant]))
    apis = b.find("APIService")
    want = {("external.metrics.k8s.io", "v1beta1")}
    if variant.endswith("+custom-metrics"):
        want.add(("custom.metrics.k8s.io", "v1beta2"))
    assert {(a["spec"]["group"], a["spec"]["version"]) for a in apis} == want
    for api in apis:
        ref = api["spec"]["service"]
        workload, port = service_target(b, ref["name"], ref["namespace"], ref.get("port", 443))
        c = container(workload)
        assert workload["metadata"]["name"] == "toposcale-adapter"
        assert port == int(arg_value(c, "--port") or 0) == 6443


def test_only_the_opt_in_claims_custom_metrics(builds: dict[str, Build]) -> None:
    """custom.metrics.k8s.io/v1beta2 takes that whole group's preferred version: only the custom-metrics
    component registers it (and the HPA reader role for it); no other build does."""
    for name, b in builds.items():
        external = "external.metrics.k8s.io"
        claims = [a["metadata"]["name"] for a in b.find("APIService") if a["spec"]["group"] != external]
        reader = "toposcale:custom-metrics-reader"
        roles = [r for r in b.find("ClusterRole") if r["metadata"]["name"] == reader]
        if name.endswith("+custom-metrics"):
            assert claims == ["v1beta2.custom.metrics.k8s.io"] and roles, name
        else:
            assert claims == [] and roles == [], name


def test_no_apiservice_where_the_certificate_needs_a_crd(builds: dict[str, Build]) -> None:
    """Applied to a cluster without cert-manager, a build holding cert-manager kinds fails on them: it must
    hold no APIService, or the cluster would keep one whose backend never gets its certificate (and the
    whole API group stops answering). The cert-manager APIServices are a second apply, after the
    certificate is Ready."""
    for name, b in builds.items():
        groups = {o["apiVersion"].split("/")[0] for o in b.objects}
        if "cert-manager.io" in groups:
            assert b.find("APIService") == [], name


@pytest.mark.parametrize("variant", ["all", "all-cert-manager"])
def test_adapter_on_a_read_only_root_serves_the_mounted_pair(builds: dict[str, Build], variant: str) -> None:
    """Without --tls-cert-file the adapter writes a pair into --cert-dir (default relative to the working
    directory), which a read-only root filesystem refuses: deploy/ must pass the mounted Secret's files."""
    c = container(builds[variant].one("Deployment", "toposcale-adapter"))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert arg_value(c, "--cert-dir") is None and arg_value(c, "--tls-cert-file")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(Path(arg_value(c, "--tls-cert-file") or "").parent) in mounts


def _serving_secret_name(b: Build) -> str:
    dep = b.one("Deployment", "toposcale-adapter")
    c = container(dep)
    cert_dir = str(Path(arg_value(c, "--tls-cert-file") or "").parent)
    assert Path(arg_value(c, "--tls-private-key-file") or "").parent == Path(cert_dir)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cert_dir)
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    return vol["secret"]["secretName"]


def test_cert_manager_variant_issues_the_mounted_secret_for_the_service_name(
    builds: dict[str, Build],
) -> None:
    b = combined(builds, "adapter/cert-manager", "adapter/cert-manager/apiservice+custom-metrics")
    apis = b.find("APIService")  # external.metrics.k8s.io and custom.metrics.k8s.io, one Service
    assert sorted(a["metadata"]["name"] for a in apis) == [
        "v1beta1.external.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"]
    assert apis[0]["metadata"]["annotations"] == apis[1]["metadata"]["annotations"]
    assert apis[0]["spec"]["service"] == apis[1]["spec"]["service"]
    api = apis[0]
    ns, cert_name = api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    cert = b.one("Certificate", cert_name)
    assert cert["metadata"]["namespace"] == ns
    assert cert["spec"]["secretName"] == _serving_secret_name(b)
    ref = api["spec"]["service"]
    assert f"{ref['name']}.{ref['namespace']}.svc" in cert["spec"]["dnsNames"]
    issuer = b.one("Issuer", cert["spec"]["issuerRef"]["name"])
    assert "ca" in issuer["spec"], "the serving cert must come from the CA whose cert is injected"


def test_self_signed_variant_ca_bundle_signs_the_serving_secret(builds: dict[str, Build]) -> None:
    assert len(builds["adapter/self-signed"].find("APIService")) == 1
    b = builds["all+custom-metrics"]  # the component copies the external APIService's caBundle
    apis = b.find("APIService")
    assert len(apis) == 2 and apis[0]["spec"]["caBundle"] == apis[1]["spec"]["caBundle"]
    api = apis[0]
    ca = x509.load_pem_x509_certificate(base64.b64decode(api["spec"]["caBundle"]))
    secret = b.one("Secret", _serving_secret_name(b))
    assert secret["type"] == "kubernetes.io/tls"
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))  # type: ignore[arg-type]
    ref = api["spec"]["service"]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{ref['name']}.{ref['namespace']}.svc" in sans.get_values_for_type(x509.DNSName)


def test_rules_configmap_is_the_adapters_default_rules_file(builds: dict[str, Build]) -> None:
    b = builds["all"]
    dep = b.one("Deployment", "toposcale-adapter")
    rules_path = Path(arg_value(container(dep), "--rules") or "")
    mount = next(m for m in container(dep)["volumeMounts"] if m["mountPath"] == str(rules_path.parent))
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = b.one("ConfigMap", vol["configMap"]["name"])  # kustomize rewrote the name to the hashed one
    assert cm["data"][rules_path.name] == RULES_FILE.read_text()


def test_hpa_metrics_exist_in_the_default_rules(builds: dict[str, Build]) -> None:
    hpa = builds["examples/qwen"].one("HorizontalPodAutoscaler", "vllm-qwen")
    asked = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "External"}
    assert asked and asked <= rule_names(), asked - rule_names()
    targets = {
        m["external"]["metric"]["name"]: m["external"]["target"]["type"] for m in hpa["spec"]["metrics"]
    }
    assert targets == {"vllm_requests_waiting": "AverageValue", "vllm_kv_cache_usage": "Value"}


def test_hpa_reader_role_lists_exactly_the_rule_metrics(builds: dict[str, Build]) -> None:
    b = builds["all"]
    role = b.one("ClusterRole", "toposcale:external-metrics-reader")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == rule_names()
    binding = next(
        o for o in b.find("ClusterRoleBinding") if o["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert {
        "kind": "ServiceAccount",
        "name": "horizontal-pod-autoscaler",
        "namespace": "kube-system",
    } in binding["subjects"]


def test_hpa_custom_reader_role_lists_the_rules_offered_per_pod(builds: dict[str, Build]) -> None:
    from toposcale.adapter.rules import load_rules

    b = builds["all+custom-metrics"]
    role = b.one("ClusterRole", "toposcale:custom-metrics-reader")
    assert [rule["apiGroups"] for rule in role["rules"]] == [["custom.metrics.k8s.io"]]
    offered = {r.name for r in load_rules().rules if r.offered_per_pod}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    # the SubjectAccessReview names resource pods or deployments.apps and the metric as subresource
    assert resources == {f"{res}/{m}" for res in ("pods", "deployments.apps") for m in offered}
    binding = next(
        o for o in b.find("ClusterRoleBinding") if o["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert {"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"} in \
        binding["subjects"]


def test_hpa_selects_the_pods_it_scales(builds: dict[str, Build]) -> None:
    b = builds["examples/qwen"]
    hpa = b.one("HorizontalPodAutoscaler")
    dep = b.one("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for m in hpa["spec"]["metrics"]:
        sel = m["external"]["metric"]["selector"]["matchLabels"]
        assert sel.items() <= pod_labels.items(), f"{m['external']['metric']['name']} selects no pod of {dep}"
        assert hpa["metadata"]["namespace"] == dep["metadata"]["namespace"]


# ------------------------------------------------------------------ extender and scheduler

# Field names of k8s.io/kube-scheduler/config/v1 (types.go) and component-base LeaderElectionConfiguration.
# kube-scheduler decodes its config strictly: an unknown key stops it at start-up.
SCHED_TOP = {
    "apiVersion",
    "kind",
    "parallelism",
    "leaderElection",
    "clientConnection",
    "healthzBindAddress",
    "metricsBindAddress",
    "enableProfiling",
    "enableContentionProfiling",
    "percentageOfNodesToScore",
    "podInitialBackoffSeconds",
    "podMaxBackoffSeconds",
    "profiles",
    "extenders",
    "delayCacheUntilActive",
}
SCHED_PROFILE = {"schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig"}
SCHED_EXTENDER = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}
SCHED_LEADER = {
    "leaderElect",
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "resourceLock",
    "resourceName",
    "resourceNamespace",
}


def scheduler_config(b: Build) -> dict[str, Any]:
    dep = b.one("Deployment", "toposcale-scheduler")
    c = container(dep)
    path = Path(arg_value(c, "--config") or "")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    return yaml.safe_load(b.one("ConfigMap", vol["configMap"]["name"])["data"][path.name])


def check_scheduler_config(cfg: dict[str, Any], extender_args: Any) -> dict[str, Any]:
    assert (cfg["apiVersion"], cfg["kind"]) == (
        "kubescheduler.config.k8s.io/v1",
        "KubeSchedulerConfiguration",
    )
    assert set(cfg) <= SCHED_TOP, set(cfg) - SCHED_TOP
    assert set(cfg["leaderElection"]) <= SCHED_LEADER and cfg["leaderElection"]["leaderElect"] is True
    for p in cfg["profiles"]:
        assert set(p) <= SCHED_PROFILE, set(p) - SCHED_PROFILE
        assert p["percentageOfNodesToScore"] == 100
    (ext,) = cfg["extenders"]
    assert set(ext) <= SCHED_EXTENDER, set(ext) - SCHED_EXTENDER
    assert ext["nodeCacheCapable"] is True and ext["ignorable"] is True
    assert ext["managedResources"] == [{"name": "nvidia.com/gpu", "ignoredByScheduler": False}]
    assert re.fullmatch(r"\d+(ms|s)", ext["httpTimeout"])
    assert isinstance(ext["weight"], int) and ext["weight"] > 0
    # the scheduler POSTs strings.TrimRight(urlPrefix, "/") + "/" + verb: those must be extender routes
    url = urlparse(ext["urlPrefix"])
    served = {(m, extender_args.url_prefix + p) for m, p in wire.ROUTES.values()}
    for verb in (ext["filterVerb"], ext["prioritizeVerb"]):
        assert ("POST", url.path.rstrip("/") + "/" + verb) in served, verb
    assert (ext["filterVerb"], ext["prioritizeVerb"]) == (wire.FILTER_VERB, wire.PRIORITIZE_VERB)
    return ext


def _extender_args(b: Build) -> Any:
    return cli.build_parser().parse_args(container(b.one("Deployment", "toposcale-extender"))["args"])


def test_scheduler_profile_calls_the_extender_service(builds: dict[str, Build]) -> None:
    b = builds["extender"]
    cfg = scheduler_config(b)
    ext = check_scheduler_config(cfg, _extender_args(b))
    url = urlparse(ext["urlPrefix"])
    svc_name, svc_ns = url.hostname.split(".")[:2]  # type: ignore[union-attr]
    assert url.hostname in (f"{svc_name}.{svc_ns}.svc", f"{svc_name}.{svc_ns}.svc.cluster.local")
    workload, port = service_target(b, svc_name, svc_ns, url.port or 80)
    assert workload["metadata"]["name"] == "toposcale-extender"
    assert port == _extender_args(b).port
    # leader election lease is one the scheduler's Role may update
    le = cfg["leaderElection"]
    role = b.one("Role", "toposcale-scheduler-leader-election")
    assert role["metadata"]["namespace"] == le["resourceNamespace"]
    assert any(
        le["resourceName"] in r.get("resourceNames", []) and "update" in r["verbs"] for r in role["rules"]
    )


def test_only_the_schedulers_and_the_adapters_pods_reach_the_extender(builds: dict[str, Build]) -> None:
    """The extender asks no credentials (issue 28): its NetworkPolicy selects its pods and admits, on the
    port the scheduler's urlPrefix reaches, only the second scheduler's pods and the adapter's."""
    b = builds["all"]
    pol = b.one("NetworkPolicy", "toposcale-extender")
    ext = b.one("Deployment", "toposcale-extender")
    ext_pods = ext["spec"]["template"]["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= ext_pods.items()
    assert pol["spec"]["policyTypes"] == ["Ingress"] and len(pol["spec"]["ingress"]) == 1
    rule = pol["spec"]["ingress"][0]
    admitted = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert [set(p) for p in rule["from"]] == [{"podSelector"}] * 2  # pods of this namespace, no others
    for name, labels in zip(("toposcale-scheduler", "toposcale-adapter"), admitted, strict=True):
        pods = b.one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= pods.items()
    _, port = service_target(b, "toposcale-extender", "toposcale", 8888)
    assert [port_number(container(ext), p["port"]) for p in rule["ports"]] == [port]


def test_default_scheduler_patch_has_the_same_extender_stanza(builds: dict[str, Build]) -> None:
    cfg = yaml.safe_load((DEPLOY / "extender/default-scheduler/kube-scheduler-config.yaml").read_text())
    ext = check_scheduler_config(cfg, _extender_args(builds["extender"]))
    assert ext == scheduler_config(builds["extender"])["extenders"][0]


def test_example_workload_uses_the_toposcale_profile(builds: dict[str, Build]) -> None:
    names = {p["schedulerName"] for p in scheduler_config(builds["extender"])["profiles"]}
    dep = builds["examples/qwen"].one("Deployment", "vllm-qwen")
    pod = dep["spec"]["template"]["spec"]
    assert pod["schedulerName"] in names
    vllm = container(dep, "vllm")
    gpus = int(vllm["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == 4 == int(arg_value(vllm, "--tensor-parallel-size") or 0)
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"


def test_probes_hit_routes_the_extender_serves(builds: dict[str, Build]) -> None:
    b = builds["extender"]
    args = _extender_args(b)
    c = container(b.one("Deployment", "toposcale-extender"))
    served = {(m, args.url_prefix + p) for m, p in wire.ROUTES.values()}
    for probe in ("readinessProbe", "livenessProbe"):
        assert ("GET", c[probe]["httpGet"]["path"]) in served
    # Ready only once the watch cache synced; alive meanwhile (a long first list must not restart it).
    assert c["readinessProbe"]["httpGet"]["path"] == args.url_prefix + wire.ROUTES["readyz"][1]
    assert c["livenessProbe"]["httpGet"]["path"] == args.url_prefix + wire.ROUTES["healthz"][1]


def test_extender_body_limit_fits_its_memory_limit(builds: dict[str, Build]) -> None:
    from toposcale.extender.admission import PENDING_PER_SLOT

    c = container(builds["extender"].one("Deployment", "toposcale-extender"))
    args = _extender_args(builds["extender"])
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") or limit.endswith("Mi")
    limit_mib = int(limit[:-2]) * (1024 if limit.endswith("Gi") else 1)
    # Bodies held at once (read before a slot is taken) at their largest, beside the cache and the process.
    worst_bodies_mib = PENDING_PER_SLOT * args.max_inflight * args.max_body_mb
    assert worst_bodies_mib <= limit_mib // 2, (worst_bodies_mib, limit_mib)


# ------------------------------------------------------------------ agent


def _string_constants(files: list[Path]) -> set[str]:
    out = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.add(node.value)
    return out


def _annotation_keys_used(files: list[Path]) -> set[str]:
    """toposcale.io/ keys a package uses: literals, and the annotations module's constants it names."""
    consts = {n: getattr(annotations, n) for n in dir(annotations) if n.endswith("_ANNOTATION")}
    keys = {s for s in _string_constants(files) if re.fullmatch(r"toposcale\.io/[\w.-]+", s)}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            name = (
                node.id
                if isinstance(node, ast.Name)
                else node.attr
                if isinstance(node, ast.Attribute)
                else None
            )
            if name in consts:
                keys.add(consts[name])
    return keys


def test_agent_writes_the_node_annotations_the_extender_reads() -> None:
    agent_files = sorted((ROOT / "extender/agent").rglob("*.py"))
    extender_files = [
        p
        for p in sorted((ROOT / "extender").rglob("*.py"))
        if "agent" not in p.relative_to(ROOT / "extender").parts and p.parent.name != "topology"
    ]  # the contract module itself defines them all
    written = _annotation_keys_used(agent_files)
    read = _annotation_keys_used(extender_files) - {annotations.REQUIRED_SCOPE_ANNOTATION}  # a Pod annotation
    assert written == read == {annotations.TOPOLOGY_ANNOTATION, annotations.ALLOCATION_ANNOTATION}


def test_agent_daemonset_mounts_the_kubelet_socket_read_only(builds: dict[str, Build]) -> None:
    from toposcale.extender.agent.cli import DEFAULT_SOCKET

    ds = builds["agent"].one("DaemonSet", "toposcale-agent")
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    socket_dir = str(Path(arg_value(c, "--pod-resources-socket") or DEFAULT_SOCKET).parent)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == socket_dir)
    assert mount["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert arg_value(c, "--node-name") == "$(NODE_NAME)"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), "the agent must not hold GPUs"


# ------------------------------------------------------------------ RBAC against the API calls in the code

READ = {"get", "list", "watch"}
VERB_OF = {
    "read": "get",
    "list": "list",
    "patch": "patch",
    "create": "create",
    "delete": "delete",
    "replace": "update",
}
RESOURCE_OF = {
    "node": ("", "nodes"),
    "pod": ("", "pods"),
    "deployment": ("apps", "deployments"),
    "namespace": ("", "namespaces"),
    "config_map": ("", "configmaps"),
    "service": ("", "services"),
    "event": ("", "events"),
    "endpoints": ("", "endpoints"),
    "lease": ("coordination.k8s.io", "leases"),
    "resource_slice": ("resource.k8s.io", "resourceslices"),
    "resource_claim": ("resource.k8s.io", "resourceclaims"),
    "resource_claim_template": ("resource.k8s.io", "resourceclaimtemplates"),
    "device_class": ("resource.k8s.io", "deviceclasses"),
    "token_review": ("authentication.k8s.io", "tokenreviews"),
    "subject_access_review": ("authorization.k8s.io", "subjectaccessreviews"),
}
CALL_RE = re.compile(
    r"\.(read|list|patch|create|delete|replace)_(?:namespaced_)?([a-z_]+?)"
    r"(_for_all_namespaces)?(_status)?\b"
)
# ClusterRoles/Roles that ship with Kubernetes, as far as toposcale uses them.
BUILTIN = {
    "system:auth-delegator": {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    },
    "extension-apiserver-authentication-reader": {("", "configmaps", v) for v in READ},
}
COMPONENTS = {
    "toposcale-adapter": lambda p: p.is_relative_to(ROOT / "adapter"),
    "toposcale-extender": lambda p: (
        p.is_relative_to(ROOT / "extender") and not p.is_relative_to(ROOT / "extender/agent")
    ),
    "toposcale-agent": lambda p: p.is_relative_to(ROOT / "extender/agent"),
}


def api_calls(files: list[Path]) -> set[tuple[str, str, str]]:
    out = set()
    for f in files:
        for m in CALL_RE.finditer(f.read_text()):
            if m.group(2) in RESOURCE_OF:
                group, res = RESOURCE_OF[m.group(2)]
                out.add((group, res + ("/status" if m.group(4) else ""), VERB_OF[m.group(1)]))
    return out


def granted(b: Build, sa: str) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for binding in b.find("ClusterRoleBinding") + b.find("RoleBinding"):
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == sa for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        role = next(iter(b.find(ref["kind"], ref["name"])), None)
        if role is None:
            out |= BUILTIN.get(ref["name"], set())
            continue
        for rule in role["rules"]:
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


@pytest.mark.parametrize("sa", sorted(COMPONENTS))
def test_rbac_grants_what_the_code_calls_and_no_more(builds: dict[str, Build], sa: str) -> None:
    files = [
        p for top in ("adapter", "extender") for p in sorted((ROOT / top).rglob("*.py")) if COMPONENTS[sa](p)
    ]
    calls = api_calls(files)
    assert calls, f"no Kubernetes API calls found in {sa}'s code: the pattern no longer sees them"
    have = granted(builds["all"], sa)
    if sa == "toposcale-adapter":  # --pod-deletion-cost: `patch` pods, from the opt-in component
        have |= granted(builds["examples/qwen+pod-deletion-cost"], sa)
    # a list handed to toposcale.core.kube.Reflector is followed by watches: those resources need list + watch
    reflected = reflector_resources(files)
    needed = calls | {(g, r, "watch") for g, r in reflected}
    assert needed <= have, f"{sa} calls these without RBAC: {sorted(needed - have)}"
    own = {k for k in have if not any(k in v for v in BUILTIN.values())}
    # a resource kept in a Reflector's cache may also be read with get (the read set is not broader);
    # every other grant is exactly a verb the code calls
    extra = {(g, r, v) for g, r, v in own - needed if not (v in READ and (g, r) in reflected)}
    assert extra == set(), f"{sa} is granted more than its code uses: {sorted(extra)}"


REFLECTOR_RE = re.compile(r"\bReflector\(\s*([^,()]+(?:\([^()]*\)[^,()]*)*)[,)]")


def reflector_resources(files: list[Path]) -> set[tuple[str, str]]:
    """(group, resource) of the list functions passed to Reflector(...) as its first argument."""
    out = set()
    for f in files:
        for arg in REFLECTOR_RE.findall(f.read_text()):
            for m in CALL_RE.finditer(arg):
                if m.group(1) == "list" and m.group(2) in RESOURCE_OF:
                    out.add(RESOURCE_OF[m.group(2)])
    return out


def test_reflector_resources_are_found_in_the_code() -> None:
    adapter = sorted((ROOT / "adapter").rglob("*.py"))
    extender = [p for p in sorted((ROOT / "extender").rglob("*.py")) if "agent" not in p.parts]
    assert reflector_resources(adapter) == {("", "configmaps")}
    assert reflector_resources(extender) >= {("", "nodes"), ("", "pods")}
    assert reflector_resources(extender) >= {
        ("resource.k8s.io", r) for r in ("resourceslices", "resourceclaims", "deviceclasses")
    }


# ------------------------------------------------------------------ examples, monitoring, README


def test_keda_variant_replaces_the_hpa_and_scales_on_the_same_metrics(builds: dict[str, Build]) -> None:
    """The ScaledObject asks the toposcale adapter's external scaler for the HPA example's two metrics, with
    the same selector and targets, and can scale to zero with activation on the queue."""
    b = builds["examples/qwen-keda"]
    assert b.find("HorizontalPodAutoscaler") == []
    so = b.one("ScaledObject")
    dep = b.one("Deployment")
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert so["spec"]["minReplicaCount"] == 0
    hpa = builds["examples/qwen"].one("HorizontalPodAutoscaler", "vllm-qwen")
    assert so["spec"]["maxReplicaCount"] == hpa["spec"]["maxReplicas"]
    from toposcale.adapter.selectors import parse_selector

    def quantity(text: str) -> float:  # the two forms the example uses: "4", "750m"
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)

    want = {}
    for m in hpa["spec"]["metrics"]:
        target = m["external"]["target"]
        want[m["external"]["metric"]["name"]] = (
            target["type"], quantity(target.get("averageValue") or target["value"]),
            m["external"]["metric"]["selector"]["matchLabels"])
    got = {}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for t in so["spec"]["triggers"]:
        assert t["type"] == "external"
        md = t["metadata"]
        assert md["metricName"] in rule_names()
        assert parse_selector(md["labelSelector"]).matches(pod_labels)
        selector = dict(kv.split("=", 1) for kv in md["labelSelector"].split(","))
        got[md["metricName"]] = (t["metricType"], float(md["targetValue"]), selector)
        assert float(md["activationValue"]) >= 0
    assert got == want
    queue = next(t for t in so["spec"]["triggers"] if t["metadata"]["metricName"] == "vllm_requests_waiting")
    assert queue["metadata"]["activationValue"] == "0"  # active while any request waits


def test_keda_scaler_address_reaches_the_adapters_grpc_port_over_tls(builds: dict[str, Build]) -> None:
    adapter_build = builds["adapter/keda"]
    so = builds["examples/qwen-keda"].one("ScaledObject")
    for t in so["spec"]["triggers"]:
        host, port = t["metadata"]["scalerAddress"].rsplit(":", 1)
        name, namespace, svc = host.split(".")
        assert svc == "svc"
        workload, container_port = service_target(adapter_build, name, namespace, int(port))
        c = container(workload)
        assert container_port == int(arg_value(c, "--keda-grpc-port") or 0)
        # TLS, verified: KEDA checks the certificate for the host it dials, with the CA of the auth
        assert t["metadata"]["enableTLS"] == "true" and "unsafeSsl" not in t["metadata"]
        cert = adapter_build.one("Certificate", "toposcale-adapter-serving")
        assert host in cert["spec"]["dnsNames"]
        assert cert["spec"]["secretName"] == _serving_secret_name(adapter_build)
        auth = builds["examples/qwen-keda"].one("TriggerAuthentication", t["authenticationRef"]["name"])
        assert auth["metadata"]["namespace"] == so["metadata"]["namespace"]
        assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"caCert"}


def test_keda_adapter_variant_has_no_apiservice_and_serves_grpc(builds: dict[str, Build]) -> None:
    b = builds["adapter/keda"]
    assert b.find("APIService") == []  # KEDA's metrics server owns v1beta1.external.metrics.k8s.io
    dep = b.one("Deployment", "toposcale-adapter")
    c = container(dep)
    args, unknown = cli.build_parser().parse_known_args(c["args"])
    assert unknown == [] and args.keda_grpc_port == port_number(c, "grpc")
    assert args.tls_cert_file and args.insecure_allow_anonymous is False  # TLS on both ports
    assert {p["name"] for p in b.one("Service", "toposcale-adapter")["spec"]["ports"]} == {"https", "grpc"}
    # the other variants keep the gRPC port closed, and neither the Pod nor the Service names one
    for variant in ("adapter/cert-manager", "adapter/self-signed", "all", "all-cert-manager"):
        c = container(builds[variant].one("Deployment", "toposcale-adapter"))
        assert arg_value(c, "--keda-grpc-port") is None
        assert [p["name"] for p in c["ports"]] == ["https"]
        assert [p["name"] for p in builds[variant].one("Service", "toposcale-adapter")["spec"]["ports"]] == [
            "https"]
    # only KEDA's namespace reaches the gRPC port; HTTPS stays open (probes, Prometheus, it authorizes)
    pol = b.one("NetworkPolicy", "toposcale-adapter")
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= (
        dep["spec"]["template"]["metadata"]["labels"].items())
    by_port = {p["port"]: rule.get("from") for rule in pol["spec"]["ingress"] for p in rule["ports"]}
    assert by_port["https"] is None
    keda_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    assert by_port["grpc"] == [keda_ns]


def test_podmonitors_select_the_pods_and_ports(builds: dict[str, Build]) -> None:
    b = builds["examples/qwen+podmonitors"]
    pm = b.one("PodMonitor", "vllm")
    dep = b.one("Deployment", "vllm-qwen")
    assert (
        pm["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in container(dep, "vllm")["ports"]}
    assert {ep["port"] for ep in pm["spec"]["podMetricsEndpoints"]} <= ports
    assert b.one("PodMonitor", "dcgm-exporter")["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True


def test_hpa_selector_labels_reach_prometheus_through_the_podmonitor(builds: dict[str, Build]) -> None:
    """In Prometheus mode each HPA selector key is a PromQL matcher on the series the rule reads: the vLLM
    series (the GPU rules select their owner series, a vLLM one, and join the DCGM series on namespace/pod).
    The Operator puts only `namespace`, `pod` (and container/endpoint) and the pod labels named in
    `podTargetLabels` on the series."""
    from toposcale.adapter.rules import load_rules
    from toposcale.adapter.selectors import prometheus_label_name

    b = builds["examples/qwen+podmonitors"]
    pm = b.one("PodMonitor", "vllm")
    on_series = set(pm["spec"].get("podTargetLabels", [])) | {"namespace", "pod"}
    rules = {r.name: r for r in load_rules(str(RULES_FILE)).rules}
    hpa = b.one("HorizontalPodAutoscaler", "vllm-qwen")
    for m in hpa["spec"]["metrics"]:
        rule = rules[m["external"]["metric"]["name"]]
        selected = [rule.gpu_owner.owner_series] if rule.gpu_owner else rule.series
        assert all(s.startswith("vllm:") for s in selected), f"{rule.name} selects non-vLLM series {selected}"
        keys = {prometheus_label_name(k) for k in m["external"]["metric"]["selector"]["matchLabels"]}
        assert keys <= on_series, f"{rule.name}: {sorted(keys - on_series)} never reach Prometheus"
    for rule in rules.values():
        if rule.gpu_owner is not None:  # the join labels are the exporter's own (honorLabels keeps them)
            assert (rule.gpu_owner.namespace_label, rule.gpu_owner.pod_label) == ("namespace", "pod")
    dcgm = b.one("PodMonitor", "dcgm-exporter")
    assert all(ep.get("honorLabels") is True for ep in dcgm["spec"]["podMetricsEndpoints"])


def test_dashboards_ship_as_grafana_configmaps(builds: dict[str, Build]) -> None:
    sources = sorted((ROOT / "dashboards").glob("*.json"))
    assert sources, "dashboards/ has no *.json"
    cms = builds["monitoring"].find("ConfigMap")
    by_key = {k: (cm, v) for cm in cms for k, v in cm["data"].items()}
    for src in sources:
        cm, text = by_key[src.name]
        assert text == src.read_text()
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {cm["metadata"]["name"] for cm in builds["all"].find("ConfigMap")} >= {
        cm["metadata"]["name"] for cm in cms
    }


def test_readme_paths_metrics_and_annotations_exist() -> None:
    text = (DEPLOY / "README.md").read_text()
    for path in set(re.findall(r"\bdeploy/[\w./-]+", text)):
        assert (ROOT / path.rstrip(".")).exists(), f"README names {path}, which does not exist"
    for metric in re.findall(r"external\.metrics\.k8s\.io/v1beta1/namespaces/[\w-]+/(\w+)", text):
        assert metric in rule_names()
    keys = {k.replace("\\.", ".") for k in re.findall(r"toposcale\\?\.io/[\w-]+", text)}
    assert keys and keys <= {getattr(annotations, n) for n in dir(annotations) if n.endswith("_ANNOTATION")}


def _adapter_get_routes() -> set[str]:
    from aiohttp import web
    from toposcale.adapter.api import add_routes

    class AnyHandler:
        def __getattr__(self, name: str) -> Any:
            async def handler(request: web.Request) -> web.Response:
                return web.Response()

            return handler

    app = web.Application()
    add_routes(app, AnyHandler(), AnyHandler())  # type: ignore[arg-type]
    return {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}


def test_adapter_probes_hit_routes_kubelet_may_call_without_credentials(builds: dict[str, Build]) -> None:
    from toposcale.adapter.security.authz import DEFAULT_ALWAYS_ALLOW_PATHS

    c = container(builds["all"].one("Deployment", "toposcale-adapter"))
    routes = _adapter_get_routes()
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in routes
        # the kubelet probes without credentials: only always-allowed paths answer it
        assert get["path"] in DEFAULT_ALWAYS_ALLOW_PATHS
        assert get["scheme"] == "HTTPS"
        assert port_number(c, get["port"]) == int(arg_value(c, "--port") or 0)


def test_agent_probes_hit_routes_the_agent_serves(builds: dict[str, Build]) -> None:
    source = (ROOT / "extender/agent/service.py").read_text()
    routes = set(re.findall(r"add_get\(\s*\"([^\"]+)\"", source))
    c = container(builds["agent"].one("DaemonSet", "toposcale-agent"))
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes, routes
        assert port_number(c, c[probe]["httpGet"]["port"]) == int(arg_value(c, "--port") or 0)


async def test_readme_explain_command_is_answered_by_the_extender(kube_cluster: Any) -> None:
    """The README's `curl .../explain?...` against the real extender app, whose cluster view is read through
    kubernetes-asyncio from the session's real kube-apiserver (the pod in a namespace of the test's own, in
    place of the README's `llm`). A query key the extender does not read answers 400, not the pod."""
    import asyncio
    import time
    import uuid

    import aiohttp
    from aiohttp import web
    from toposcale.extender.server import Extender, ServerConfig
    from toposcale.extender.state import ClusterState

    from lab.kube.client import RealKube
    from toposcale.core.kube import api_client

    text = (DEPLOY / "README.md").read_text()
    (url,) = re.findall(r"curl -s \"(localhost:8888/explain\?[^\"]+)\"", text)
    # the README's port-forward goes to the extender Service's port: the extender's own default port
    assert urlparse("http://" + url).port == cli.build_parser().parse_args(["extender"]).port
    ns = f"llm-{uuid.uuid4().hex[:6]}"
    assert "pod=llm/<vllm-pod>" in url
    path_query = url.removeprefix("localhost:8888").replace("llm/<vllm-pod>", f"{ns}/vllm-qwen-0")
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "vllm-qwen-0", "namespace": ns, "annotations": {}},
        "spec": {"schedulerName": "nobody",  # stays Pending, as the README's pod is while it is explained
                 "containers": [{"name": "vllm", "image": "vllm/vllm-openai",
                                 "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
    }
    kube = RealKube(kube_cluster)
    kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.add(pod)
    api = await api_client(str(kube_cluster.admin_kubeconfig))
    state = ClusterState("nvidia.com/gpu", reflect_grace_s=1.0)
    await state.start(api)
    runner = web.AppRunner(Extender(ServerConfig(), state).app(), access_log=None)
    try:
        deadline = time.monotonic() + 30
        while not state.synced:
            assert time.monotonic() < deadline, "extender never synced with the API server"
            await asyncio.sleep(0.02)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path_query}") as r:
            body = await r.text()
    finally:
        await runner.cleanup()
        await state.stop()
        await api.close()
        kube.cleanup()
    assert r.status == 200, body
    assert yaml.safe_load(body)["gpus"] == 4  # the pod the README names, read from the cluster


def test_priority_quota_covers_the_critical_classes_deploy_uses(builds: dict[str, Build]) -> None:
    """Critical priority classes outside kube-system need a ResourceQuota scoped to them on some providers
    (GKE): deploy/priority-quota ships it for exactly the classes and namespace deploy/all uses."""
    used: dict[str, set[str]] = {}
    for o in builds["all"].objects:
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            pc = o["spec"]["template"]["spec"].get("priorityClassName")
            if pc and pc.startswith("system-") and o["metadata"]["namespace"] != "kube-system":
                used.setdefault(o["metadata"]["namespace"], set()).add(pc)
    assert used, "no critical priority class in deploy/all: drop deploy/priority-quota and its README note"
    quota = builds["priority-quota"].one("ResourceQuota")
    (expr,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert (expr["scopeName"], expr["operator"]) == ("PriorityClass", "In")
    assert used == {quota["metadata"]["namespace"]: set(expr["values"])}
    dep = builds["all"].one("Deployment", "toposcale-scheduler")
    assert int(quota["spec"]["hard"]["pods"]) > dep["spec"]["replicas"]
    assert "deploy/priority-quota" in (DEPLOY / "README.md").read_text()


def test_qwen_needs_no_storage_class_and_shared_models_swaps_in_the_pvc(builds: dict[str, Build]) -> None:
    """By default each vLLM pod downloads the weights into its own emptyDir (no PVC that a cluster without a
    ReadWriteMany class leaves Pending); the shared-models component mounts the pre-filled RWX PVC instead,
    read-only, offline, with --model pointing into it."""
    plain = builds["examples/qwen"]
    assert plain.find("PersistentVolumeClaim") == []
    pod = plain.one("Deployment", "vllm-qwen")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in vol and "persistentVolumeClaim" not in vol
    c = container(plain.one("Deployment", "vllm-qwen"), "vllm")
    assert arg_value(c, "--model") == "Qwen/Qwen2.5-7B-Instruct"
    assert {"name": "HF_HOME", "value": "/models"} in c["env"]

    shared = builds["examples/qwen+shared-models"]
    pvc = shared.one("PersistentVolumeClaim", "models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = shared.one("Deployment", "vllm-qwen")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "models")
    assert vol == {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    c = container(shared.one("Deployment", "vllm-qwen"), "vllm")
    assert arg_value(c, "--model") == "/models/Qwen2.5-7B-Instruct"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]
    assert next(m for m in c["volumeMounts"] if m["name"] == "models")["readOnly"] is True
