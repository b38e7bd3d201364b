"""Extender test fixtures: the extender served in-process (lab/services.py), and `lab`: the session's real
kube-apiserver (tests/conftest.py `kube_cluster`) with names of the test's own. Nodes and Pods:
lab/objects.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.kube.client import RealKube
from lab.objects import make_pod
from lab.services import serve_extender


@pytest.fixture
def serve() -> Callable[..., Any]:
    """`async with serve(config=..., state=...) as s:` -> the extender on a free loopback port."""
    return serve_extender


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
        """make_pod in the test's namespace; no scheduler binds it (`schedulerName: nobody`)."""
        pod = make_pod(name, gpus, namespace=self.ns, **kw)
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
