"""Names-only answers (nodeCacheCapable: true) come from per-(k, scope) outcome tables in the watch cache.
Every change a node's answer depends on must reach exactly that node's entries: node annotations, pods
assumed on it, the node going away or arriving, an assumption running out, a relist. These tests feed the
cache the events its reflectors deliver (the watch itself runs against the kube stand-in in test_watch.py)
and compare each names-only answer, over HTTP, with what the same extender answers for the full Node objects
(`nodeCacheCapable: false`, no cache involved)."""

from __future__ import annotations

import types
from typing import Any

import orjson
import pytest
from toposcale.extender import state as state_module
from toposcale.extender.decisions import Outcome, OutcomeTable
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.model import Tier

from lab.objects import gpu_node, make_pod

PODS = [make_pod("tp4", 4), make_pod("tp4-nvlink", 4, scope="nvlink"), make_pod("tp8", 8), make_pod("one", 1)]


def fleet(**changed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nodes = {
        "hgx": gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0]),
        "hgx-2": gpu_node("hgx-2", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4]),
        "a6000": gpu_node("a6000", "a6000-8gpu-nvlink-bridge-pairs", used=[1]),
        "l40s": gpu_node("l40s", "l40s-4gpu-two-per-socket"),
        "bare": gpu_node("bare", None),
    }
    nodes.update(changed)
    return nodes


def names_args(pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": names}


def full_args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


async def answers(s: Any, pod: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], list[Any]]:
    code, filt = await s.post("/filter", names_args(pod, names))
    code2, prio = await s.post("/prioritize", names_args(pod, names))
    assert code == code2 == 200
    return filt, prio


async def assert_same_as_full_nodes(cached: Any, standalone: Any, nodes: dict[str, dict[str, Any]]) -> None:
    names = list(nodes)
    for pod in PODS:
        filt, prio = await answers(cached, pod, names)
        _, ref = await standalone.post("/filter", full_args(pod, list(nodes.values())))
        _, ref_prio = await standalone.post("/prioritize", full_args(pod, list(nodes.values())))
        assert filt["NodeNames"] == [n["metadata"]["name"] for n in ref["Nodes"]["items"]]
        assert filt["FailedNodes"] == ref["FailedNodes"]
        assert filt["FailedAndUnresolvableNodes"] == ref["FailedAndUnresolvableNodes"]
        assert prio == ref_prio


def bound(name: str, k: int, node: str) -> dict[str, Any]:
    pod = make_pod(name, k, node=node)
    pod["metadata"]["uid"] = f"uid-{name}"
    return pod


def cache(nodes: dict[str, dict[str, Any]], **kw: Any) -> ClusterState:
    st = ClusterState("nvidia.com/gpu", **kw)
    st.nodes_relisted(list(nodes.values()), "1")
    st.pods_relisted([], "1")
    return st


def entries(st: ClusterState) -> dict[tuple[int, Tier | None], dict[str, Outcome]]:
    return {key: {name: e[1] for name, e in t.entries_by_name.items()} for key, t in st._tables.items()}


async def test_answers_follow_node_annotation_changes_and_only_that_node_is_recomputed(serve) -> None:
    nodes = fleet()
    st = cache(nodes)
    async with serve(state=st) as cached, serve() as standalone:
        await assert_same_as_full_nodes(cached, standalone, nodes)
        before = entries(st)
        assert len(before) == len(PODS)
        # The agent publishes that hgx now holds 6 GPUs: a watch MODIFIED event.
        nodes = fleet(hgx=gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4, 5]))
        st.node_event("MODIFIED", nodes["hgx"])
        for key, table in entries(st).items():
            assert "hgx" not in table
            for name, outcome in table.items():
                assert outcome is before[key][name]  # untouched nodes keep their computed entries
        await assert_same_as_full_nodes(cached, standalone, nodes)
        _, prio = await answers(cached, make_pod("tp4", 4), ["hgx", "hgx-2"])
        assert prio == [{"Host": "hgx", "Score": 0}, {"Host": "hgx-2", "Score": 0}]  # 2 free < 4


async def test_node_deleted_and_created_and_relisted(serve) -> None:
    nodes = fleet()
    st = cache(nodes)
    async with serve(state=st) as cached, serve() as standalone:
        await assert_same_as_full_nodes(cached, standalone, nodes)
        st.node_event("DELETED", nodes["hgx"])
        filt, prio = await answers(cached, make_pod("tp4", 4), ["hgx", "l40s"])
        assert filt["NodeNames"] == ["hgx", "l40s"]  # not cached (yet): neutral, never a made-up fit
        assert prio[0] == {"Host": "hgx", "Score": 5}
        filt, _ = await answers(cached, make_pod("tp4-nvlink", 4, scope="nvlink"), ["hgx"])
        assert "not in the extender's cache" in filt["FailedNodes"]["hgx"]
        st.node_event("ADDED", nodes["hgx"])
        await assert_same_as_full_nodes(cached, standalone, nodes)
        # A relist (after 410 Gone) with a different fleet replaces every table.
        nodes = fleet(a6000=gpu_node("a6000", "a6000-8gpu-nvlink-bridge-pairs", used=[0, 2, 4, 6]))
        del nodes["bare"]
        st.nodes_relisted(list(nodes.values()), "2")
        await assert_same_as_full_nodes(cached, standalone, nodes)


async def test_assumed_pods_reach_the_tables_and_expire(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1000.0}
    import time

    # The state module's clock only (asyncio keeps the real one): the assumption's TTL runs out on demand.
    monkeypatch.setattr(
        state_module, "time", types.SimpleNamespace(monotonic=lambda: clock["now"], time=time.time)
    )
    nodes = fleet(hgx=gpu_node("hgx", "hgx-h100-nvswitch-8gpu", observed="2026-01-01T00:00:00Z"))
    # An old observation on purpose (before any bind); its age is not what this test is about.
    st = cache(nodes, assume_ttl_s=60.0, allocation_max_age_s=0)
    big = make_pod("big", 8, scope="nvlink")
    async with serve(state=st) as cached:
        filt, _ = await answers(cached, big, ["hgx", "hgx-2"])
        assert filt["NodeNames"] == ["hgx"]
        other = st._tables[(8, Tier.NVLINK)].entries_by_name["hgx-2"]
        # The scheduler bound a 4-GPU pod to hgx; the annotation cannot show it yet.
        st.pod_event("ADDED", bound("vllm-0", 4, "hgx"))
        assert st._tables[(8, Tier.NVLINK)].entries_by_name["hgx-2"] is other
        filt, prio = await answers(cached, big, ["hgx", "hgx-2"])
        assert filt["NodeNames"] == []
        assert filt["FailedNodes"]["hgx"].startswith("pod needs 8 GPUs, 4 free")
        _, prio = await answers(cached, make_pod("tp4", 4), ["hgx"])
        assert prio[0]["Score"] > 0  # 4 still free for a 4-GPU pod
        clock["now"] += 61  # the assumption's TTL passes
        filt, _ = await answers(cached, big, ["hgx", "hgx-2"])
        assert filt["NodeNames"] == ["hgx"]
        # The pod is back on the watch and then deleted: assumed, then not.
        st.pod_event("MODIFIED", bound("vllm-1", 4, "hgx"))
        filt, _ = await answers(cached, big, ["hgx"])
        assert filt["NodeNames"] == []
        st.pod_event("DELETED", bound("vllm-1", 4, "hgx"))
        filt, _ = await answers(cached, big, ["hgx"])
        assert filt["NodeNames"] == ["hgx"]


def test_names_the_cache_does_not_hold_are_bounded() -> None:
    asked: list[str] = []

    def fill(name: str) -> Outcome:
        asked.append(name)
        return Outcome(True, False, 5, "uncached", unknown="uncached")

    table = OutcomeTable(fill, limit=100)
    table.outcomes([f"n{i}" for i in range(80)])
    assert len(table) == 80
    out = table.outcomes([f"m{i}" for i in range(50)])
    assert len(out) == 50 and len(table) == 50  # over the limit: the old entries went
    assert table.unknown == {f"m{i}" for i in range(50)}
    asked.clear()
    table.fragments(["m1", "m2"])
    assert asked == []  # kept entries are not recomputed
    assert table.fragments(["m3"]) == [b'{"Host":"m3","Score":5}']


def test_prebuilt_fragments_join_into_the_json_of_any_name() -> None:
    import orjson
    from toposcale.extender.wire import host_priority, priority_list_of

    hosts = ["gpu-1", 'we"ird', "back\\slash", "ünïcode", "tab\tnode", ""]
    body = priority_list_of(host_priority(h, i % 11) for i, h in enumerate(hosts))
    assert orjson.loads(body) == [{"Host": h, "Score": i % 11} for i, h in enumerate(hosts)]
    assert priority_list_of([]) == b"[]"


@pytest.mark.parametrize("with_unknown", [True, False])
async def test_cached_prioritize_is_counted_in_the_metrics(serve, with_unknown: bool) -> None:
    nodes = fleet()
    if not with_unknown:
        del nodes["bare"]
    n = len(nodes)
    async with serve(state=cache(nodes)) as cached:
        for pod in (make_pod("tp4", 4), make_pod("tp2", 2)):
            _, prio = await answers(cached, pod, list(nodes))
            assert max(prio, key=lambda h: h["Score"])["Host"] == "hgx"
        # Counted right after the answer is sent: visible to the next request.
        _, metrics = await cached.get("/metrics")
    assert 'toposcale_extender_chosen_set_tier_total{tier="nvlink"} 2.0' in metrics
    assert f'toposcale_extender_nodes_scored_total{{verb="prioritize"}} {2 * n}.0' in metrics
    assert f'toposcale_extender_nodes_scored_total{{verb="filter"}} {2 * n}.0' in metrics
    if with_unknown:  # bare, in 2 filters and 2 prioritizes
        assert 'toposcale_extender_unknown_topology_nodes_total{reason="missing"} 4.0' in metrics
    else:
        assert "toposcale_extender_unknown_topology_nodes_total{" not in metrics


async def test_outcomes_are_named_for_what_they_are_in_explain_and_the_metrics(serve) -> None:
    # hgx-2 has 3 free GPUs: a 4-GPU pod passes there only on the scheduler's own count, with score 0. That
    # is "insufficient-free-gpus", not "fits" (explain said "fits" beside a reason saying the opposite).
    nodes = fleet()
    st = cache({k: v for k, v in nodes.items() if k != "bare"})
    want = {"hgx": "fits", "hgx-2": "insufficient-free-gpus", "a6000": "fits", "l40s": "fits",
            "bare": "unknown"}
    async with serve(state=st) as cached, serve() as standalone:
        _, doc = await standalone.post("/explain", full_args(make_pod("tp4", 4), list(nodes.values())))
        rows = {r["node"]: r for r in doc["nodes"]}
        assert {n: r["outcome"] for n, r in rows.items()} == want
        assert rows["hgx-2"]["score"] == 0 and "scheduler's own count decides" in rows["hgx-2"]["reason"]
        _, doc = await standalone.post("/explain", full_args(make_pod("tp8", 8), [nodes["l40s"]]))
        assert doc["nodes"][0]["outcome"] == "insufficient-gpus"  # 4 GPUs in all
        # The filter metrics use the same names, from full nodes and from the cache (whose fast path
        # counted every passing name as "fits").
        await standalone.post("/filter", full_args(make_pod("tp4", 4), list(nodes.values())))
        _, full_metrics = await standalone.get("/metrics")
        await cached.post("/filter", names_args(make_pod("tp4", 4), ["hgx", "hgx-2"]))
        await cached.post("/filter", names_args(make_pod("tp4", 4), ["hgx-2"]))
        await cached.post("/filter", names_args(make_pod("tp4", 4), ["hgx"]))
        _, cached_metrics = await cached.get("/metrics")
    line = 'toposcale_extender_filter_outcomes_total{outcome="%s"} %s'
    for label, count in (("fits", "3.0"), ("insufficient-free-gpus", "1.0"), ("unknown", "1.0")):
        assert line % (label, count) in full_metrics, full_metrics
    assert line % ("fits", "2.0") in cached_metrics
    assert line % ("insufficient-free-gpus", "2.0") in cached_metrics


def go_body(pod: dict[str, Any], names: list[str]) -> bytes:
    """ExtenderArgs as kube-scheduler's json.Marshal writes it: fields in struct order, compact."""
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})


async def test_prioritize_after_filter_answers_from_the_filter_only_while_nothing_changed(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's sequence: filter, then prioritize with the nodes the filter kept. That prioritize is
    answered from the filter's work (no decoding, no lookups) while the cache is unchanged; its answer is the
    one the ordinary path gives, and after any event in between it is the ordinary path."""
    from toposcale.extender import server as server_module

    parsed = []
    real = server_module.wire.parse_args
    monkeypatch.setattr(server_module.wire, "parse_args", lambda b: parsed.append(b) or real(b))
    nodes = fleet()
    del nodes["bare"]  # a node without annotations is counted and logged by each prioritize: ordinary path
    st = cache(nodes)
    scoped = make_pod("tp4-nvlink", 4, scope="nvlink")  # fails hgx-2 (3 free), the pairs and the PCIe box
    async with serve(state=st) as cached, serve(state=cache(nodes)) as fresh:
        for pod in (scoped, make_pod("tp4", 4)):
            code, filt = await cached.post("/filter", go_body(pod, list(nodes)))
            kept = filt["NodeNames"]
            assert kept and len(kept) < len(nodes) if pod is scoped else kept == list(nodes)
            parsed.clear()
            code2, prio = await cached.post("/prioritize", go_body(pod, kept))
            assert (code, code2) == (200, 200)
            assert parsed == []  # answered from the filter
            # The same request spelled differently (not the scheduler's bytes) takes the ordinary path:
            _, ref = await fresh.post("/prioritize", orjson.dumps({"NodeNames": kept, "Pod": pod}))
            assert prio == ref and len(parsed) == 1
        # An event between filter and prioritize: hgx now holds 6 GPUs. The prioritize must see it.
        pod = make_pod("tp4", 4)
        _, filt = await cached.post("/filter", go_body(pod, ["hgx", "a6000"]))
        assert filt["NodeNames"] == ["hgx", "a6000"]
        st.node_event("MODIFIED", gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4, 5]))
        parsed.clear()
        _, prio = await cached.post("/prioritize", go_body(pod, ["hgx", "a6000"]))
        assert len(parsed) == 1
        assert prio[0] == {"Host": "hgx", "Score": 0}  # 2 free < 4: the new state, not the filter's
        # Another pod's prioritize with the same nodes is not the filter's follow-up either.
        _, filt = await cached.post("/filter", go_body(pod, ["a6000"]))
        parsed.clear()
        _, prio = await cached.post("/prioritize", go_body(make_pod("other", 1), ["a6000"]))
        assert len(parsed) == 1
