"""deploy/monitors: the Prometheus Operator monitors reach each toposcale service's /metrics the way the
service serves it (port, path, TLS, authorization), and add the labels the dashboards group by.

Everything is read from the rendered manifests (real kubectl kustomize) and from the code: the routes the
services register, the adapter's always-allowed paths, the certificates make-certs.py writes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from toposcale.adapter.security.authz import DEFAULT_ALWAYS_ALLOW_PATHS
from toposcale.extender import wire
from toposcale.extender.agent.metrics import AgentMetrics

from .conftest import ROOT, Build
from .test_crosschecks import _adapter_get_routes, _serving_secret_name, arg_value, container, port_number

SERVICES = {  # ServiceMonitor -> (GET routes the service serves, scheme)
    "toposcale-adapter": (_adapter_get_routes, "https"),
    "toposcale-extender": (lambda: {p for m, p in wire.ROUTES.values() if m == "GET"}, "http"),
}


def endpoint(monitor: dict[str, Any]) -> dict[str, Any]:
    eps = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
    assert len(eps) == 1, monitor["metadata"]["name"]
    return eps[0]


def selected(build: Build, kind: str, monitor: dict[str, Any], labels_of: Any) -> list[dict[str, Any]]:
    namespaces = monitor["spec"]["namespaceSelector"]["matchNames"]
    want = monitor["spec"]["selector"]["matchLabels"].items()
    return [o for o in build.find(kind)
            if o["metadata"]["namespace"] in namespaces and want <= labels_of(o).items()]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_monitor_scrapes_the_service_port_and_route(builds: dict[str, Build], name: str) -> None:
    sm = builds["monitors"].one("ServiceMonitor", name)
    ep = endpoint(sm)
    [svc] = selected(builds["all"], "Service", sm, lambda o: o["metadata"].get("labels", {}))
    assert svc["metadata"]["name"] == name
    sp = next(p for p in svc["spec"]["ports"] if p.get("name") == ep["port"])
    workload = builds["all"].one("Deployment", name)
    c = container(workload)
    assert port_number(c, sp["targetPort"]) == int(arg_value(c, "--port") or 0)
    routes, scheme = SERVICES[name]
    assert ep["path"] in routes()
    assert ep.get("scheme", "http") == scheme


@pytest.mark.parametrize("variant", ["adapter/cert-manager", "adapter/self-signed"])
def test_adapter_monitor_verifies_the_serving_certificate(builds: dict[str, Build], variant: str) -> None:
    tls = endpoint(builds["monitors"].one("ServiceMonitor", "toposcale-adapter"))["tlsConfig"]
    assert not tls.get("insecureSkipVerify")
    secret_name = _serving_secret_name(builds[variant])
    assert tls["ca"]["secret"]["name"] == secret_name
    b = builds[variant]
    if variant == "adapter/cert-manager":
        # cert-manager's CA issuer puts ca.crt in the Secret it issues; the name Prometheus checks is a SAN
        cert = next(c for c in b.find("Certificate") if c["spec"]["secretName"] == secret_name)
        assert "ca" in b.one("Issuer", cert["spec"]["issuerRef"]["name"])["spec"]
        assert tls["ca"]["secret"]["key"] == "ca.crt"
        assert tls["serverName"] in cert["spec"]["dnsNames"]
        return
    data = b.one("Secret", secret_name)["data"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(data[tls["ca"]["secret"]["key"]]))
    leaf = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))  # type: ignore[arg-type]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert tls["serverName"] in sans.get_values_for_type(x509.DNSName)


def test_adapter_monitor_sends_a_token_allowed_to_get_metrics_and_nothing_more(
    builds: dict[str, Build],
) -> None:
    b = builds["monitors"]
    ep = endpoint(b.one("ServiceMonitor", "toposcale-adapter"))
    # /metrics is not one of the paths the adapter answers without a SubjectAccessReview
    assert ep["path"] not in DEFAULT_ALWAYS_ALLOW_PATHS
    assert ep["authorization"]["type"] == "Bearer"
    cred = ep["authorization"]["credentials"]
    secret = b.one("Secret", cred["name"])
    assert secret["type"] == "kubernetes.io/service-account-token" and cred["key"] == "token"
    sa_name = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    sa = b.one("ServiceAccount", sa_name)
    assert sa["metadata"]["namespace"] == secret["metadata"]["namespace"] == "toposcale"
    bindings = [o for o in b.find("ClusterRoleBinding")
                if {"kind": "ServiceAccount", "name": sa_name, "namespace": "toposcale"} in o["subjects"]]
    roles = [b.one("ClusterRole", o["roleRef"]["name"]) for o in bindings]
    rules = [r for role in roles for r in role["rules"]]
    assert rules == [{"nonResourceURLs": [ep["path"]], "verbs": ["get"]}]
    # served-value series keep the namespace of the metric they describe (see adapter/README.md)
    assert ep["honorLabels"] is True


def test_agent_pod_monitor_labels_each_agent_with_its_node(builds: dict[str, Build]) -> None:
    pm = builds["monitors"].one("PodMonitor", "toposcale-agent")
    ep = endpoint(pm)
    [ds] = selected(builds["all"], "DaemonSet", pm, lambda o: o["spec"]["template"]["metadata"]["labels"])
    c = container(ds)
    assert port_number(c, ep["port"]) == int(arg_value(c, "--port") or 0)
    source = (ROOT / "extender/agent/service.py").read_text()
    assert f'add_get("{ep["path"]}"' in source
    node = [r for r in ep["relabelings"] if r.get("targetLabel") == "node"]
    assert node == [{"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                     "targetLabel": "node"}]
    # the agent's own series declare no `node` label that the target label would clash with
    declared = {label for m in vars(AgentMetrics()).values() for label in getattr(m, "_labelnames", ())}
    assert "reason" in declared and "node" not in declared


def test_dashboard_agent_panels_group_by_the_monitors_node_label() -> None:
    dash = json.loads((ROOT / "dashboards/autoscaling-placement.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])
             if "toposcale_agent_" in t["expr"]]
    assert exprs
    for expr in exprs:
        assert "by (node)" in expr and 'node=~"$node"' in expr, expr


def test_only_opt_ins_need_the_prometheus_operator(builds: dict[str, Build]) -> None:
    """deploy/all, its variants and every example apply on a cluster without the Prometheus Operator: its
    kinds are only in deploy/monitors and the examples' podmonitors component."""
    needing = sorted(
        name
        for name, b in builds.items()
        if "monitoring.coreos.com" in {o["apiVersion"].split("/")[0] for o in b.objects}
    )
    assert needing == ["examples/qwen+podmonitors", "monitors"]
