"""Placeable replicas (issue 29, section 1): the pure count, which nodes a template may use, and the
read-only `POST /placeable` endpoint with its bounds. The count against the real kube-scheduler is
tests/scheduler/test_placeable.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from toposcale.extender.nodefit import NodeMeta, excluded, node_meta
from toposcale.extender.nodeview import view_of_node
from toposcale.extender.placeable import NO_GPU, NO_TOPOLOGY_SLOT, REQUIRED_SCOPE, PendingPod, placeable
from toposcale.extender.server import ServerConfig
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.model import Tier
from toposcale.extender.topology.scoring import best_tier, choose_gpus

from lab.objects import gpu_node, make_pod, topology

RES = "nvidia.com/gpu"


def view(name: str, fixture: str, used: list[int] | None = None, **kw: Any):
    return view_of_node(gpu_node(name, fixture, used, **kw), RES)


def test_each_node_takes_pods_until_its_predicted_sets_run_out() -> None:
    views = [
        view("hgx", "hgx-h100-nvswitch-8gpu"),
        view("a6000", "a6000-8gpu-nvlink-bridge-pairs", [0, 1]),
        view("l40s", "l40s-4gpu-two-per-socket", [0]),
    ]
    p = placeable(views, 4, None)
    assert {n: s.count for n, s in p.nodes.items()} == {"hgx": 2, "a6000": 1, "l40s": 0}
    assert p.nodes["hgx"].tiers == ("nvlink", "nvlink") and p.nodes["hgx"].best == 2
    assert p.nodes["l40s"].held_back == NO_GPU and p.nodes["l40s"].reason == "pod needs 4 GPUs, 3 free"
    assert p.total("any") == 3
    # what the count means: placing that many, one after another, with the prediction filter uses
    topo = topology("a6000-8gpu-nvlink-bridge-pairs", "a6000")
    free = 0b11111100
    taken = choose_gpus(topo, free, 4)
    assert taken and choose_gpus(topo, free & ~taken, 4) == 0


def test_tiers_best_and_single_numa_node() -> None:
    # 8x RTX 4090 all-SYS: any 4 are cross-socket, the box's best for 4 GPUs; idle, the prediction takes one
    # socket's four (least damage), so both land on one NUMA node; one GPU gone, the set spans both sockets
    allsys = placeable([view("sys", "rtx4090-8gpu-all-sys")], 4, None)
    assert (allsys.total("any"), allsys.total("best"), allsys.total("numa")) == (2, 2, 2)
    allsys = placeable([view("sys", "rtx4090-8gpu-all-sys", [0])], 4, None)
    assert (allsys.total("any"), allsys.total("best"), allsys.total("numa")) == (1, 1, 0)
    assert allsys.held_back("numa") == NO_TOPOLOGY_SLOT
    # bridged pairs, 4 of 8 free where only a cross-pair set is left: placed, but below the box's best
    bridged = view("a6000", "a6000-8gpu-nvlink-bridge-pairs", [0, 2, 4, 6])
    topo = topology("a6000-8gpu-nvlink-bridge-pairs", "a6000")
    p = placeable([bridged], 2, None)
    assert best_tier(topo, 2) == Tier.NVLINK
    assert p.total("any") == 2 and p.total("best") < p.total("any")
    assert p.held_back("best") == NO_TOPOLOGY_SLOT and p.held_back("any") == NO_GPU


def test_required_scope_is_honoured_and_named() -> None:
    views = [view("a6000", "a6000-8gpu-nvlink-bridge-pairs"), view("hgx", "hgx-h100-nvswitch-8gpu", [0])]
    p = placeable(views, 4, Tier.NVLINK, scope="nvlink")
    assert p.nodes["a6000"].count == 0 and p.nodes["a6000"].held_back == REQUIRED_SCOPE
    assert "at most 2 connected by NVLink" in p.nodes["a6000"].reason
    assert p.nodes["hgx"].count == 1
    assert p.held_back("any") == REQUIRED_SCOPE


def test_a_node_that_cannot_be_judged_takes_nothing_and_is_listed() -> None:
    views = [view("hgx", "hgx-h100-nvswitch-8gpu", allocation=None), view("a6000", None)]  # type: ignore[arg-type]
    p = placeable(views, 4, None)
    assert p.total() == 0 and not p.nodes
    assert set(p.unknown) == {"hgx", "a6000"}
    assert "gpu-allocation" in p.unknown["hgx"] and "gpu-topology" in p.unknown["a6000"]


def test_pending_pods_take_their_slots_first_on_the_node_they_fit_best() -> None:
    views = [view("hgx", "hgx-h100-nvswitch-8gpu"), view("l40s", "l40s-4gpu-two-per-socket")]
    alone = placeable(views, 4, None)
    assert alone.total() == 3
    everywhere = PendingPod(4, None, lambda _n: True)
    p = placeable(views, 4, None, pending=[everywhere])
    assert p.total() == 2 and p.pending_on == {"hgx": 1}  # nvlink scores above cross-socket
    only_l40s = PendingPod(4, None, lambda n: n == "l40s")
    p = placeable(views, 4, None, pending=[only_l40s, everywhere, everywhere, everywhere])
    assert p.pending_on == {"l40s": 1, "hgx": 2} and p.pending_placed == 3 and p.total() == 0


def test_template_selectors_and_taints_exclude_nodes() -> None:
    tainted = gpu_node("t", "hgx-h100-nvswitch-8gpu")
    tainted["spec"]["taints"] = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    meta = node_meta(tainted)
    pod = make_pod("p", 4)
    assert excluded(pod, "t", meta) == "node(s) had untolerated taint"
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert excluded(pod, "t", meta) is None
    pod["spec"]["nodeSelector"] = {"pool": "a"}
    assert excluded(pod, "t", meta) is not None
    assert excluded(pod, "t", NodeMeta({"pool": "a"}, meta.taints, False)) is None
    assert excluded(pod, "t", NodeMeta({"pool": "a"}, meta.taints, True)) == "node(s) were unschedulable"
    del pod["spec"]["nodeSelector"]
    terms = [
        {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["3"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["u"]}]},
    ]
    pod["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    }
    assert excluded(pod, "t", NodeMeta({"gen": "4"}, (), False)) is None
    assert excluded(pod, "t", NodeMeta({"gen": "3"}, (), False)) is not None
    assert excluded(pod, "u", NodeMeta({}, (), False)) is None  # the second term, by name


def synced_state(nodes: list[dict[str, Any]], bound: list[dict[str, Any]] = ()) -> ClusterState:  # type: ignore[assignment]
    st = ClusterState(RES)
    st.nodes_relisted(nodes, "1")
    st.pods_relisted(list(bound), "1")
    st.unbound_relisted([], "1")
    return st


def two_nodes() -> list[dict[str, Any]]:
    return [gpu_node("hgx", "hgx-h100-nvswitch-8gpu"), gpu_node("l40s", "l40s-4gpu-two-per-socket")]


def pending(name: str, gpus: int, **kw: Any) -> dict[str, Any]:
    pod = make_pod(name, gpus, **kw)
    pod["metadata"].update(uid=f"uid-{name}", creationTimestamp="2026-01-01T00:00:00Z")
    return pod


def test_cluster_state_counts_assumed_pending_and_not_gated_pods() -> None:
    st = synced_state(
        [gpu_node("hgx", "hgx-h100-nvswitch-8gpu"), gpu_node("l40s", "l40s-4gpu-two-per-socket")]
    )
    tpl = make_pod("t", 4)
    assert st.placeable(tpl, 4, None, "any").total() == 3
    b = make_pod("bound", 4, node="hgx", phase="Running")
    b["metadata"]["uid"] = "uid-bound"
    st.pod_event("ADDED", b)  # bound, not yet in the agent's annotation: assumed
    assert st.placeable(tpl, 4, None, "any").total() == 2
    gated = pending("gated", 4)
    gated["spec"]["schedulingGates"] = [{"name": "x"}]
    st.unbound_event("ADDED", gated)
    assert st.placeable(tpl, 4, None, "any").total() == 2  # not being scheduled now: takes nothing
    st.unbound_event("ADDED", pending("waiting", 4))
    got = st.placeable(tpl, 4, None, "any")
    assert got.total() == 1 and got.pending == 1
    st.unbound_event("DELETED", pending("waiting", 4))
    assert st.placeable(tpl, 4, None, "any").total() == 2


# ------------------------------------------------------------------ the endpoint


async def test_placeable_endpoint_answers_and_rejects_clearly(serve: Any) -> None:
    st = synced_state(
        [gpu_node("hgx", "hgx-h100-nvswitch-8gpu"), gpu_node("l40s", "l40s-4gpu-two-per-socket")]
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm", "namespace": "llm"},
        "spec": {
            "template": {
                "metadata": {"annotations": {"toposcale.io/required-scope": "numa"}},
                "spec": make_pod("x", 4)["spec"],
            }
        },
    }
    async with serve(state=st) as s:
        code, doc = await s.post("/placeable", make_pod("vllm-0", 4))
        assert code == 200, doc
        assert doc["kind"] == "Placeable" and doc["gpus"] == 4 and doc["requiredScope"] == "any"
        assert doc["placeable"] == {"best": 3, "numa": 2, "any": 3}
        assert doc["nodes"][0] == {"node": "hgx", "any": 2, "numa": 2, "best": 2, "tiers": ["nvlink"] * 2}
        code, doc = await s.post("/placeable", deployment)
        assert code == 200 and doc["requiredScope"] == "numa" and doc["placeable"]["any"] == 2, doc
        assert doc["heldBack"]["any"] == REQUIRED_SCOPE
        for body, words in (
            (b"{", "malformed JSON"),
            (b"[]", "must be a JSON object"),
            ({"kind": "Service", "spec": {}}, "holds no pod template"),
            ({"kind": "Deployment", "spec": {}}, "no pod spec"),
            (make_pod("cpu-only", 0), "asks no nvidia.com/gpu"),
            (make_pod("bad", 4, scope="rack"), "'rack' is not one of"),
        ):
            code, status = await s.post("/placeable", body if isinstance(body, bytes) else orjson.dumps(body))
            assert code == 400, (body, status)
            assert status["kind"] == "Status" and status["reason"] == "BadRequest", status
            assert words in status["message"], status
    async with serve(state=None) as s:
        code, status = await s.post("/placeable", make_pod("vllm-0", 4))
        assert code == 404 and "--standalone" in status["message"]
    unsynced = ClusterState(RES)
    async with serve(state=unsynced) as s:
        code, status = await s.post("/placeable", make_pod("vllm-0", 4))
        assert code == 503 and status["reason"] == "ServiceUnavailable"
    async with serve(config=ServerConfig(max_body_bytes=1024), state=st) as s:
        big = make_pod("vllm-0", 4)
        big["metadata"]["annotations"]["pad"] = "x" * 4096
        code, status = await s.post("/placeable", big)
        assert code == 413 and status["reason"] == "RequestEntityTooLarge"


@pytest.mark.parametrize("fixture", ["hgx-h100-nvswitch-8gpu", "a6000-8gpu-nvlink-bridge-pairs"])
def test_identical_boxes_share_the_work(fixture: str) -> None:
    views = [view(f"n{i}", fixture, [0]) for i in range(200)]
    first = placeable(views, 2, None)
    assert len({id(s) for s in first.nodes.values()}) == 1  # one NodeSlots per (wiring, free mask, k)


# ------------------------------------------------------------------ /freeing (scale-down victims, section 3)


def test_freed_value_prefers_completing_the_best_set_and_gives_nothing_for_stranded_gpus() -> None:
    from toposcale.extender.topology.scoring import freed_value

    hgx = topology("hgx-h100-nvswitch-8gpu", "x")
    a6000 = topology("a6000-8gpu-nvlink-bridge-pairs", "y")
    l40s = topology("l40s-4gpu-two-per-socket", "z")
    whole_nvswitch = freed_value(hgx, 0b11110000, 0b00001111)  # the last busy half of an NVSwitch box
    pairs_back = freed_value(a6000, 0b10101010, 0b01010101)  # one GPU of every NVLink pair
    small_box = freed_value(l40s, 0, 0b1111)
    assert whole_nvswitch > pairs_back > small_box > 0
    assert freed_value(a6000, 0b11111100, 0b10) == 0.0  # GPU 1 alone: its partner stays busy


async def test_freeing_endpoint_names_the_gain_or_why_not(serve: Any) -> None:
    nodes = [
        gpu_node("x", "hgx-h100-nvswitch-8gpu", [0, 1, 2, 3]),
        gpu_node("z", "l40s-4gpu-two-per-socket", [0, 1, 2, 3]),
        gpu_node("two", "hgx-h100-nvswitch-8gpu", [0, 1, 2, 3]),
    ]
    bound = []
    for name, node in (("a", "x"), ("b", "z"), ("c", "two"), ("d", "two")):
        p = make_pod(name, 4 if name != "c" else 2, node=node, phase="Running", namespace="llm")
        p["metadata"]["uid"] = f"uid-{name}"
        p["status"]["startTime"] = "2020-01-01T00:00:00Z"  # long running: in the annotation, not assumed
        bound.append(p)
    st = synced_state(nodes, bound)
    async with serve(state=st) as s:
        code, doc = await s.post("/freeing", {"pods": ["llm/a", "llm/b", "llm/c", "llm/gone"]})
        assert code == 200, doc
        got = doc["pods"]
        assert got["llm/a"]["node"] == "x" and got["llm/a"]["gain"] > got["llm/b"]["gain"] > 0
        assert got["llm/c"]["gain"] is None and "2 GPU pods share node two" in got["llm/c"]["reason"]
        assert got["llm/gone"] == {"node": None, "gain": None, "reason": "not a GPU pod bound to a node"}
        for body in (b"{", {"pods": "llm/a"}, {"pods": ["no-namespace"]}):
            code, status = await s.post("/freeing", body if isinstance(body, bytes) else orjson.dumps(body))
            assert code == 400 and status["reason"] == "BadRequest", status


def test_the_answer_is_kept_until_anything_it_depends_on_changes() -> None:
    st = synced_state(two_nodes())
    tpl = make_pod("t", 4)
    first = st.placeable(tpl, 4, None, "any")
    assert st.placeable(tpl, 4, None, "any") is first  # nothing changed: the same answer, not recomputed
    st.node_event("MODIFIED", gpu_node("hgx", "hgx-h100-nvswitch-8gpu", [0, 1, 2, 3]))  # the agent publishes
    assert st.placeable(tpl, 4, None, "any").total() == first.total() - 1
    tainted = gpu_node("l40s", "l40s-4gpu-two-per-socket")
    tainted["spec"]["taints"] = [{"key": "gpu", "effect": "NoSchedule"}]
    st.node_event("MODIFIED", tainted)  # a taint the template does not tolerate
    assert st.placeable(tpl, 4, None, "any").excluded == 1


def test_dra_nodes_are_counted_on_first_fit_and_claims_take_their_devices() -> None:
    """A DRA node (slices, a DeviceClass serving nvidia.com/gpu) is counted by DRA first-fit, the scheduler's
    own allocator, as filter judges it; devices a claim holds are taken; a device-plugin node beside it as
    before."""
    from tests.extender.test_dra_server import claim, fed

    st = fed()
    st.unbound_relisted([], "1")
    got = st.placeable(make_pod("t", 2), 2, None, "any")
    # first-fit takes gpu-0,gpu-1, then gpu-2,gpu-3, ...: four 2-GPU sets on the 8-GPU DRA node
    assert got.nodes["dra"].count == 4 and got.nodes["plugin"].count == 4
    st.claims_relisted([claim("held", "dra", ["gpu-0", "gpu-1", "gpu-2"])], "2")
    got = st.placeable(make_pod("t", 2), 2, None, "any")
    assert got.nodes["dra"].count == 2 and got.nodes["plugin"].count == 4
    assert got.nodes["dra"].held_back == NO_GPU


def test_the_running_count_equals_a_count_from_scratch_through_any_events() -> None:
    """ClusterState keeps per-node counts between requests and counts again only the nodes an event touched;
    after every random event (an agent re-publishing, a pod bound or gone, a Pending pod, a taint), its
    answer is the pure function's over the same views and Pending pods."""
    import random

    rng = random.Random(29)
    fixtures = [
        "hgx-h100-nvswitch-8gpu",
        "a6000-8gpu-nvlink-bridge-pairs",
        "l40s-4gpu-two-per-socket",
        "rtx4090-8gpu-all-sys",
        "pcie-8gpu-two-switch-trees",
    ]
    kinds = {f"n{i}": fixtures[i % len(fixtures)] for i in range(12)}
    st = synced_state([gpu_node(n, f) for n, f in kinds.items()])
    tpl = make_pod("t", 4)
    tpl["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    for step in range(60):
        n = rng.choice(list(kinds))
        what = rng.randrange(4)
        if what == 0:  # the agent re-publishes another allocation
            size = 4 if "l40s" in kinds[n] else 8
            st.node_event("MODIFIED", gpu_node(n, kinds[n], rng.sample(range(size), rng.randrange(size))))
        elif what == 1:  # a pod bound there (assumed), or one gone
            p = make_pod(f"b{step}", rng.choice([1, 2, 4]), node=n, phase="Running")
            p["metadata"]["uid"] = f"uid-b{step % 7}"
            st.pod_event(rng.choice(["ADDED", "DELETED"]), p)
        elif what == 2:  # a Pending pod comes or goes
            st.unbound_event(rng.choice(["ADDED", "DELETED"]), pending(f"p{step % 5}", rng.choice([2, 4])))
        else:  # a taint the template tolerates, or one it does not
            obj = gpu_node(n, kinds[n])
            obj["spec"]["taints"] = [{"key": rng.choice(["gpu", "other"]), "effect": "NoSchedule"}]
            st.node_event("MODIFIED", obj)
        for k in (2, 4):
            got = st.placeable(tpl, k, None, "any")
            names = list(st.base)
            shut = st._excluded_by(tpl)[1]
            pend = [
                PendingPod(pk, pneed, (lambda name, out=st._excluded_by(pod)[1]: name not in out))
                for _, pk, pneed, pod in sorted(st.unbound.values(), key=lambda e: e[0])
            ]
            want = placeable(
                st.views(names),
                k,
                None,
                admits=lambda name, shut=shut: name not in shut,
                pending=pend,
                names=names,
            )
            assert {t: got.total(t) for t in ("any", "numa", "best")} == {
                t: want.total(t) for t in ("any", "numa", "best")
            }, step
            assert got.nodes == want.nodes and got.unknown == want.unknown, step
            assert got.excluded == want.excluded and got.pending_placed == want.pending_placed, step
