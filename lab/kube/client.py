"""The few object calls tests make around the code under test, against the real kube-apiserver of the
session's control plane (lab/kube/cluster.py), with the same names as the stand-in's (`add`, `get`,
`delete`), so a test reads the same whichever server it meets.

    kube = RealKube(cluster)
    kube.add(node_obj)                   # create, or replace when it exists (status written through /status)
    kube.get("Node", "gpu-1")            # the object as the server has it
    kube.cleanup()                       # deletes what `add` created

Blocking (urllib, admin client certificate): each call is a few milliseconds on loopback.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from typing import Any

from lab.kube.cluster import Cluster

Obj = dict[str, Any]
_PATHS = {
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Namespace": ("/api/v1", "namespaces", False),
}


class RealKubeError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class RealKube:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._ssl = cluster.admin_ssl()
        self._added: list[tuple[str, str, str | None]] = []

    def _url(self, kind: str, name: str | None = None, namespace: str | None = None) -> str:
        prefix, plural, namespaced = _PATHS[kind]
        path = prefix + (f"/namespaces/{namespace or 'default'}" if namespaced else "") + f"/{plural}"
        return self.cluster.server + path + (f"/{name}" if name else "")

    def _call(self, method: str, url: str, body: Obj | None = None,
              content_type: str = "application/json") -> Obj:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RealKubeError(e.code, e.read().decode(errors="replace")) from None

    def add(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace")
        status = obj.get("status")
        try:
            if meta.get("resourceVersion"):  # an object read back and edited: replace it
                raise RealKubeError(409, "exists")
            out = self._call("POST", self._url(kind, namespace=ns), obj)
            self._added.append((kind, meta["name"], ns))
        except RealKubeError as e:
            if e.status != 409:
                raise
            current = self.get(kind, meta["name"], ns)
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            out = self._call("PUT", self._url(kind, meta["name"], ns), obj)
        if status and kind in ("Node", "Pod"):
            out = self._call("PATCH", self._url(kind, meta["name"], ns) + "/status", {"status": status},
                             "application/merge-patch+json")
        return out

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        return self._call("GET", self._url(kind, name, namespace))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self._call("DELETE", self._url(kind, name, namespace) + "?gracePeriodSeconds=0")
        except RealKubeError as e:
            if e.status != 404:
                raise

    def cleanup(self) -> None:
        for kind, name, ns in reversed(self._added):
            self.delete(kind, name, ns)
        self._added.clear()
