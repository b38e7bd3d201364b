"""toposcale/kube.py against the session's real kube-apiserver: the client factory (kubeconfig, in-cluster
service account, no credentials at all) and the Reflector's normal work (a paged list assembled into one
set, the watch's events and resourceVersion, a handler that raises). The faults only the stand-in scripts on
demand (a watch dropped while history is compacted, an expired continue token, server errors on chosen
calls) are tests/standin/test_kube_standin.py; the real 410 after an apiserver restart and an etcd
compaction is tests/cluster/test_watch_restart.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from tests.harness.deployed import kubectl, sa_token
from tests.harness.kube_cluster import Cluster, write_kubeconfig
from tests.harness.real_kube import RealKube
from toposcale.kube import Reflector, Store, api_client


async def until(cond: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Wait for a condition the code under test must reach; the limit only bounds a broken run."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def kube(kube_cluster: Cluster) -> Iterator[RealKube]:
    """The real API server; `kube.tag` labels the test's Nodes (`toposcale.io/test=<tag>`), removed after."""
    k = RealKube(kube_cluster)
    k.tag = uuid.uuid4().hex[:6]  # type: ignore[attr-defined]
    try:
        yield k
    finally:
        k.cleanup()


def node(kube: RealKube, name: str, **labels: str) -> dict[str, Any]:
    tag = kube.tag  # type: ignore[attr-defined]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": f"{name}-{tag}", "labels": {"toposcale.io/test": tag, **labels}},
    }


@pytest.fixture
async def api(kube_cluster: Cluster) -> AsyncIterator[client.ApiClient]:
    a = await api_client(str(kube_cluster.admin_kubeconfig))
    async with a:
        yield a


@contextlib.asynccontextmanager
async def running(refl: Reflector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(refl.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_reflector_lists_in_pages_and_follows_the_watch(kube: RealKube, api: client.ApiClient) -> None:
    tag = kube.tag  # type: ignore[attr-defined]
    a, b = kube.add(node(kube, "gpu-a")), kube.add(node(kube, "gpu-b"))
    store = Store()
    relists: list[list[str]] = []
    events: list[tuple[str, str]] = []

    def on_relist(items: list[dict[str, Any]], rv: str) -> None:
        store.replace(items, rv)
        relists.append(sorted(o["metadata"]["name"] for o in items))

    async def on_event(etype: str, obj: dict[str, Any]) -> None:
        store.apply(etype, obj)
        events.append((etype, obj["metadata"]["name"]))

    refl = Reflector(
        client.CoreV1Api(api).list_node,
        on_relist=on_relist,
        on_event=on_event,
        page_size=1,
        label_selector=f"toposcale.io/test={tag}",
    )
    async with running(refl) as task:
        await asyncio.wait_for(refl.synced.wait(), 30)
        # paged one item at a time, assembled into one set
        assert relists == [sorted([a["metadata"]["name"], b["metadata"]["name"]])]
        c = kube.add(node(kube, "gpu-c"))
        await until(lambda: ("ADDED", c["metadata"]["name"]) in events, "watch event")
        assert refl.resource_version == c["metadata"]["resourceVersion"]
        changed = kube.add(node(kube, "gpu-a", zone="a"))  # replaced: a MODIFIED event
        kube.delete("Node", b["metadata"]["name"])
        await until(lambda: ("DELETED", b["metadata"]["name"]) in events, "DELETED event")
        assert events == [
            ("ADDED", c["metadata"]["name"]),
            ("MODIFIED", changed["metadata"]["name"]),
            ("DELETED", b["metadata"]["name"]),
        ]
        assert sorted(n for _, n in store.objects) == sorted([a["metadata"]["name"], c["metadata"]["name"]])
        assert store.objects[("", changed["metadata"]["name"])]["metadata"]["labels"]["zone"] == "a"
        assert refl.relists == 1 and refl.last_error is None
    assert task.cancelled()


async def test_reflector_survives_a_handler_that_raises(kube: RealKube, api: client.ApiClient) -> None:
    """One object the consumer chokes on is skipped; later events still arrive."""
    tag = kube.tag  # type: ignore[attr-defined]
    bad, good = node(kube, "bad"), node(kube, "good")
    seen: list[str] = []

    def on_event(etype: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == bad["metadata"]["name"]:
            raise ValueError("cannot handle this node")
        seen.append(obj["metadata"]["name"])

    refl = Reflector(
        client.CoreV1Api(api).list_node,
        on_relist=lambda items, rv: None,
        on_event=on_event,
        label_selector=f"toposcale.io/test={tag}",
    )
    async with running(refl):
        await asyncio.wait_for(refl.synced.wait(), 30)
        kube.add(bad)
        kube.add(good)
        await until(lambda: seen == [good["metadata"]["name"]], "event after the failing one")
        assert refl.callback_errors == 1 and refl.relists == 1


async def test_a_token_the_server_does_not_know_is_refused(kube_cluster: Cluster, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", kube_cluster.server, kube_cluster.ca_file, token="wrong")
    async with await api_client(str(kc)) as a:
        with pytest.raises(ApiException) as exc:
            await client.CoreV1Api(a).list_node()
    assert exc.value.status == 401


async def test_in_cluster_client_over_tls(
    kube: RealKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's service account: the token and CA files mounted in the pod, the API server from
    KUBERNETES_SERVICE_HOST/PORT; the server says who it authenticated."""
    cluster: Cluster = kube.cluster
    ns = f"incluster-{kube.tag}"  # type: ignore[attr-defined]
    kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kubectl(cluster, "create", "serviceaccount", "-n", ns, "reader")
    (tmp_path / "token").write_text(await asyncio.to_thread(sa_token, cluster, ns, "reader"))
    (tmp_path / "ca.crt").write_bytes(cluster.ca_file.read_bytes())
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    async with await api_client(serviceaccount_dir=str(tmp_path)) as a:
        review = await client.AuthenticationV1Api(a).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
    assert review.status.user_info.username == f"system:serviceaccount:{ns}:reader"


async def test_no_credentials_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException, match="no kubeconfig at"):
        await api_client(str(tmp_path / "absent"))
