"""In-process Kubernetes API stand-in: an aiohttp server on a free loopback port, real wire format.

The real kube-apiserver is now part of the suite (tests/harness/kube_cluster.py, built from the Kubernetes
sources; session fixture `kube_cluster`) and is the default: the manifests, RBAC, the aggregator, the HPA
controller, watches across a restart and an etcd compaction (tests/cluster/), and the agent's publishing
(tests/agent/, with the agent's own ServiceAccount token) run against it. This stand-in is kept for faults and
decisions the real server cannot be made to produce on demand:

- tests/security/ (delegated authn/authz): SubjectAccessReviews decided by a function of the test and counted
  (the allow/deny cache TTL tests), TokenReviews of made-up tokens, an API error on a chosen call
  (`fail_next`: 503 on a SAR, 403s on the ConfigMap list), a watch closed mid-stream at a chosen moment. The
  real path (front-proxy CA from the real ConfigMap, real SARs) is tests/cluster/test_aggregation.py.
- tests/extender/test_watch.py: watches closed and history compacted between two events with no await in
  between, ERROR events and a 410 on a paged list's continue token, on demand (the real-server 410 is
  tests/cluster/test_watch_restart.py).
- Not moved yet, though the real server could serve them: tests/extender/test_stale_allocation.py (uses the
  stand-in's global resourceVersion to prove nothing was written), test_annotation_validation.py and
  test_cli.py (one watch-mode process each), tests/adapter/test_kube_and_cli.py (the pod lister; the real
  path is tests/cluster/test_hpa.py), tests/deploy/test_crosschecks.py (the README's /explain command).
- tests/standin/: the stand-in's own behaviour.

What it mimics, from the Kubernetes API conventions and apimachinery:

- core/v1 Nodes and Namespaces (cluster-scoped), Pods and ConfigMaps (namespaced, plus the all-namespaces list
  `/api/v1/pods`): GET, LIST, WATCH, CREATE (201, 409 AlreadyExists), PUT (409 Conflict on a stale
  resourceVersion), PATCH (merge, strategic-merge, JSON patch), DELETE; `/status` subresources of Nodes, Pods
  and Namespaces (the main resource ignores status changes, the subresource changes only status).
- One global, monotonically increasing resourceVersion; every object carries metadata.resourceVersion, uid and
  creationTimestamp. Lists carry `metadata.resourceVersion`; list items carry no kind/apiVersion (as
  kube-apiserver sends them); watch event objects and single GETs do.
- LIST: labelSelector (=, ==, !=, in, notin, exists, !exists), fieldSelector (metadata.name,
  metadata.namespace, spec.nodeName, status.phase; = == !=), limit/continue paging. A continue token older
  than the compacted revision answers HTTP 410 Expired, as does `resourceVersionMatch=Exact` with a
  compacted resourceVersion.
- WATCH (`?watch=true&resourceVersion=N`): chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}`. No resourceVersion (or "0") first sends the current objects as ADDED, like the apiserver.
  Objects that stop/start matching a selector arrive as DELETED/ADDED. A resourceVersion older than the
  compacted revision gets `200` and one ERROR event carrying a metav1.Status 410 Expired, then the stream ends
  (what the watch cache does); set `kube.watch_expired_as_http = True` to answer HTTP 410 instead.
  `timeoutSeconds` ends the stream; `allowWatchBookmarks` sends a BOOKMARK when the stream ends.
- Errors are metav1.Status bodies: 400 BadRequest, 401 Unauthorized, 404 NotFound, 409 AlreadyExists/Conflict,
  410 Expired, 415 UnsupportedMediaType, 422 Invalid.
- `POST /apis/authentication.k8s.io/v1/tokenreviews` from `kube.tokens` (token -> user info) and
  `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` from `kube.sar_decider` (spec -> bool or
  (bool, reason)); `kube.calls["tokenreviews"]`, `kube.calls["subjectaccessreviews"]` count them.
- Discovery `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>/v1`: minimal, valid.
- Optional bearer-token check (`KubeStandIn(require_token="...")`) and optional TLS with a freshly generated
  CA (`KubeStandIn(tls=True)`; `kube.ca_file`), so tests prove clients send credentials and verify the server.

Not mimicked: admission, defaulting, validation of object schemas, graceful deletion, finalizers, namespace
cascading deletion, server-side apply, protobuf, aggregated discovery (clients fall back to the legacy form).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_BODY = 4 * 1024 * 1024  # the apiserver's default request body limit is 3 MiB; close enough


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    short_names: tuple[str, ...] = ()


RESOURCES: dict[str, Resource] = {
    "nodes": Resource("nodes", "Node", False, True, ("no",)),
    "namespaces": Resource("namespaces", "Namespace", False, True, ("ns",)),
    "pods": Resource("pods", "Pod", True, True, ("po",)),
    "configmaps": Resource("configmaps", "ConfigMap", True, False, ("cm",)),
}
BY_KIND = {r.kind: r for r in RESOURCES.values()}
FIELD_LABELS = {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)
        self.code = code


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.plural} "{name}" not found', {"name": name, "kind": res.plural})


def _truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, which the apiserver uses for query flags (kubernetes-asyncio sends "True")."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=":
                return has and value == self.values[0]
            case "!=":
                return not has or value != self.values[0]
            case "in":
                return has and value in self.values
            case "notin":
                return not has or value not in self.values
            case "exists":
                return has
            case _:
                return not has


_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_label_selector(text: str) -> list[Requirement]:
    reqs = []
    for part in _split_top_level(text or ""):
        if m := _SET_RE.match(part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(part):
            op = "=" if m.group(2) in ("=", "==") else "!="
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part.strip()!r}")
    return reqs


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    out = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {part!r}; can't understand it")
        if m.group(1) not in FIELD_LABELS:
            raise ApiError(400, "BadRequest", f'field label not supported: "{m.group(1)}"')
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


@dataclass
class Selector:
    labels: list[Requirement] = field(default_factory=list)
    fields: list[tuple[str, str, str]] = field(default_factory=list)
    namespace: str | None = None

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        for path, op, value in self.fields:
            if (_field_value(obj, path) == value) != (op == "="):
                return False
        return True


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# The merge keys the strategic-merge patch uses for the lists tests touch (from the core/v1 Go struct tags).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "tolerations": "key",
    "addresses": "type",
}


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge patch for the shapes tests use: maps merge like a merge patch, null deletes, lists
    with a known patchMergeKey merge element-wise by that key, other lists replace; `$patch: delete|replace`
    honoured."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge_patch(out.get(k), v, k)
        return out
    if isinstance(patch, list) and key in _MERGE_KEYS and isinstance(target, list):
        mk = _MERGE_KEYS[key]
        out_list = [copy.deepcopy(x) for x in target]
        for item in patch:
            if not isinstance(item, dict) or mk not in item:
                return copy.deepcopy(patch)
            idx = next(
                (i for i, x in enumerate(out_list) if isinstance(x, dict) and x.get(mk) == item[mk]), None
            )
            if item.get("$patch") == "delete":
                if idx is not None:
                    out_list.pop(idx)
            elif idx is None:
                out_list.append({k: v for k, v in item.items() if k != "$patch"})
            else:
                out_list[idx] = strategic_merge_patch(out_list[idx], item)
        return out_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test, move, copy."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(target)

    def walk(parts: list[str]) -> tuple[Any, str]:
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(path: str) -> Any:
        cur = doc
        for p in _pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def remove(path: str) -> Any:
        parent, last = walk(_pointer(path))
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)

    def add(path: str, value: Any) -> None:
        parent, last = walk(_pointer(path))
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"test operation failed at {path}")
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            else:
                raise ApiError(400, "BadRequest", f"unknown json patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"json patch {op!r} failed: {exc!r}") from exc
    return doc


PATCHERS: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
    "application/json-patch+json": json_patch,
}


# ---------------------------------------------------------------- the server


@dataclass
class _Watcher:
    res: Resource
    selector: Selector
    queue: asyncio.Queue[dict[str, Any] | None]


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    authorization: str | None
    status: int = 0


def _find_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-standin-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = tmp / "ca.crt", tmp / "apiserver.crt", tmp / "apiserver.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


class KubeStandIn:
    """`async with KubeStandIn() as kube:` -> `kube.url`, `kube.write_kubeconfig(path)`, `kube.add(obj)`..."""

    def __init__(
        self, *, require_token: str | None = None, tls: bool = False, git_version: str = "v1.30.0"
    ) -> None:
        self.require_token = require_token
        self.tls = tls
        self.git_version = git_version
        self.tokens: dict[str, dict[str, Any]] = {}  # bearer token -> UserInfo {username, uid, groups, extra}
        self.token_audiences: list[str] | None = None  # when set, TokenReviews answer these audiences
        self.sar_decider: Callable[[dict[str, Any]], Any] = lambda spec: False
        self.calls: dict[str, int] = {"tokenreviews": 0, "subjectaccessreviews": 0}
        self.requests: list[RequestRecord] = []
        self.events: list[dict[str, Any]] = []  # every change: {"type", "resourceVersion", "object"}
        self.watch_expired_as_http = False
        self.fail_next: dict[tuple[str, str], list[int]] = {}  # (method, path) -> status codes to answer once
        self.ca_file: Path | None = None
        self.url = ""
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, str, Resource, dict[str, Any] | None, dict[str, Any]]] = []
        self._rv = 0
        self._compacted = 0
        self._watchers: list[_Watcher] = []
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.add(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }
            )

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> KubeStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        r = app.router
        r.add_get("/version", self._version)
        r.add_get("/api", self._api_versions)
        r.add_get("/api/v1", self._core_resources)
        r.add_get("/apis", self._api_groups)
        r.add_get("/apis/{group}/v1", self._group_resources)
        r.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        r.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._sar)
        r.add_route("*", "/api/v1/{plural}", self._collection)
        r.add_route("*", "/api/v1/{plural}/{name}", self._item)
        r.add_route("*", "/api/v1/{plural}/{name}/status", self._status_item)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{plural}", self._collection)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{plural}/{name}", self._item)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{plural}/{name}/status", self._status_item)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        port = _find_free_port()
        ctx = None
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="kube-standin-")
            self.ca_file, cert, key = _self_signed(Path(self._tmp.name))
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------ test helpers

    def write_kubeconfig(
        self, path: str | Path, *, token: str | None = None, namespace: str = "default"
    ) -> str:
        """Write a kubeconfig pointing at this server (token: the bearer token the client sends)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_file.read_bytes()).decode()
        user: dict[str, Any] = {}
        tok = token if token is not None else self.require_token
        if tok:
            user["token"] = tok
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": cluster}],
            "users": [{"name": "standin", "user": user}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
        }
        Path(path).write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return str(path)

    @property
    def resource_version(self) -> int:
        return self._rv

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (by kind/namespace/name), notify watchers; returns the stored copy."""
        res = self._res_for_kind(obj.get("kind", ""))
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace", "default") if res.namespaced else ""
        key = (res.plural, ns, meta.get("name", ""))
        old = self._objects.get(key)
        return self._store(res, key, copy.deepcopy(obj), old)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self._res_for_kind(kind)
        ns = (namespace or "default") if res.namespaced else ""
        obj = self._objects.get((res.plural, ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        res = self._res_for_kind(kind)
        return [
            copy.deepcopy(o)
            for (p, ns, _), o in sorted(self._objects.items())
            if p == res.plural and (namespace is None or ns == namespace)
        ]

    def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        res = self._res_for_kind(kind)
        ns = (namespace or "default") if res.namespaced else ""
        return self._remove(res, (res.plural, ns, name))

    def compact(self) -> int:
        """Forget history up to now: a watch or continue token from an older resourceVersion gets 410."""
        self._compacted = self._rv
        self._history.clear()
        return self._compacted

    def close_watches(self) -> None:
        """Drop every open watch connection (what an apiserver restart or its watch timeout looks like)."""
        for w in self._watchers:
            w.queue.put_nowait(None)
        self._watchers.clear()

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # ------------------------------------------------------------ storage

    def _res_for_kind(self, kind: str) -> Resource:
        if kind not in BY_KIND:
            raise KeyError(f"stand-in does not serve kind {kind!r}; serves {sorted(BY_KIND)}")
        return BY_KIND[kind]

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _store(
        self, res: Resource, key: tuple[str, str, str], obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        obj["apiVersion"], obj["kind"] = "v1", res.kind
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = key[1]
        else:
            meta.pop("namespace", None)
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        self._objects[key] = obj
        self._emit(rv, "MODIFIED" if old is not None else "ADDED", res, old, obj)
        return copy.deepcopy(obj)

    def _remove(self, res: Resource, key: tuple[str, str, str]) -> dict[str, Any]:
        old = self._objects.pop(key, None)
        if old is None:
            raise _not_found(res, key[2])
        gone = copy.deepcopy(old)
        rv = self._next_rv()
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(rv, "DELETED", res, old, gone)
        return copy.deepcopy(gone)

    def _emit(
        self, rv: int, kind: str, res: Resource, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> None:
        self._history.append((rv, kind, res, old, copy.deepcopy(new)))
        self.events.append({"type": kind, "resourceVersion": rv, "object": copy.deepcopy(new)})
        for w in self._watchers:
            if w.res is res and (ev := self._event_for(w.selector, kind, old, new)) is not None:
                w.queue.put_nowait(ev)

    @staticmethod
    def _event_for(
        sel: Selector, kind: str, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any] | None:
        """What a watcher with this selector sees: entering/leaving the selection reads as ADDED/DELETED."""
        now = kind != "DELETED" and sel.matches(new)
        before = old is not None and sel.matches(old)
        if kind == "DELETED":
            return {"type": "DELETED", "object": new} if before else None
        if now and before:
            return {"type": "MODIFIED", "object": new}
        if now:
            return {"type": "ADDED", "object": new}
        if before:
            return {"type": "DELETED", "object": new}
        return None

    # ------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        rec = RequestRecord(
            request.method,
            request.path,
            dict(request.query),
            request.headers.get("Content-Type", ""),
            request.headers.get("Authorization"),
        )
        self.requests.append(rec)
        try:
            planned = self.fail_next.get((request.method, request.path))
            if planned:
                code = planned.pop(0)
                raise ApiError(
                    code, "InternalError" if code >= 500 else "BadRequest", f"injected failure {code} (test)"
                )
            if self.require_token is not None:
                auth = request.headers.get("Authorization", "")
                if auth != f"Bearer {self.require_token}":
                    raise ApiError(401, "Unauthorized", "Unauthorized")
            resp = await handler(request)
        except ApiError as exc:
            resp = web.json_response(exc.body, status=exc.code)
        except web.HTTPException:
            raise
        rec.status = resp.status
        return resp

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise ApiError(413, "RequestEntityTooLarge", "request entity too large") from exc
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(
                400, "BadRequest", f"the body of the request was in an unknown format: {exc}"
            ) from exc

    def _resource(self, request: web.Request) -> tuple[Resource, str | None]:
        plural = request.match_info["plural"]
        res = RESOURCES.get(plural)
        if res is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = request.match_info.get("namespace")
        if ns is not None and not res.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if ns is None and res.namespaced and "name" in request.match_info:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return res, ns

    # ------------------------------------------------------------ collections

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        res, ns = self._resource(request)
        if request.method == "GET":
            q = request.query
            sel = Selector(
                parse_label_selector(q.get("labelSelector", "")),
                parse_field_selector(q.get("fieldSelector", "")),
                ns,
            )
            if _truthy(q.get("watch")):
                return await self._watch(request, res, sel)
            return web.json_response(self._list(res, sel, q))
        if request.method == "POST":
            if ns is None and res.namespaced:
                raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
            return await self._create(request, res, ns)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on a collection")

    def _list(self, res: Resource, sel: Selector, q: Any) -> dict[str, Any]:
        if q.get("resourceVersionMatch") == "Exact":
            rv = int(q.get("resourceVersion") or 0)
            if rv < self._compacted:
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted})")
        items = [o for (p, _, _), o in sorted(self._objects.items()) if p == res.plural and sel.matches(o)]
        list_rv = self._rv
        start = 0
        if token := q.get("continue"):
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                list_rv, start = int(state["rv"]), int(state["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", "continue key is not valid") from exc
            if list_rv < self._compacted:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue parameter.",
                )
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        limit = int(q.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": start + limit}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        bare = []
        for o in items:
            o = copy.deepcopy(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            bare.append(o)
        return {"kind": f"{res.kind}List", "apiVersion": "v1", "metadata": meta, "items": bare}

    async def _watch(self, request: web.Request, res: Resource, sel: Selector) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        try:
            rv = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"invalid resource version {rv_text!r}") from exc
        expired = rv is not None and rv < self._compacted
        if expired and self.watch_expired_as_http:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted})")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if expired:
            err = status_body(410, "Expired", f"too old resource version: {rv} ({self._compacted})")
            await resp.write(json.dumps({"type": "ERROR", "object": err}).encode() + b"\n")
            await resp.write_eof()
            return resp
        # Replay and subscribe without yielding to the loop, so no change falls in between.
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        if rv is None:
            for (p, _, _), o in sorted(self._objects.items()):
                if p == res.plural and sel.matches(o):
                    queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            for hrv, kind, hres, old, new in self._history:
                if hrv > rv and hres is res and (ev := self._event_for(sel, kind, old, new)) is not None:
                    queue.put_nowait(ev)
        watcher = _Watcher(res, sel, queue)
        self._watchers.append(watcher)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    ev = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    break
                if ev is None:
                    # close_watches(): drop the connection mid-stream, as an apiserver restart does
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                await resp.write(json.dumps(ev).encode() + b"\n")
            if _truthy(q.get("allowWatchBookmarks")):
                bookmark = {
                    "kind": res.kind,
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self._rv)},
                }
                await resp.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove(watcher)
        return resp

    async def _create(self, request: web.Request, res: Resource, ns: str | None) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
            meta["name"] = name
            body["metadata"] = meta
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f"{res.kind} is invalid: metadata.name: Required value: name or generateName is required",
            )
        if body.get("kind", res.kind) != res.kind:
            raise ApiError(400, "BadRequest", f"the kind {body.get('kind')!r} does not match {res.kind!r}")
        if ns is not None and meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if ns is not None and ("namespaces", "", ns) not in self._objects:
            raise ApiError(
                404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
            )
        key = (res.plural, ns or "", name)
        if key in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res.plural} "{name}" already exists',
                {"name": name, "kind": res.plural},
            )
        meta.pop("resourceVersion", None)
        meta.pop("uid", None)
        meta.pop("creationTimestamp", None)
        stored = self._store(res, key, body, None)
        return web.json_response(stored, status=201)

    # ------------------------------------------------------------ single objects

    async def _item(self, request: web.Request) -> web.Response:
        return await self._one(request, status_only=False)

    async def _status_item(self, request: web.Request) -> web.Response:
        res = RESOURCES.get(request.match_info["plural"])
        if res is None or not res.has_status:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._one(request, status_only=True)

    async def _one(self, request: web.Request, *, status_only: bool) -> web.Response:
        res, ns = self._resource(request)
        name = request.match_info["name"]
        key = (res.plural, ns or "", name)
        current = self._objects.get(key)
        if request.method == "GET":
            if current is None:
                raise _not_found(res, name)
            return web.json_response(current)
        if request.method == "DELETE":
            return web.json_response(self._remove(res, key))
        if request.method not in ("PUT", "PATCH"):
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")
        if current is None:
            raise _not_found(res, name)
        if request.method == "PATCH":
            ctype = request.content_type
            patcher = PATCHERS.get(ctype)
            if patcher is None:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(PATCHERS)}",
                )
            patch = await self._json_body(request)
            if ctype != "application/json-patch+json" and not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = patcher(copy.deepcopy(current), patch)
            want_rv = (
                (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            )
        else:
            new = await self._json_body(request)
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata must be an object")
        if new["metadata"].get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        new["metadata"]["name"] = name
        if want_rv is not None and str(want_rv) != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res.plural} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": res.plural},
            )
        if res.has_status:
            if status_only:  # the status subresource changes status and nothing else
                kept = copy.deepcopy(current)
                if "status" in new:
                    kept["status"] = new["status"]
                else:
                    kept.pop("status", None)
                new = kept
            elif "status" in current:  # the main resource ignores status changes
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        if new == current:
            return web.json_response(current)  # a no-op write does not bump resourceVersion
        return web.json_response(self._store(res, key, new, current))

    # ------------------------------------------------------------ auth reviews

    async def _token_review(self, request: web.Request) -> web.Response:
        self.calls["tokenreviews"] += 1
        body = await self._json_body(request)
        if not isinstance(body, dict) or body.get("kind", "TokenReview") != "TokenReview":
            raise ApiError(400, "BadRequest", "expected a TokenReview")
        spec = body.get("spec") or {}
        user = self.tokens.get(spec.get("token") or "")
        status: dict[str, Any]
        if user is None:
            status = {"authenticated": False, "user": {}, "error": "token not recognised"}
        else:
            status = {"authenticated": True, "user": copy.deepcopy(user)}
            auds = spec.get("audiences") or self.token_audiences
            if auds:
                status["audiences"] = list(auds)
        out = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return web.json_response(out, status=201)

    async def _sar(self, request: web.Request) -> web.Response:
        self.calls["subjectaccessreviews"] += 1
        body = await self._json_body(request)
        if not isinstance(body, dict) or body.get("kind", "SubjectAccessReview") != "SubjectAccessReview":
            raise ApiError(400, "BadRequest", "expected a SubjectAccessReview")
        spec = body.get("spec") or {}
        if not spec.get("resourceAttributes") and not spec.get("nonResourceAttributes"):
            raise ApiError(
                422,
                "Invalid",
                "SubjectAccessReview.authorization.k8s.io is invalid: "
                "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or "
                "resourceAttributes must be specified",
            )
        verdict = self.sar_decider(spec)
        allowed, reason = verdict if isinstance(verdict, tuple) else (bool(verdict), "")
        status: dict[str, Any] = {"allowed": bool(allowed)}
        if reason:
            status["reason"] = reason
        out = {
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return web.json_response(out, status=201)

    # ------------------------------------------------------------ discovery

    async def _version(self, request: web.Request) -> web.Response:
        major, minor = self.git_version.lstrip("v").split(".")[:2]
        return web.json_response(
            {
                "major": major,
                "minor": minor,
                "gitVersion": self.git_version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-04-17T17:27:03Z",
                "goVersion": "go1.22.2",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//")[1]}
                ],
            }
        )

    async def _core_resources(self, request: web.Request) -> web.Response:
        resources: list[dict[str, Any]] = []
        for r in RESOURCES.values():
            resources.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "shortNames": list(r.short_names),
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
            )
            if r.has_status:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    _GROUPS = {
        "authentication.k8s.io": [
            {
                "name": "tokenreviews",
                "singularName": "tokenreview",
                "namespaced": False,
                "kind": "TokenReview",
                "verbs": ["create"],
            }
        ],
        "authorization.k8s.io": [
            {
                "name": "subjectaccessreviews",
                "singularName": "subjectaccessreview",
                "namespaced": False,
                "kind": "SubjectAccessReview",
                "verbs": ["create"],
            }
        ],
    }

    async def _api_groups(self, request: web.Request) -> web.Response:
        groups = [
            {
                "name": g,
                "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
            }
            for g in self._GROUPS
        ]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def _group_resources(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group not in self._GROUPS:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/v1",
                "resources": self._GROUPS[group],
            }
        )
