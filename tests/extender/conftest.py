"""Extender test helpers: Node objects carrying the agent's annotations for real topologies, the extender
served in-process on a loopback port (the real aiohttp app, spoken to over HTTP), and `lab`: the session's
real kube-apiserver (tests/conftest.py `kube_cluster`) with names of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from toposcale.extender.server import Extender, ServerConfig
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    Allocation,
    allocation_to_doc,
    dumps,
    now_rfc3339,
    topology_to_doc,
)
from toposcale.extender.topology.topo_text import parse_topo_text

from tests.harness.real_kube import RealKube
from toposcale.ports import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topologies"


def topology(fixture: str, node: str):
    text = (FIXTURES / f"{fixture}.txt").read_text()
    n = len(parse_topo_text(text))
    # Device-plugin IDs are UUIDs by default: unique per node, as on a real fleet.
    return parse_topo_text(text, ids=[f"GPU-{node}-{i}" for i in range(n)])


def node_obj(
    name: str,
    fixture: str | None,
    used: list[int] | None = None,
    *,
    allocation: str | bool | None = True,
    observed: str | None = None,
    extra_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A v1.Node as the apiserver serves it, annotated by the agent (fixture None: no annotations)."""
    annotations: dict[str, str] = dict(extra_annotations or {})
    if fixture is not None:
        topo = topology(fixture, name)
        annotations[TOPOLOGY_ANNOTATION] = dumps(topology_to_doc(topo))
        if allocation is True:
            held = frozenset(topo.gpus[i].id for i in used or [])
            doc = allocation_to_doc(Allocation(held, frozenset(), observed or now_rfc3339()))
            annotations[ALLOCATION_ANNOTATION] = dumps(doc)
        elif isinstance(allocation, str):
            annotations[ALLOCATION_ANNOTATION] = allocation
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8", "cpu": "96"}, "images": []},
    }


def pod_obj(
    name: str, gpus: int, *, scope: str | None = None, namespace: str = "default", node: str | None = None,
    phase: str = "Pending", resource: str = "nvidia.com/gpu",
) -> dict[str, Any]:
    res = {"requests": {resource: str(gpus)}, "limits": {resource: str(gpus)}} if gpus else {}
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "resources": res}]},
        "status": {"phase": phase},
    }
    if scope:
        pod["metadata"]["annotations"]["toposcale.io/required-scope"] = scope
    if node:
        pod["spec"]["nodeName"] = node
    return pod


class Served:
    def __init__(self, extender: Extender, url: str, session: aiohttp.ClientSession) -> None:
        self.extender, self.url, self.session = extender, url, session

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        ) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.text()


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(config=..., state=...) as s:` -> the extender on a free loopback port."""
    import contextlib

    @contextlib.asynccontextmanager
    async def run(
        config: ServerConfig | None = None, state: ClusterState | None = None, **kw: Any
    ) -> AsyncIterator[Served]:
        cfg = config or ServerConfig()
        cfg.host, cfg.port = "127.0.0.1", free_port()
        ext = Extender(cfg, state, **kw)
        runner = web.AppRunner(ext.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        try:
            async with aiohttp.ClientSession() as session:
                yield Served(ext, f"http://127.0.0.1:{cfg.port}{ext.prefix}", session)
        finally:
            await runner.cleanup()

    return run


@dataclass
class Lab:
    """The real kube-apiserver for one test: `kube` adds objects (deleted after the test), `ns` is the test's
    namespace, `name("hgx")` a cluster-wide name of its own, `kubeconfig` the admin's."""

    kube: RealKube
    ns: str
    tag: str
    kubeconfig: str

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    def pod(self, name: str, gpus: int, **kw: Any) -> dict[str, Any]:
        """pod_obj in the test's namespace; no scheduler binds it (`schedulerName: nobody`)."""
        pod = pod_obj(name, gpus, namespace=self.ns, **kw)
        pod["spec"]["schedulerName"] = "nobody"
        return pod


@pytest.fixture
def lab(kube_cluster: Any) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    kube = RealKube(kube_cluster)
    lab = Lab(kube, f"extender-{tag}", tag, str(kube_cluster.admin_kubeconfig))
    kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lab.ns}})
    try:
        yield lab
    finally:
        kube.cleanup()
