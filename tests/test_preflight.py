"""`toposcale preflight`'s decisions on wire-format objects (toposcale/preflight.py `check`); the command
against a real control plane with KEDA's and a prometheus-adapter-like APIService:
tests/cluster/test_install_safety.py."""

from __future__ import annotations

from typing import Any

from toposcale.preflight import CRD_KINDS, Cluster, Options, check, owner, plan, scheduler_advice


def apiservice(name: str, ns: str, svc: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    version, group = name.split(".", 1)
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"group": group, "version": version, "service": {"namespace": ns, "name": svc}},
    }


KEDA = apiservice(
    "v1beta1.external.metrics.k8s.io",
    "keda",
    "keda-metrics-apiserver",
    {"app.kubernetes.io/part-of": "keda-operator"},
)
PROM_ADAPTER = apiservice(
    "v1beta1.custom.metrics.k8s.io",
    "monitoring",
    "prometheus-adapter",
    {"app.kubernetes.io/name": "prometheus-adapter"},
)
OURS = apiservice("v1beta1.external.metrics.k8s.io", "toposcale", "toposcale-adapter")
ALL_KINDS = {gv: set(kinds) for gv, kinds in CRD_KINDS.values()}


def cluster(
    *apiservices: dict[str, Any], kinds: dict[str, set[str]] | None = None, version: str = "v1.31.4"
) -> Cluster:
    return Cluster(version, list(apiservices), kinds if kinds is not None else {})


def test_owners_are_named() -> None:
    assert owner(KEDA) == "KEDA"
    assert owner(PROM_ADAPTER) == "prometheus-adapter"
    assert owner(OURS) == "toposcale"
    assert owner({"metadata": {"name": "v1.apps"}, "spec": {"group": "apps"}}) == "another provider"


def test_keda_on_external_metrics_is_a_conflict_naming_the_keda_variant() -> None:
    r = check(Options(), cluster(KEDA))
    assert len(r.conflicts) == 1
    assert (
        "external.metrics.k8s.io is already served by KEDA (APIService v1beta1.external.metrics.k8s.io, "
        "Service keda/keda-metrics-apiserver)" in r.conflicts[0]
    )
    assert "adapter.keda.enabled=true" in r.conflicts[0] and "deploy/adapter/keda" in r.conflicts[0]
    # the KEDA variant registers no APIService: nothing to take over (and KEDA's kinds are needed)
    assert check(Options(keda=True), cluster(KEDA, kinds=ALL_KINDS)).conflicts == []
    assert [c for c in check(Options(keda=True), cluster(KEDA)).conflicts if "KEDA kinds" in c]


def test_prometheus_adapter_on_custom_metrics_is_left_alone_by_default() -> None:
    r = check(Options(), cluster(PROM_ADAPTER))
    assert r.conflicts == []
    assert any(
        "custom.metrics.k8s.io: v1beta1.custom.metrics.k8s.io served by prometheus-adapter" in line
        and "leaves it alone" in line
        for line in r.lines
    )
    # the opt-in claims the group: refused, naming the owner
    r = check(Options(custom_metrics=True), cluster(PROM_ADAPTER))
    assert (
        len(r.conflicts) == 1
        and "custom.metrics.k8s.io is already served by prometheus-adapter" in r.conflicts[0]
    )
    assert "leave custom metrics off" in r.conflicts[0]


def test_our_own_apiservice_is_no_conflict() -> None:
    r = check(Options(), cluster(OURS))
    assert r.conflicts == [] and any("this toposcale install's own" in line for line in r.lines)
    # ... but not another namespace's toposcale
    assert check(Options(namespace="other"), cluster(OURS)).conflicts


def test_variants_need_their_kinds() -> None:
    r = check(Options(tls="cert-manager", monitors=True), cluster())
    assert sorted(c.split(" kinds")[0] for c in r.conflicts) == ["Prometheus Operator", "cert-manager"]
    assert check(Options(tls="cert-manager", monitors=True), cluster(kinds=ALL_KINDS)).conflicts == []
    assert check(Options(), cluster()).conflicts == []  # the default needs no CRD


def test_existing_objects() -> None:
    c = cluster()
    c.existing = {
        ("ClusterRole", "", "toposcale-adapter"): {"metadata": {"labels": {}}},
        ("ClusterRole", "", "toposcale-agent"): {
            "metadata": {"labels": {"app.kubernetes.io/part-of": "toposcale"}}
        },
        ("Namespace", "", "toposcale"): {
            "metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}
        },
    }
    r = check(Options(), c)
    assert r.conflicts == [
        "ClusterRole toposcale-adapter exists and is not toposcale's (no label app.kubernetes.io/part-of="
        "toposcale): the install would overwrite it"
    ]
    assert "  ClusterRole toposcale-agent: exists (toposcale's): updated" in r.lines
    assert any("enforces Pod Security 'baseline'" in w for w in r.warnings)


def test_plan_claims_only_what_was_asked() -> None:
    names = {n for _, _, n in plan(Options())}
    assert "v1beta1.external.metrics.k8s.io" in names and "v1beta2.custom.metrics.k8s.io" not in names
    assert "v1beta2.custom.metrics.k8s.io" in {n for _, _, n in plan(Options(custom_metrics=True))}
    assert not [k for k, _, _ in plan(Options(keda=True)) if k == "APIService"]


def test_scheduler_image_for_the_server() -> None:
    pinned = "registry.k8s.io/kube-scheduler:v1.30.14"
    assert scheduler_advice("v1.31.4", pinned) == ("registry.k8s.io/kube-scheduler:v1.31.4", None)
    assert scheduler_advice("v1.30.4-eks-a737599", pinned)[0] == "registry.k8s.io/kube-scheduler:v1.30.4"
    want, warn = scheduler_advice("v1.37.2", pinned)
    assert want == "registry.k8s.io/kube-scheduler:v1.37.2"
    assert warn and "7 minor versions older" in warn and "at most one minor older" in warn
    want, warn = scheduler_advice("v1.29.1", pinned)
    assert warn and "newer than the API server" in warn
    r = check(Options(), cluster(version="v1.37.2"))
    assert r.conflicts == [] and r.warnings  # a warning, not a conflict
    assert any("--set scheduler.image.tag=v1.37.2" in line for line in r.lines)
