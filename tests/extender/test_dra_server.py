"""The extender server on DRA nodes: the watch state fed by hand with ResourceSlices, ResourceClaims and
DeviceClasses (resource.k8s.io/v1), answers scored on DRA first-fit (topology/dra/), device-plugin nodes
unchanged, bad input neutral with a reason, full-Node requests too (the watched slices), --standalone on the
device-plugin prediction."""

from __future__ import annotations

from typing import Any

from toposcale.extender.state import ClusterState
from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.scoring import NEUTRAL_SCORE

from lab.objects import gpu_node, make_pod, topology

PAIRS = "a6000-8gpu-nvlink-bridge-pairs"


def gpu_slice(
    node: str, fixture: str, order: list[int] | None = None, *, uuids: bool = True
) -> dict[str, Any]:
    """NVIDIA's slice for the node: gpu-<i> carrying the topology's device id as uuid (the join key)."""
    topo = topology(fixture, node)
    devs = [
        synth.nvidia_device(
            i, uuid=topo.gpus[i].id if uuids else synth.fake_uuid(node, i), pci=f"0000:{0x10 + i:02x}:00.0"
        )
        for i in (order if order is not None else range(len(topo.gpus)))
    ]
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-gpu.nvidia.com"},
        "spec": {
            "driver": dra.DRIVER, "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": devs,
        },
    }


def claim(name: str, node: str, devices: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": dra.DRIVER}}]}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": dra.DRIVER, "pool": node, "device": d} for d in devices
        ]}}},
    }


def fed(*, dra_nodes: tuple[str, ...] = ("dra",), klass: dict[str, Any] | None = None) -> ClusterState:
    st = ClusterState("nvidia.com/gpu")
    st.nodes_relisted([gpu_node("dra", PAIRS), gpu_node("plugin", PAIRS)], "1")
    st.pods_relisted([], "1")
    st.slices_relisted([gpu_slice(n, PAIRS) for n in dra_nodes], "1")
    st.claims_relisted([], "1")
    st.classes_relisted([klass if klass is not None else synth.gpu_device_class()], "1")
    return st


def names(pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": nodes}


async def explain(s: Any, pod: dict[str, Any], nodes: list[str]) -> dict[str, dict[str, Any]]:
    code, doc = await s.post("/explain", names(pod, nodes))
    assert code == 200, doc
    return {r["node"]: r for r in doc["nodes"]}


async def test_dra_node_scored_on_first_fit_device_plugin_node_unchanged(serve) -> None:
    pod = make_pod("vllm", 4)
    async with serve(state=ClusterState("nvidia.com/gpu")) as plain_s:
        st0 = plain_s.extender.state
        st0.nodes_relisted([gpu_node("dra", PAIRS), gpu_node("plugin", PAIRS)], "1")
        st0.pods_relisted([], "1")
        before = await explain(plain_s, pod, ["dra", "plugin"])
    async with serve(state=fed()) as s:
        rows = await explain(s, pod, ["dra", "plugin"])
        assert rows["plugin"] == before["plugin"]  # the device-plugin node: exactly as without DRA
        r = rows["dra"]
        assert r["reason"].startswith("DRA first-fit would give gpu-0,gpu-1,gpu-2,gpu-3: "), r
        assert r["outcome"] == "fits"
        assert r["gpus"] == [f"GPU-dra-{i}" for i in range(4)]
        code, prio = await s.post("/prioritize", names(pod, ["dra", "plugin"]))
        assert code == 200
        assert {h["Host"]: h["Score"] for h in prio}["dra"] == r["score"]
        code, res = await s.post("/filter", names(pod, ["dra", "plugin"]))
        assert code == 200 and res["NodeNames"] == ["dra", "plugin"]


async def test_first_fit_follows_slice_order_and_claims(serve) -> None:
    st = fed()
    st.slices_relisted([gpu_slice("dra", PAIRS, [1, 3, 5, 7, 0, 2, 4, 6])], "2")
    async with serve(state=st) as s:
        pod = make_pod("vllm", 2)
        r = (await explain(s, pod, ["dra"]))["dra"]
        assert r["reason"].startswith("DRA first-fit would give gpu-1,gpu-3"), r
        st.claim_event("ADDED", claim("c1", "dra", ["gpu-1", "gpu-3", "gpu-5"]))
        r = (await explain(s, pod, ["dra"]))["dra"]
        assert r["reason"].startswith("DRA first-fit would give gpu-0,gpu-7"), r  # named in GPU order
        st.claim_event("DELETED", claim("c1", "dra", ["gpu-1", "gpu-3", "gpu-5"]))
        r = (await explain(s, pod, ["dra"]))["dra"]
        assert r["reason"].startswith("DRA first-fit would give gpu-1,gpu-3"), r


async def test_predictor_follows_the_cluster(serve) -> None:
    # No DeviceClass serving the resource: device plugin, even with slices.
    st = fed(klass=synth.gpu_device_class(extended_resource=None))
    async with serve(state=st) as s:
        pod = make_pod("vllm", 4)
        assert not (await explain(s, pod, ["dra"]))["dra"]["reason"].startswith("DRA")
        st.class_event("ADDED", synth.gpu_device_class("other", extended_resource="nvidia.com/gpu"))
        assert (await explain(s, pod, ["dra"]))["dra"]["reason"].startswith("DRA first-fit")
        st.slice_event("DELETED", gpu_slice("dra", PAIRS))
        assert not (await explain(s, pod, ["dra"]))["dra"]["reason"].startswith("DRA")
        st.slice_event("ADDED", gpu_slice("dra", PAIRS))
        assert (await explain(s, pod, ["dra"]))["dra"]["reason"].startswith("DRA first-fit")


async def test_full_node_mode_on_dra_nodes(serve) -> None:
    """nodeCacheCapable: false with cluster access: the watched slices still pick the DRA predictor for the
    full Node objects; --standalone (no slices to see) keeps the device-plugin prediction."""
    pod = make_pod("vllm", 4)
    body = {"Pod": pod, "Nodes": {"items": [gpu_node("dra", PAIRS), gpu_node("plugin", PAIRS)]}}
    async with serve(state=fed()) as s:
        code, doc = await s.post("/explain", body)
        assert code == 200
        rows = {r["node"]: r for r in doc["nodes"]}
        assert rows["dra"]["reason"].startswith("DRA first-fit would give gpu-0,gpu-1,gpu-2,gpu-3: "), rows
        assert not rows["plugin"]["reason"].startswith("DRA")
        code, prio = await s.post("/prioritize", body)
        assert code == 200 and {h["Host"]: h["Score"] for h in prio}["dra"] == rows["dra"]["score"]
    async with serve(state=None) as s:
        code, doc = await s.post("/explain", body)
        assert code == 200
        assert not any(r["reason"].startswith("DRA") for r in doc["nodes"])


async def _neutral(s: Any, pod: dict[str, Any], want: str) -> None:
    r = (await explain(s, pod, ["dra"]))["dra"]
    assert r["outcome"] == "unknown" and r["score"] == NEUTRAL_SCORE, r
    assert want in r["reason"], r
    code, prio = await s.post("/prioritize", names(pod, ["dra"]))
    assert code == 200 and prio[0]["Score"] == NEUTRAL_SCORE
    code, res = await s.post("/filter", names(pod, ["dra"]))
    assert code == 200 and res["NodeNames"] == ["dra"]
    scoped = dict(pod, metadata=dict(pod["metadata"], annotations={"toposcale.io/required-scope": "numa"}))
    code, res = await s.post("/filter", names(scoped, ["dra"]))
    assert code == 200 and "dra" in res["FailedNodes"]  # a required scope cannot be checked: fails now


async def test_bad_input_is_neutral_with_a_reason_never_500(serve) -> None:
    pod = make_pod("vllm", 4)
    st = fed()
    async with serve(state=st) as s:
        bad = gpu_slice("dra", PAIRS)
        bad["spec"]["devices"][0]["attributes"]["weird"] = {"bogus": 1}
        st.slice_event("MODIFIED", bad)
        await _neutral(s, pod, "ResourceSlices not modelled: attribute weird")
        st.slice_event("MODIFIED", gpu_slice("dra", PAIRS, uuids=False))  # no device joins the topology
        await _neutral(s, pod, "missing from the topology annotation")
        st.slice_event("MODIFIED", gpu_slice("dra", PAIRS))
        st.claim_event("ADDED", claim("all", "dra", [f"gpu-{i}" for i in range(6)]))
        await _neutral(s, pod, "DRA prediction unsatisfiable")
        counters = {"slice": {"spec": {"nodeName": "dra", "sharedCounters": [{"name": "x"}]}}}
        st.slice_event("ADDED", {"metadata": {"name": "odd"}, **counters["slice"]})
        await _neutral(s, pod, "not modelled")


async def test_watch_mode_runs_reflectors_for_the_resource_api() -> None:
    class Api:  # what kubernetes_asyncio's ResourceV1Api/CoreV1Api need of an ApiClient here: nothing
        pass

    st = ClusterState("nvidia.com/gpu")
    await st.start(Api())
    try:
        by_name = {r.name: r.list_fn.__name__ for r in st.reflectors}
        assert by_name["resourceslices"] == "list_resource_slice"
        assert by_name["resourceclaims"] == "list_resource_claim_for_all_namespaces"
        assert by_name["deviceclasses"] == "list_device_class"
    finally:
        await st.stop()
