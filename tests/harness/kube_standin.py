"""Kubernetes API faults and decisions on demand: what the real kube-apiserver cannot be made to do when a
test wants it. Everything else runs against the real control plane (tests/harness/kube_cluster.py, session
fixture `kube_cluster`). An aiohttp server on a free loopback port, in the real wire format, to
the unmodified kubernetes-asyncio client:

- Scripted delegated-auth answers: TokenReviews from `kube.tokens` (token -> user info), SubjectAccessReviews
  from `kube.sar_decider(spec)` (bool or (bool, reason)), both counted in `kube.calls`: tests/security/ and
  benchmarks/bench_security.py (cache TTLs, denials, made-up users, and the
  kube-system/extension-apiserver-authentication ConfigMap holding the test's own CAs, which on a real server
  belongs to the server). The real path is tests/cluster/test_aggregation.py.
- An API error on a chosen call: `kube.fail_next[(method, path)] = [503, ...]` answers those codes, once each;
  `kube.requests` records every call and its status.
- Watch faults with no await in between, so the client cannot reconnect early: `close_watches()` drops every
  open watch mid-stream; `compact()` forgets the history, so a watch resumed from before it gets an ERROR
  event holding a 410 Expired Status (`watch_expired_as_http = True`: an HTTP 410 instead), and a paged list's
  continue token from before it answers 410 (tests/extender/test_watch.py, tests/security/,
  tests/standin/). The real 410 after a restart and an etcd compaction is tests/cluster/test_watch_restart.py.

Objects: Nodes, Pods and ConfigMaps the test puts and removes (`add`, `delete`), served by LIST (equality
label/field selectors, limit/continue) and WATCH (from a resourceVersion, or the current objects first as
ADDED; an object is sent when it matches the selector). No writes over HTTP, no discovery, no TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from toposcale.ports import free_port

Obj = dict[str, Any]
KINDS = {"Node": ("nodes", False), "Pod": ("pods", True), "ConfigMap": ("configmaps", True)}
PLURALS = {plural: kind for kind, (plural, _) in KINDS.items()}
Selector = list[tuple[str, bool, str]]  # (key, equal?, value)


def status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.body = code, status_body(code, reason, message)


def parse_selector(text: str) -> Selector:
    """Equality-based selectors (`k=v`, `k==v`, `k!=v`, comma-separated), label or field."""
    out: Selector = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            out.append((key.strip(), False, value.strip()))
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            out.append((key.strip(), True, value.strip()))
        else:
            raise ApiError(400, "BadRequest", f"the stand-in reads equality selectors only: {part!r}")
    return out


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


@dataclass
class Query:
    plural: str
    namespace: str | None
    labels: Selector
    fields: Selector

    def matches(self, plural: str, obj: Obj) -> bool:
        meta = obj["metadata"]
        if plural != self.plural or self.namespace not in (None, meta.get("namespace")):
            return False
        labels = meta.get("labels") or {}
        return all((labels.get(k) == v) == eq for k, eq, v in self.labels) and all(
            (_field(obj, k) == v) == eq for k, eq, v in self.fields
        )


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int = 0


class KubeStandIn:
    """`async with KubeStandIn() as kube:` -> `kube.url`, `kube.write_kubeconfig(path)`, `kube.add(obj)`..."""

    def __init__(self) -> None:
        self.tokens: dict[str, Obj] = {}  # bearer token -> UserInfo {username, uid, groups, extra}
        self.sar_decider: Callable[[Obj], Any] = lambda spec: False
        self.calls = {"tokenreviews": 0, "subjectaccessreviews": 0}
        self.fail_next: dict[tuple[str, str], list[int]] = {}  # (method, path) -> codes to answer, once each
        self.requests: list[RequestRecord] = []
        self.watch_expired_as_http = False
        self.url = ""
        self._objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name) -> object
        self._history: list[tuple[int, str, str, Obj]] = []  # (resourceVersion, event type, plural, object)
        self._rv = 0
        self._compacted = 0
        self._watchers: list[tuple[Query, asyncio.Queue[Obj | None]]] = []
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> KubeStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._sar)
        app.router.add_get("/api/v1/{plural}", self._collection)
        app.router.add_get("/api/v1/namespaces/{namespace}/{plural}", self._collection)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ what a test does

    def write_kubeconfig(self, path: str | Path) -> str:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }
        Path(path).write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return str(path)

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    def add(self, obj: Obj) -> Obj:
        """Create or replace an object (by kind/namespace/name), tell the watchers; returns the stored one."""
        plural, namespaced = KINDS[obj["kind"]]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta.setdefault("namespace", "default")
        key = (plural, meta.get("namespace", ""), meta["name"])
        old = self._objects.get(key)
        obj["apiVersion"] = "v1"
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        self._objects[key] = obj
        self._emit("MODIFIED" if old else "ADDED", plural, obj)
        return copy.deepcopy(obj)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        plural, namespaced = KINDS[kind]
        key = (plural, (namespace or "default") if namespaced else "", name)
        self._emit("DELETED", plural, self._objects.pop(key))

    def compact(self) -> int:
        """Forget history up to now: a watch or continue token from an older resourceVersion gets 410."""
        self._compacted = self._rv
        self._history.clear()
        return self._compacted

    def close_watches(self) -> None:
        """Drop every open watch connection (what an apiserver restart or its watch timeout looks like)."""
        for _, queue in self._watchers:
            queue.put_nowait(None)
        self._watchers.clear()

    def _emit(self, etype: str, plural: str, obj: Obj) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        event = {"type": etype, "object": copy.deepcopy(obj)}
        self._history.append((self._rv, etype, plural, event["object"]))
        for query, queue in self._watchers:
            if query.matches(plural, obj):
                queue.put_nowait(event)

    # ------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        rec = RequestRecord(request.method, request.path, dict(request.query))
        self.requests.append(rec)
        try:
            if planned := self.fail_next.get((request.method, request.path)):
                code = planned.pop(0)
                raise ApiError(
                    code, "InternalError" if code >= 500 else "BadRequest", f"injected failure {code} (test)"
                )
            resp = await handler(request)
        except ApiError as exc:
            resp = web.json_response(exc.body, status=exc.code)
        rec.status = resp.status
        return resp

    def _expired(self, rv: int) -> str | None:
        return f"too old resource version: {rv} ({self._compacted})" if rv < self._compacted else None

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        q, plural = request.query, request.match_info["plural"]
        if plural not in PLURALS:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        query = Query(
            plural,
            request.match_info.get("namespace"),
            parse_selector(q.get("labelSelector", "")),
            parse_selector(q.get("fieldSelector", "")),
        )
        if q.get("watch") in ("1", "true", "True"):
            return await self._watch(request, query)
        items = [o for (p, _, _), o in sorted(self._objects.items()) if query.matches(p, o)]
        list_rv, start = self._rv, 0
        if token := q.get("continue"):
            state = json.loads(base64.urlsafe_b64decode(token.encode()))
            list_rv, start = int(state["rv"]), int(state["start"])
            if self._expired(list_rv):
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the continue parameter.",
                )
        meta: Obj = {"resourceVersion": str(list_rv)}
        limit = int(q.get("limit") or 0)
        if limit and start + limit < len(items):
            cont = {"rv": list_rv, "start": start + limit}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(cont).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        items = items[start : start + limit] if limit else items[start:]
        bare = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return web.json_response(
            {"kind": f"{PLURALS[plural]}List", "apiVersion": "v1", "metadata": meta, "items": bare}
        )

    async def _watch(self, request: web.Request, query: Query) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        rv = int(rv_text) if rv_text not in ("", "0") else None
        expired = self._expired(rv) if rv is not None else None
        if expired and self.watch_expired_as_http:
            raise ApiError(410, "Expired", expired)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if expired:  # what the watch cache does: 200, then one ERROR event holding the 410
            error = {"type": "ERROR", "object": status_body(410, "Expired", expired)}
            await resp.write(json.dumps(error).encode() + b"\n")
            await resp.write_eof()
            return resp
        # Replay and subscribe without yielding to the loop, so no change falls in between.
        queue: asyncio.Queue[Obj | None] = asyncio.Queue()
        if rv is None:
            for (p, _, _), o in sorted(self._objects.items()):
                if query.matches(p, o):
                    queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(o)})
        else:
            for hrv, etype, p, o in self._history:
                if hrv > rv and query.matches(p, o):
                    queue.put_nowait({"type": etype, "object": o})
        self._watchers.append((query, queue))
        timeout = float(request.query.get("timeoutSeconds") or 0) or None
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
                if event is None:  # close_watches(): the connection drops mid-stream
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove((query, queue))
        return resp

    async def _token_review(self, request: web.Request) -> web.Response:
        self.calls["tokenreviews"] += 1
        spec = (await request.json()).get("spec") or {}
        user = self.tokens.get(spec.get("token") or "")
        status: Obj = {"authenticated": False, "user": {}, "error": "token not recognised"}
        if user is not None:
            status = {"authenticated": True, "user": copy.deepcopy(user), "audiences": spec.get("audiences")}
        return web.json_response(
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {},
                "spec": spec,
                "status": status,
            },
            status=201,
        )

    async def _sar(self, request: web.Request) -> web.Response:
        self.calls["subjectaccessreviews"] += 1
        spec = (await request.json()).get("spec") or {}
        verdict = self.sar_decider(spec)
        allowed, reason = verdict if isinstance(verdict, tuple) else (bool(verdict), "")
        status: Obj = {"allowed": bool(allowed), **({"reason": reason} if reason else {})}
        return web.json_response(
            {
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {},
                "spec": spec,
                "status": status,
            },
            status=201,
        )
