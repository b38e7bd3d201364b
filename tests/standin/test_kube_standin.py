"""toposcale/kube.py's Reflector under the faults only the stand-in (tests/harness/kube_standin.py) scripts on
demand: a watch dropped while history is compacted (410 as an ERROR event or as HTTP), a paged list whose
continue token expires, server errors on chosen calls; and the stand-in's scripted TokenReview and
SubjectAccessReview answers. The Reflector's normal work (paged list, watch, a failing handler) runs against
the real kube-apiserver in tests/cluster/test_kube_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from tests.harness.kube_standin import KubeStandIn
from toposcale.kube import Reflector, Store, api_client


def node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}


def pod(name: str, ns: str = "llm") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "vllm"}},
    }


async def until(cond: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    """Wait for a condition the code under test must reach; the limit only bounds a broken run."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def kube() -> AsyncIterator[KubeStandIn]:
    async with KubeStandIn() as k:
        yield k


@pytest.fixture
async def api(kube: KubeStandIn, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    a = await api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
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


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
async def test_reflector_relists_after_410(kube: KubeStandIn, api: client.ApiClient, as_http: bool) -> None:
    kube.watch_expired_as_http = as_http
    kube.add(node("gpu-a"))
    kube.add(node("gpu-b"))
    store = Store()
    relists: list[list[str]] = []
    events: list[tuple[str, str]] = []

    def on_relist(items: list[dict[str, Any]], rv: str) -> None:
        store.replace(items, rv)
        relists.append(sorted(o["metadata"]["name"] for o in items))

    def on_event(etype: str, obj: dict[str, Any]) -> None:
        store.apply(etype, obj)
        events.append((etype, obj["metadata"]["name"]))

    refl = Reflector(
        client.CoreV1Api(api).list_node, on_relist=on_relist, on_event=on_event, backoff_initial_s=0.01
    )
    async with running(refl) as task:
        await asyncio.wait_for(refl.synced.wait(), 10)
        await until(lambda: kube.open_watches == 1, "watch open")
        # while the reflector is disconnected, changes happen and the history is compacted away, with no
        # await in between: resuming from its resourceVersion meets the 410
        kube.close_watches()
        kube.delete("Node", "gpu-a")
        kube.add(node("gpu-c"))
        kube.compact()
        await until(lambda: len(relists) == 2, "relist after 410")
        assert relists == [["gpu-a", "gpu-b"], ["gpu-b", "gpu-c"]]
        assert sorted(n for _, n in store.objects) == ["gpu-b", "gpu-c"]
        assert refl.last_error is not None and "410" in refl.last_error
        assert events == []  # the gap's changes came with the relist, not as events

        # it watches again from the new list, and sees later changes
        await until(lambda: kube.open_watches == 1, "watch reopened")
        kube.delete("Node", "gpu-b")
        await until(lambda: ("DELETED", "gpu-b") in events, "event after relist")
        assert sorted(n for _, n in store.objects) == ["gpu-c"]
    assert task.cancelled()


async def test_reflector_restarts_a_list_whose_continue_token_expired(
    kube: KubeStandIn, api: client.ApiClient
) -> None:
    """History compacted between two pages of a list: the next page answers 410, the list starts over."""
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        kube.add(node(name))
    list_node = client.CoreV1Api(api).list_node
    pages: list[bool] = []  # whether each call carried a continue token

    async def list_fn(**kw: Any) -> Any:
        pages.append("_continue" in kw)
        if pages == [False, True]:  # after the first page: a change, then the compaction
            kube.add(node("gpu-d"))
            kube.compact()
        return await list_node(**kw)

    store = Store()
    refl = Reflector(
        list_fn,
        on_relist=store.replace,
        on_event=store.apply,
        page_size=2,
        backoff_initial_s=0.01,
        name="nodes",
    )
    async with running(refl):
        await asyncio.wait_for(refl.synced.wait(), 10)
    assert pages[:2] == [False, True] and pages[2] is False  # the expired list started over
    assert sorted(n for _, n in store.objects) == ["gpu-a", "gpu-b", "gpu-c", "gpu-d"]
    assert refl.relists == 1 and refl.last_error is not None and "410" in refl.last_error


async def test_reflector_backs_off_on_server_errors(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add(pod("vllm-0"))
    kube.add(pod("other", ns="elsewhere"))
    kube.fail_next[("GET", "/api/v1/namespaces/llm/pods")] = [500, 503]
    store = Store()
    refl = Reflector(
        client.CoreV1Api(api).list_namespaced_pod,
        namespace="llm",
        label_selector="app=vllm",
        on_relist=store.replace,
        on_event=store.apply,
        backoff_initial_s=0.01,
    )
    async with running(refl):
        await asyncio.wait_for(refl.synced.wait(), 10)
        assert list(store.objects) == [("llm", "vllm-0")]
        assert refl.last_error is not None and "503" in refl.last_error
        lists = [
            r for r in kube.requests if r.path == "/api/v1/namespaces/llm/pods" and "watch" not in r.query
        ]
        assert [r.status for r in lists] == [500, 503, 200]


async def test_token_review_and_subject_access_review(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.tokens["hpa-token"] = {
        "username": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "uid": "u-1",
        "groups": ["system:serviceaccounts"],
    }
    kube.sar_decider = lambda spec: (
        (True, "hpa may read external metrics")
        if spec["user"].endswith("horizontal-pod-autoscaler")
        and spec["resourceAttributes"]["group"] == "external.metrics.k8s.io"
        else (False, "no RBAC")
    )

    authn = client.AuthenticationV1Api(api)
    ok = await authn.create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token="hpa-token"))
    )
    assert ok.status.authenticated and ok.status.user.username.endswith("horizontal-pod-autoscaler")
    bad = await authn.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="nope")))
    assert bad.status.authenticated is False

    authz = client.AuthorizationV1Api(api)

    def sar(user: str) -> client.V1SubjectAccessReview:
        return client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                resource_attributes=client.V1ResourceAttributes(
                    group="external.metrics.k8s.io",
                    version="v1beta1",
                    resource="vllm_requests_waiting",
                    namespace="llm",
                    verb="get",
                ),
            )
        )

    yes = await authz.create_subject_access_review(sar(ok.status.user.username))
    no = await authz.create_subject_access_review(sar("system:anonymous"))
    assert (yes.status.allowed, yes.status.reason) == (True, "hpa may read external metrics")
    assert (no.status.allowed, no.status.reason) == (False, "no RBAC")
    assert kube.calls == {"tokenreviews": 2, "subjectaccessreviews": 2}
