"""Delegated authentication and authorization over real TLS with real certificates.

The server is the adapter's security stack (`build_security`: TLS context, middleware, ConfigMap watch) in
front of a small app that echoes who it was told the caller is. Kubernetes is the in-process stand-in
(lab/kube/standin.py, real wire format) reached through kubernetes-asyncio: it serves the
kube-system/extension-apiserver-authentication ConfigMap, TokenReviews (`kube.tokens`) and
SubjectAccessReviews (`kube.sar_decider`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import aiohttp
from toposcale.adapter.security.authconfig import CONFIGMAP_NAME, CONFIGMAP_NAMESPACE

from lab.kube.standin import KubeStandIn

from .conftest import METRIC_PATH, PKI, StartServer, auth_configmap, tls_flags, until

FRONT_PROXY_HEADERS = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                       "X-Remote-Group": "system:serviceaccounts",
                       "X-Remote-Extra-Scopes": "read", "X-Remote-Extra-Acme.com%2Fproject": "p1"}


def allow_all(specs: list[dict[str, Any]]) -> Any:
    def decide(spec: dict[str, Any]) -> bool:
        specs.append(copy.deepcopy(spec))
        return True
    return decide


async def test_front_proxy_certificate_with_identity_headers(pki: PKI, kube: KubeStandIn,
                                                             start_server: StartServer) -> None:
    """The aggregator's path: front-proxy client cert + X-Remote-* headers; the SAR asks about the metric."""
    kube.add(auth_configmap(pki))
    specs: list[dict[str, Any]] = []
    kube.sar_decider = allow_all(specs)
    srv = await start_server(tls_flags(pki, kube))
    headers = dict(FRONT_PROXY_HEADERS)
    headers["X-Remote-Uid"] = "6f1c0e6a-uid"
    code, body = await srv.get(METRIC_PATH + "?labelSelector=app%3Dvllm", cert=pki.front_proxy,
                               headers=headers)
    assert code == 200, body
    assert body["user"] == "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
    assert body["groups"] == ["system:serviceaccounts", "system:authenticated"]
    assert body["extra"] == {"scopes": ["read"], "acme.com/project": ["p1"]}  # lower-cased, %-decoded
    assert body["method"] == "requestheader"
    assert body["leaked_headers"] == {}, "identity headers must not reach the handler"
    # one SAR, in the apiserver's RequestInfo terms: the metric is the resource, a collection GET is `list`
    assert specs == [{
        "user": "system:serviceaccount:kube-system:horizontal-pod-autoscaler", "uid": "6f1c0e6a-uid",
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "extra": {"acme.com/project": ["p1"], "scopes": ["read"]},
        "resourceAttributes": {"namespace": "llm", "verb": "list", "group": "external.metrics.k8s.io",
                               "version": "v1beta1", "resource": "vllm_queue_depth"},
    }]


async def test_front_proxy_cn_not_in_allowed_names_is_401(pki: PKI, kube: KubeStandIn,
                                                          start_server: StartServer) -> None:
    kube.add(auth_configmap(pki, allowed=["front-proxy-client"]))
    kube.sar_decider = lambda spec: True
    other = pki.root.client(pki.fp_ca, "some-other-proxy")
    srv = await start_server(tls_flags(pki, kube))
    code, body = await srv.get(METRIC_PATH, cert=other, headers=FRONT_PROXY_HEADERS)
    assert code == 401
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert kube.calls["subjectaccessreviews"] == 0


async def test_identity_headers_without_front_proxy_cert_are_ignored(pki: PKI, kube: KubeStandIn,
                                                                    start_server: StartServer) -> None:
    """Spoofing: X-Remote-User from anyone but the front proxy counts for nothing."""
    kube.add(auth_configmap(pki))
    kube.tokens["tok-bob"] = {"username": "bob", "uid": "u-1", "groups": ["team-b"]}
    kube.sar_decider = lambda spec: True
    srv = await start_server(tls_flags(pki, kube))
    # no certificate, only the headers: no credentials -> 401
    code, _ = await srv.get(METRIC_PATH, headers=FRONT_PROXY_HEADERS)
    assert code == 401
    # a cluster-CA client cert plus the headers: the user is the cert's, not the header's
    code, body = await srv.get(METRIC_PATH, cert=pki.alice, headers={"X-Remote-User": "system:admin",
                                                                     "X-Remote-Group": "system:masters"})
    assert (code, body["user"], body["groups"]) == (200, "alice", ["dev", "system:authenticated"])
    assert body["leaked_headers"] == {}
    # a valid token plus the headers: the token's user
    code, body = await srv.get(METRIC_PATH, headers={"Authorization": "Bearer tok-bob",
                                                     "X-Remote-User": "system:admin"})
    assert (code, body["user"], body["method"]) == (200, "bob", "token")


async def test_client_ca_certificate_user_from_cn_groups_from_o(pki: PKI, kube: KubeStandIn,
                                                                start_server: StartServer) -> None:
    kube.add(auth_configmap(pki, with_front_proxy=False))
    specs: list[dict[str, Any]] = []
    kube.sar_decider = allow_all(specs)
    carol = pki.root.client(pki.ca, "carol", groups=["ml-platform", "oncall"])
    srv = await start_server(tls_flags(pki, kube))
    code, body = await srv.get("/apis/external.metrics.k8s.io/v1beta1", cert=carol)
    assert code == 200, body
    assert (body["user"], body["groups"], body["method"]) == (
        "carol", ["ml-platform", "oncall", "system:authenticated"], "x509")
    # discovery is a non-resource request
    assert specs[-1]["nonResourceAttributes"] == {"path": "/apis/external.metrics.k8s.io/v1beta1",
                                                  "verb": "get"}


async def test_bearer_token_via_tokenreview_cached(pki: PKI, kube: KubeStandIn,
                                                   start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    kube.tokens["tok-hpa"] = {"username": "system:serviceaccount:kube-system:hpa", "uid": "42",
                              "groups": ["system:serviceaccounts"],
                              "extra": {"authentication.kubernetes.io/pod-name": ["p"]}}
    specs: list[dict[str, Any]] = []
    kube.sar_decider = allow_all(specs)
    srv = await start_server(tls_flags(pki, kube))
    for _ in range(3):
        code, body = await srv.get(METRIC_PATH, headers={"Authorization": "Bearer tok-hpa"})
        assert code == 200, body
        assert body["user"] == "system:serviceaccount:kube-system:hpa"
        assert body["leaked_headers"] == {}, "the token must not reach the handler"
    assert kube.calls["tokenreviews"] == 1, "TokenReview answers are cached (10 s by default)"
    assert kube.calls["subjectaccessreviews"] == 1, "SAR answers are cached (10 s by default)"
    assert specs[0]["uid"] == "42" and specs[0]["extra"] == {"authentication.kubernetes.io/pod-name": ["p"]}
    code, body = await srv.get(METRIC_PATH, headers={"Authorization": "Bearer not-a-token"})
    assert code == 401 and body["reason"] == "Unauthorized"
    code, _ = await srv.get(METRIC_PATH, headers={"Authorization": "Bearer not-a-token"})
    assert code == 401
    assert kube.calls["tokenreviews"] == 2, "a rejected token is cached too"


async def test_cache_ttls_come_from_flags(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    kube.tokens["tok"] = {"username": "dave", "groups": []}
    kube.sar_decider = lambda spec: True
    srv = await start_server([*tls_flags(pki, kube), "--authentication-token-webhook-cache-ttl", "0s",
                              "--authorization-webhook-cache-authorized-ttl", "0"])
    for _ in range(2):
        code, _ = await srv.get(METRIC_PATH, headers={"Authorization": "Bearer tok"})
        assert code == 200
    assert (kube.calls["tokenreviews"], kube.calls["subjectaccessreviews"]) == (2, 2)


async def test_sar_deny_is_403_naming_user_and_action(pki: PKI, kube: KubeStandIn,
                                                      start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    kube.sar_decider = lambda spec: (False, "no RBAC policy matched")
    srv = await start_server(tls_flags(pki, kube))
    code, body = await srv.get(METRIC_PATH, cert=pki.alice)
    assert code == 403
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
        "code": 403, "details": {"group": "external.metrics.k8s.io", "kind": "vllm_queue_depth"},
        "message": 'vllm_queue_depth.external.metrics.k8s.io is forbidden: User "alice" cannot list resource '
                   '"vllm_queue_depth" in API group "external.metrics.k8s.io" in the namespace "llm": '
                   'no RBAC policy matched'}
    code, _ = await srv.get(METRIC_PATH, cert=pki.alice)
    assert code == 403
    assert kube.calls["subjectaccessreviews"] == 1, "denials are cached too"
    assert 'toposcale_adapter_authorization_decisions_total{decision="deny",source="cache"} 1.0' \
        in srv.metrics_text()


async def test_sar_unreachable_is_500_never_allow(pki: PKI, kube: KubeStandIn,
                                                  start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server(tls_flags(pki, kube))
    kube.fail_next[("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews")] = [503]
    code, body = await srv.get(METRIC_PATH, cert=pki.alice)
    assert code == 500 and body["reason"] == "InternalError", body
    assert "SubjectAccessReview failed" in body["message"]


async def test_no_credentials_401_health_always_allowed_metrics_guarded(
        pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    specs: list[dict[str, Any]] = []

    def decide(spec: dict[str, Any]) -> Any:
        specs.append(spec)
        return spec["user"] == "prometheus"

    kube.sar_decider = decide
    srv = await start_server(tls_flags(pki, kube))
    for path in ("/healthz", "/livez", "/readyz"):
        code, text = await srv.get(path)
        assert (code, text) == (200, "ok"), path
    assert specs == [], "always-allowed paths need no SubjectAccessReview"
    code, body = await srv.get("/metrics")
    assert code == 401 and body["reason"] == "Unauthorized"
    code, body = await srv.get(METRIC_PATH)
    assert code == 401
    code, body = await srv.get("/metrics", cert=pki.alice)
    assert code == 403
    assert body["message"] == 'forbidden: User "alice" cannot get path "/metrics"'
    assert specs[-1]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}
    prom = pki.root.client(pki.ca, "prometheus")
    code, text = await srv.get("/metrics", cert=prom)
    assert code == 200 and "toposcale_adapter_authentication_attempts_total" in text


async def test_always_allow_paths_flag(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server([*tls_flags(pki, kube), "--authorization-always-allow-paths", "/healthz,/metr*"])
    assert (await srv.get("/metrics"))[0] == 200
    assert (await srv.get("/livez"))[0] == 401, "only the listed paths are open"


async def test_system_masters_skip_sar(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    root = pki.root.client(pki.ca, "kubernetes-admin", groups=["system:masters"])
    srv = await start_server(tls_flags(pki, kube))
    code, _ = await srv.get(METRIC_PATH, cert=root)
    assert code == 200 and kube.calls["subjectaccessreviews"] == 0


async def test_expired_and_not_yet_valid_client_certs_are_401(pki: PKI, kube: KubeStandIn,
                                                              start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    kube.sar_decider = lambda spec: True
    srv = await start_server(tls_flags(pki, kube))
    for cert in (pki.root.client(pki.ca, "old", expired=True),
                 pki.root.client(pki.ca, "future", not_yet_valid=True),
                 pki.root.client(pki.fp_ca, "front-proxy-client", file_name="fp-expired", expired=True)):
        code, body = await srv.get(METRIC_PATH, cert=cert, headers=FRONT_PROXY_HEADERS)
        assert code == 401, (cert.name, body)
    assert 'toposcale_adapter_authentication_attempts_total{method="",result="failure"} 3.0' \
        in srv.metrics_text()


async def test_server_auth_only_cert_is_not_a_client_cert(pki: PKI, kube: KubeStandIn,
                                                          start_server: StartServer) -> None:
    """A serving certificate from the same CA must not authenticate a client (clientAuth EKU required)."""
    kube.add(auth_configmap(pki))
    kube.sar_decider = lambda spec: True
    srv = await start_server(tls_flags(pki, kube))
    try:
        code, _ = await srv.get(METRIC_PATH, cert=pki.serving)
    except aiohttp.ClientConnectionError:
        return  # refused in the handshake (OpenSSL checks the purpose): refused either way
    assert code == 401


async def test_configmap_changes_are_watched(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    """The cluster starts without front-proxy settings; once kube-apiserver publishes them, they apply."""
    kube.add(auth_configmap(pki, with_front_proxy=False))
    kube.sar_decider = lambda spec: True
    srv = await start_server(tls_flags(pki, kube))
    # no front-proxy CA known yet: a certificate from an untrusted CA is refused in the TLS handshake
    try:
        code, _ = await srv.get(METRIC_PATH, cert=pki.front_proxy, headers=FRONT_PROXY_HEADERS)
        raise AssertionError(f"served {code} to a certificate from an unknown CA")
    except aiohttp.ClientConnectionError:
        pass
    kube.add(auth_configmap(pki))
    await until(lambda: srv.security.sources().request_header is not None, "ConfigMap change seen")
    code, body = await srv.get(METRIC_PATH, cert=pki.front_proxy, headers=FRONT_PROXY_HEADERS)
    assert code == 200 and body["method"] == "requestheader"
    # the watch breaks and the history is compacted (apiserver restart): the adapter relists and keeps up;
    # a narrower allowed-names list applies too
    kube.close_watches()
    kube.compact()
    kube.add(auth_configmap(pki, allowed=["aggregator"]))
    await until(lambda: (rh := srv.security.sources().request_header) is not None
                and rh.allowed_names == ("aggregator",), "allowed names updated")
    code, _ = await srv.get(METRIC_PATH, cert=pki.front_proxy, headers=FRONT_PROXY_HEADERS)
    assert code == 401
    # the ConfigMap is deleted: its CAs are no longer trusted (no client certificate is even asked for)
    kube.delete("ConfigMap", CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
    await until(lambda: srv.security.sources().client_ca is None, "deletion seen")
    code, _ = await srv.get(METRIC_PATH, cert=pki.alice)
    assert code == 401


async def test_flags_win_over_configmap(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    """--requestheader-* flags replace the ConfigMap's request-header group, as in k8s.io/apiserver."""
    kube.add(auth_configmap(pki, allowed=["front-proxy-client"]))
    kube.sar_decider = lambda spec: True
    my_proxy = pki.root.client(pki.fp_ca, "my-proxy")
    srv = await start_server([
        *tls_flags(pki, kube), "--requestheader-client-ca-file", str(pki.fp_ca.cert_path),
        "--requestheader-allowed-names", "my-proxy,other", "--requestheader-username-headers", "X-Proxy-User",
        "--requestheader-group-headers", "X-Proxy-Group",
        "--requestheader-extra-headers-prefix", "X-Proxy-Extra-"])
    code, body = await srv.get(METRIC_PATH, cert=my_proxy,
                               headers={"X-Proxy-User": "erin", "X-Proxy-Group": "g1",
                                        "X-Proxy-Extra-A": "1"})
    assert code == 200, body
    assert (body["user"], body["groups"], body["extra"]) == ("erin", ["g1", "system:authenticated"],
                                                             {"a": ["1"]})
    code, _ = await srv.get(METRIC_PATH, cert=pki.front_proxy, headers=FRONT_PROXY_HEADERS)
    assert code == 401, "the ConfigMap's allowed name no longer counts"


async def test_configmap_lookup_failure_is_a_clear_startup_error(pki: PKI, kube: KubeStandIn,
                                                                 start_server: StartServer) -> None:
    kube.fail_next[("GET", "/api/v1/namespaces/kube-system/configmaps")] = [403] * 50
    try:
        await start_server(tls_flags(pki, kube), lookup_timeout=0.5)
    except RuntimeError as exc:
        assert "extension-apiserver-authentication" in str(exc) and "Role" in str(exc)
    else:
        raise AssertionError("started without being able to read the authentication ConfigMap")
    srv = await start_server([*tls_flags(pki, kube), "--authentication-tolerate-lookup-failure",
                              "--client-ca-file", str(pki.ca.cert_path)],
                             lookup_timeout=0.2)
    kube.sar_decider = lambda spec: True
    assert (await srv.get(METRIC_PATH, cert=pki.alice))[0] == 200


def test_configmap_json_lists_are_parsed_as_apiserver_does(pki: PKI) -> None:
    from toposcale.adapter.security.authconfig import from_configmap

    cm = auth_configmap(pki, allowed=["front-proxy-client", "aggregator"])["data"]
    parsed = from_configmap(cm)
    assert parsed.request_header is not None and parsed.client_ca is not None
    assert parsed.request_header.allowed_names == ("front-proxy-client", "aggregator")
    assert parsed.request_header.username_headers == ("X-Remote-User",)
    bad = dict(cm, **{"requestheader-allowed-names": "front-proxy-client"})  # not JSON: a user error
    try:
        from_configmap(bad)
    except ValueError as exc:
        assert "requestheader-allowed-names" in str(exc)
    else:
        raise AssertionError("a non-JSON list must be refused")
    assert json.loads(cm["requestheader-allowed-names"]) == ["front-proxy-client", "aggregator"]
