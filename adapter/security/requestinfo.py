"""What a request asks to do, in authorization terms: a port of k8s.io/apiserver
`endpoints/request.RequestInfoFactory.NewRequestInfo` (APIPrefixes api, apis; groupless prefix api).

`GET /apis/external.metrics.k8s.io/v1beta1/namespaces/ns/queue_depth` is a resource request: group
external.metrics.k8s.io, resource `queue_depth` (the metric name), namespace `ns`, verb `list` (no object
name; the HPA controller's RBAC grants get and list on external.metrics.k8s.io `*`). `/apis`, `/apis/<group>`,
`/apis/<group>/<version>`, `/healthz`, `/metrics`, `/openapi/v2` are non-resource requests whose verb is the
lower-case HTTP method. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_API_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                 "DELETE": "delete"}


@dataclass(frozen=True)
class RequestInfo:
    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _split(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []


def request_info(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestInfo:
    non_resource = RequestInfo(False, path, method.lower())
    parts = _split(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_API_PREFIXES:
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:
            raise ValueError(f"unable to determine kind and namespace from url {path}")
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces":
        if len(parts) > 1:
            namespace = parts[1]
            if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
                parts = parts[2:]
    resource = subresource = name = ""
    if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES:
        subresource = parts[2]
    if len(parts) >= 2:
        name = parts[1]
    if len(parts) >= 1:
        resource = parts[0]
    if not name and verb == "get":
        watch = (query or {}).get("watch")
        verb = "list" if watch is None or watch.lower() in ("false", "0") else "watch"
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, path, verb, prefix, group, version, namespace, resource, subresource, name)
