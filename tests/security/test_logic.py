"""The pure parts, pinned to the Kubernetes sources they port: RequestInfo (verb/resource from a URL), the
always-allow path matcher, Go durations, bearer-token and extra-header parsing, the 403 message, the
caches."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from multidict import CIMultiDict
from toposcale.adapter.security.authn import UserInfo, _extra, bearer_token
from toposcale.adapter.security.authz import PathMatcher, forbidden_message, forbidden_status, sar_spec
from toposcale.adapter.security.cache import ExpiringLRU
from toposcale.adapter.security.clientcert import CABundle, CertificateError, verify_client_certificate
from toposcale.adapter.security.options import go_duration
from toposcale.adapter.security.requestinfo import request_info

from lab.pki import TestPKI


@pytest.mark.parametrize(("method", "path", "query", "expect"), [
    # the HPA's external metric query: the metric name is the resource; no object name -> list
    ("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/vllm_queue_depth", {},
     (True, "list", "external.metrics.k8s.io", "v1beta1", "llm", "vllm_queue_depth", "", "")),
    ("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/m", {"watch": "true"},
     (True, "watch", "external.metrics.k8s.io", "v1beta1", "llm", "m", "", "")),
    ("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/m", {"watch": "0"},
     (True, "list", "external.metrics.k8s.io", "v1beta1", "llm", "m", "", "")),
    ("GET", "/api/v1/namespaces/llm/pods/p1/log", {},
     (True, "get", "", "v1", "llm", "pods", "log", "p1")),
    ("GET", "/api/v1/namespaces/llm", {}, (True, "get", "", "v1", "llm", "namespaces", "", "llm")),
    ("DELETE", "/api/v1/nodes", {}, (True, "deletecollection", "", "v1", "", "nodes", "", "")),
    ("GET", "/apis/external.metrics.k8s.io/v1beta1", {}, (False, "get", "", "", "", "", "", "")),
    ("GET", "/apis/external.metrics.k8s.io", {}, (False, "get", "", "", "", "", "", "")),
    ("GET", "/apis", {}, (False, "get", "", "", "", "", "", "")),
    ("GET", "/openapi/v2", {}, (False, "get", "", "", "", "", "", "")),
    ("POST", "/metrics", {}, (False, "post", "", "", "", "", "", "")),
])
def test_request_info_matches_apiserver(method: str, path: str, query: dict[str, str],
                                        expect: tuple[object, ...]) -> None:
    i = request_info(method, path, query)
    assert (i.is_resource_request, i.verb, i.api_group, i.api_version, i.namespace, i.resource, i.subresource,
            i.name) == expect


def test_path_matcher() -> None:
    m = PathMatcher(["/healthz", "livez", "/debug/*", "/"])
    assert m.matches("/healthz") and m.matches("/livez") and m.matches("/debug/pprof/x") and m.matches("/")
    assert not m.matches("/healthz/extra") and not m.matches("/metrics")
    with pytest.raises(ValueError):
        PathMatcher(["/a*b"])


def test_go_durations() -> None:
    assert [go_duration(s) for s in ("10s", "1m30s", "250ms", "0", "2h")] == [10, 90, 0.25, 0, 7200]
    for bad in ("10", "s", "1x", ""):
        with pytest.raises(Exception, match="invalid duration"):
            go_duration(bad)


def test_bearer_token_parsing() -> None:
    assert bearer_token(CIMultiDict({"Authorization": "Bearer abc"})) == "abc"
    assert bearer_token(CIMultiDict({"authorization": "bearer abc"})) == "abc"
    assert bearer_token(CIMultiDict({"Authorization": "Basic Zm9vOmJhcg=="})) is None
    assert bearer_token(CIMultiDict()) is None
    with pytest.raises(Exception, match="invalid bearer token"):
        bearer_token(CIMultiDict({"Authorization": "Bearer  abc"}))  # empty token between the spaces


def test_extra_headers_lowercased_and_unescaped_like_apiserver() -> None:
    h = CIMultiDict([("X-Remote-Extra-Scopes", "a"), ("X-Remote-Extra-Scopes", "b"),
                     ("x-remote-extra-Example.org%2Fteam", "ml"), ("X-Remote-Extra-Bad%zz", "kept")])
    assert _extra(h, ["X-Remote-Extra-"]) == {"scopes": ("a", "b"), "example.org/team": ("ml",),
                                              "bad%zz": ("kept",)}


def test_forbidden_messages() -> None:
    bob = UserInfo("bob")
    assert forbidden_message(bob, request_info("GET", "/api/v1/nodes/n1")) == \
        'User "bob" cannot get resource "nodes" in API group "" at the cluster scope'
    assert forbidden_message(bob, request_info("GET", "/api/v1/namespaces/a/pods/p/log")) == \
        'User "bob" cannot get resource "pods/log" in API group "" in the namespace "a"'
    status = forbidden_status(bob, request_info("GET", "/api/v1/namespaces/a/pods/p"), "denied")
    assert status["message"] == ('pods "p" is forbidden: User "bob" cannot get resource "pods" in API group '
                                 '"" in the namespace "a": denied')
    assert status["details"] == {"name": "p", "kind": "pods"}


def test_sar_spec_shape() -> None:
    u = UserInfo("hpa", uid="7", groups=("g",), extra={"k": ("v",)})
    spec = sar_spec(u, request_info("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/m"))
    assert spec == {"user": "hpa", "uid": "7", "groups": ["g"], "extra": {"k": ["v"]},
                    "resourceAttributes": {"namespace": "ns", "verb": "list",
                                           "group": "external.metrics.k8s.io", "version": "v1beta1",
                                           "resource": "m"}}


def test_client_cert_checks(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path)
    ca, other = pki.ca("ca"), pki.ca("other")
    bundle = CABundle.from_pem(ca.cert_pem + other.cert_pem, "bundle")
    now = dt.datetime.now(dt.UTC)
    assert verify_client_certificate(pki.client(ca, "a").cert, bundle, now) == ca.cert
    assert verify_client_certificate(pki.client(other, "b").cert, bundle, now) == other.cert
    only_ca = CABundle.from_pem(ca.cert_pem, "cluster CA")
    with pytest.raises(CertificateError, match="unknown authority"):
        verify_client_certificate(pki.client(other, "c").cert, only_ca, now)
    with pytest.raises(CertificateError, match="has expired"):
        verify_client_certificate(pki.client(ca, "d", expired=True).cert, only_ca, now)
    with pytest.raises(CertificateError, match="not yet valid"):
        verify_client_certificate(pki.client(ca, "e", not_yet_valid=True).cert, only_ca, now)
    with pytest.raises(CertificateError, match="incompatible key usage"):
        verify_client_certificate(pki.client(ca, "f", server_auth_only=True).cert, only_ca, now)
    # a forged certificate: same issuer name, another key
    impostor = pki.ca("ca", file_name="impostor")
    with pytest.raises(CertificateError, match="unknown authority"):
        verify_client_certificate(pki.client(impostor, "g").cert, only_ca, now)


async def test_cache_ttl_singleflight_and_errors_not_cached() -> None:
    now = [0.0]
    cache: ExpiringLRU[str] = ExpiringLRU(2, clock=lambda: now[0])
    calls = 0
    gate = asyncio.Event()

    async def load() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "v"

    both = asyncio.gather(cache.get_or_load("k", load, lambda v: 10),
                          cache.get_or_load("k", load, lambda v: 10))
    await asyncio.sleep(0)
    gate.set()
    assert [v for v, _ in await both] == ["v", "v"] and calls == 1, "concurrent lookups share one call"
    assert await cache.get_or_load("k", load, lambda v: 10) == ("v", True)
    now[0] = 10.0
    assert (await cache.get_or_load("k", load, lambda v: 10))[1] is False and calls == 2, "expired"

    async def fail() -> str:
        raise OSError("apiserver down")

    for _ in range(2):
        with pytest.raises(OSError):
            await cache.get_or_load("e", fail, lambda v: 10)
    assert cache.get("e") is None
    cache.put("a", "1", 10)
    cache.put("b", "2", 10)
    assert len(cache) == 2 and cache.get("k") is None, "bounded: the least recently used entry goes"
