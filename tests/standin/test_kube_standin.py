"""The Kubernetes API stand-in, driven by real clients: kubernetes-asyncio (unmodified) and kubectl.

There is no kube-apiserver on these machines; `tests/harness/kube_standin.py` speaks its wire format
(list/watch with resourceVersion, 410 Expired, merge/strategic/JSON patch, TokenReview, SubjectAccessReview).
These tests pin that behaviour, and toposcale/core/kube.py's client factory and reflector against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from tests.harness.kube_standin import KubeStandIn
from toposcale.core.kube import Reflector, Store, api_client

TOKEN = "standin-test-token"


def node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"capacity": {"nvidia.com/gpu": "4"}},
    }


def pod(name: str, node_name: str, ns: str = "llm", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "vllm"}},
        "spec": {"nodeName": node_name, "containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running"},
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
    async with KubeStandIn(require_token=TOKEN) as k:
        k.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "llm"}})
        yield k


@pytest.fixture
async def api(kube: KubeStandIn, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    a = await api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
    async with a:
        yield a


async def test_get_list_with_selectors_and_404_status(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add(node("gpu-a", {"nvidia.com/gpu.present": "true"}))
    kube.add(node("cpu-a"))
    kube.add(pod("vllm-0", "gpu-a"))
    kube.add(pod("vllm-1", "gpu-b"))
    kube.add(pod("other", "gpu-a", labels={"app": "other"}))
    core = client.CoreV1Api(api)

    nodes = await core.list_node(label_selector="nvidia.com/gpu.present=true")
    assert [n.metadata.name for n in nodes.items] == ["gpu-a"]
    assert int(nodes.metadata.resource_version) == kube.resource_version

    on_a = await core.list_pod_for_all_namespaces(
        field_selector="spec.nodeName=gpu-a", label_selector="app=vllm"
    )
    assert [p.metadata.name for p in on_a.items] == ["vllm-0"]
    notin = await core.list_namespaced_pod("llm", label_selector="app notin (vllm)")
    assert [p.metadata.name for p in notin.items] == ["other"]
    by_name = await core.list_namespaced_pod("llm", field_selector="metadata.name=vllm-1")
    assert [p.spec.node_name for p in by_name.items] == ["gpu-b"]

    got = await core.read_namespaced_pod("vllm-0", "llm")
    assert got.metadata.uid and got.metadata.creation_timestamp and got.metadata.resource_version

    with pytest.raises(ApiException) as exc:
        await core.read_node("missing")
    assert exc.value.status == 404
    status = json.loads(exc.value.body)
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "missing" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "missing", "kind": "nodes"},
    }
    with pytest.raises(ApiException) as exc:
        await core.list_pod_for_all_namespaces(field_selector="spec.schedulerName=x")
    assert exc.value.status == 400
    # every request carried the kubeconfig's bearer token (the stand-in refuses others with 401)
    assert {r.authorization for r in kube.requests} == {f"Bearer {TOKEN}"}


async def test_missing_token_is_refused(kube: KubeStandIn, tmp_path: Path) -> None:
    async with await api_client(kube.write_kubeconfig(tmp_path / "kc", token="wrong")) as a:
        with pytest.raises(ApiException) as exc:
            await client.CoreV1Api(a).list_node()
    assert exc.value.status == 401


async def test_patch_create_delete(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add(node("gpu-a"))
    core = client.CoreV1Api(api)
    before = kube.get("Node", "gpu-a")
    assert before is not None

    # merge patch on annotations, the agent's write
    await core.patch_node(
        "gpu-a",
        {"metadata": {"annotations": {"toposcale.io/gpu-topology": "{}", "x": "1"}}},
        _content_type="application/merge-patch+json",
    )
    # strategic merge (kubernetes-asyncio's default for a dict body); null deletes a key
    await core.patch_node("gpu-a", {"metadata": {"annotations": {"x": None}}})
    after = kube.get("Node", "gpu-a")
    assert after is not None
    assert after["metadata"]["annotations"] == {"toposcale.io/gpu-topology": "{}"}
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert [r.content_type for r in kube.requests if r.method == "PATCH"] == [
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ]

    # status on the main resource is ignored; the status subresource changes it
    await core.patch_node("gpu-a", {"status": {"capacity": {"nvidia.com/gpu": "8"}}})
    assert kube.get("Node", "gpu-a")["status"]["capacity"]["nvidia.com/gpu"] == "4"  # type: ignore[index]
    await core.patch_node_status("gpu-a", {"status": {"capacity": {"nvidia.com/gpu": "8"}}})
    assert kube.get("Node", "gpu-a")["status"]["capacity"]["nvidia.com/gpu"] == "8"  # type: ignore[index]

    # JSON patch with a stale resourceVersion test -> 409 Conflict via a merge patch carrying the old RV
    with pytest.raises(ApiException) as exc:
        await core.patch_node(
            "gpu-a",
            {"metadata": {"resourceVersion": before["metadata"]["resourceVersion"], "labels": {"a": "b"}}},
        )
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    await core.patch_node("gpu-a", [{"op": "add", "path": "/metadata/labels/zone", "value": "a"}])
    assert kube.get("Node", "gpu-a")["metadata"]["labels"] == {"zone": "a"}  # type: ignore[index]

    created = await core.create_namespaced_config_map(
        "llm", {"metadata": {"name": "rules"}, "data": {"rules.yaml": "x: 1"}}
    )
    assert created.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_config_map("llm", {"metadata": {"name": "rules"}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_config_map("nowhere", {"metadata": {"name": "rules"}})
    assert exc.value.status == 404
    await core.delete_namespaced_config_map("rules", "llm")
    assert kube.get("ConfigMap", "rules", "llm") is None
    with pytest.raises(ApiException) as exc:
        await core.patch_node("gpu-a", {"metadata": {}}, _content_type="application/apply-patch+yaml")
    assert exc.value.status == 415


async def test_paging_and_expired_continue_token(kube: KubeStandIn, api: client.ApiClient) -> None:
    for i in range(5):
        kube.add(node(f"n{i}"))
    core = client.CoreV1Api(api)
    first = await core.list_node(limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    second = await core.list_node(limit=2, _continue=first.metadata._continue)
    assert [n.metadata.name for n in second.items] == ["n2", "n3"]
    kube.add(node("n5"))  # history moves on past the list's revision, then is compacted away
    kube.compact()
    with pytest.raises(ApiException) as exc:
        await core.list_node(limit=2, _continue=second.metadata._continue)
    assert exc.value.status == 410 and json.loads(exc.value.body)["reason"] == "Expired"
    # an exact read at a compacted revision is gone too; "not older than" reads are served from now
    with pytest.raises(ApiException) as exc:
        await core.list_node(resource_version=first.metadata.resource_version, resource_version_match="Exact")
    assert exc.value.status == 410
    assert len((await core.list_node(resource_version=first.metadata.resource_version)).items) == 6


async def test_watch_stream_and_410_error_event(kube: KubeStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    kube.add(node("gpu-a"))
    listed = await core.list_node()
    rv = listed.metadata.resource_version
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async with watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=30) as stream:
            async for ev in stream:
                seen.append((ev["type"], ev["object"].metadata.name))
                if ev["type"] == "DELETED":
                    return

    task = asyncio.create_task(consume())
    await until(lambda: kube.open_watches == 1, "watch open")
    kube.add(node("gpu-b"))
    kube.add(node("gpu-b", {"x": "y"}))
    kube.delete("Node", "gpu-a")
    await asyncio.wait_for(task, 10)
    assert seen == [("ADDED", "gpu-b"), ("MODIFIED", "gpu-b"), ("DELETED", "gpu-a")]

    # watching from a compacted resourceVersion: HTTP 200 then an ERROR event holding a 410 Status
    kube.compact()
    with pytest.raises(ApiException) as exc:
        async with watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=5) as stream:
            async for _ in stream:
                pass
    assert exc.value.status == 410


async def test_watch_selector_transitions_read_as_added_and_deleted(
    kube: KubeStandIn, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    rv = (await core.list_namespaced_pod("llm")).metadata.resource_version
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async with watch.Watch().stream(
            core.list_namespaced_pod,
            "llm",
            label_selector="app=vllm",
            resource_version=rv,
            timeout_seconds=30,
        ) as stream:
            async for ev in stream:
                seen.append((ev["type"], ev["object"].metadata.labels["app"]))
                if len(seen) == 2:
                    return

    task = asyncio.create_task(consume())
    await until(lambda: kube.open_watches == 1, "watch open")
    kube.add(pod("p", "n", labels={"app": "vllm"}))
    kube.add(pod("p", "n", labels={"app": "moved"}))
    await asyncio.wait_for(task, 10)
    assert seen == [("ADDED", "vllm"), ("DELETED", "moved")]


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

    async def on_event(etype: str, obj: dict[str, Any]) -> None:
        store.apply(etype, obj)
        events.append((etype, obj["metadata"]["name"]))

    core = client.CoreV1Api(api)
    refl = Reflector(
        core.list_node, on_relist=on_relist, on_event=on_event, page_size=1, backoff_initial_s=0.01
    )
    task = asyncio.create_task(refl.run())
    try:
        await asyncio.wait_for(refl.synced.wait(), 10)
        assert relists == [["gpu-a", "gpu-b"]]  # paged one item at a time, assembled into one set
        await until(lambda: kube.open_watches == 1, "watch open")
        kube.add(node("gpu-c"))
        await until(lambda: ("ADDED", "gpu-c") in events, "watch event")
        assert refl.resource_version == str(kube.resource_version)

        # while the reflector is disconnected, changes happen and the history is compacted away
        kube.close_watches()
        kube.delete("Node", "gpu-a")
        kube.add(node("gpu-d"))
        kube.compact()
        await until(lambda: len(relists) == 2, "relist after 410")
        assert relists[1] == ["gpu-b", "gpu-c", "gpu-d"]
        assert sorted(n for _, n in store.objects) == ["gpu-b", "gpu-c", "gpu-d"]
        assert refl.last_error is not None and "410" in refl.last_error

        # it watches again from the new list, and sees later changes
        await until(lambda: kube.open_watches == 1, "watch reopened")
        kube.delete("Node", "gpu-b")
        await until(lambda: ("DELETED", "gpu-b") in events, "event after relist")
        assert sorted(n for _, n in store.objects) == ["gpu-c", "gpu-d"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_reflector_backs_off_on_server_errors(kube: KubeStandIn, api: client.ApiClient) -> None:
    kube.add(pod("vllm-0", "gpu-a"))
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
    task = asyncio.create_task(refl.run())
    try:
        await asyncio.wait_for(refl.synced.wait(), 10)
        assert list(store.objects) == [("llm", "vllm-0")]
        assert refl.last_error is not None and "503" in refl.last_error
        lists = [
            r for r in kube.requests if r.path == "/api/v1/namespaces/llm/pods" and "watch" not in r.query
        ]
        assert [r.status for r in lists] == [500, 503, 200]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_reflector_survives_a_handler_that_raises(kube: KubeStandIn, api: client.ApiClient) -> None:
    """One object the consumer chokes on is skipped; later events still arrive."""
    seen: list[str] = []

    def on_event(etype: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "bad":
            raise ValueError("cannot handle this node")
        seen.append(obj["metadata"]["name"])

    refl = Reflector(client.CoreV1Api(api).list_node, on_relist=lambda items, rv: None, on_event=on_event)
    task = asyncio.create_task(refl.run())
    try:
        await asyncio.wait_for(refl.synced.wait(), 10)
        await until(lambda: kube.open_watches == 1, "watch open")
        kube.add(node("bad"))
        kube.add(node("good"))
        await until(lambda: seen == ["good"], "event after the failing one")
        assert refl.callback_errors == 1 and refl.relists == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


async def test_in_cluster_client_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with KubeStandIn(tls=True, require_token=TOKEN) as kube:
        kube.add(node("gpu-a"))
        assert kube.ca_file is not None
        (tmp_path / "token").write_text(TOKEN)
        (tmp_path / "ca.crt").write_bytes(kube.ca_file.read_bytes())
        host, port = kube.url.removeprefix("https://").split(":")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        async with await api_client(serviceaccount_dir=str(tmp_path)) as a:
            nodes = await client.CoreV1Api(a).list_node()
        assert [n.metadata.name for n in nodes.items] == ["gpu-a"]
        assert kube.requests[-1].authorization == f"Bearer {TOKEN}"


async def test_no_credentials_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigException, match="no kubeconfig at"):
        await api_client(str(tmp_path / "absent"))


async def test_kubectl_talks_to_the_standin(tmp_path: Path) -> None:
    # over TLS: client-go does not send a bearer token to a plain-http server
    async with KubeStandIn(tls=True, require_token=TOKEN) as kube:
        await _kubectl_round_trip(kube, tmp_path)


async def _kubectl_round_trip(kube: KubeStandIn, tmp_path: Path) -> None:
    kube.add(node("gpu-a", {"nvidia.com/gpu.present": "true"}))
    kubeconfig = kube.write_kubeconfig(tmp_path / "kc")
    kubectl = str(Path(sys.executable).parent / "kubectl")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, "--request-timeout=10s", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    got = await asyncio.to_thread(run, "get", "nodes", "-l", "nvidia.com/gpu.present=true", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert [i["metadata"]["name"] for i in json.loads(got.stdout)["items"]] == ["gpu-a"]
    annotated = await asyncio.to_thread(run, "annotate", "node", "gpu-a", "toposcale.io/test=1")
    assert annotated.returncode == 0, annotated.stderr
    assert kube.get("Node", "gpu-a")["metadata"]["annotations"] == {"toposcale.io/test": "1"}  # type: ignore[index]
