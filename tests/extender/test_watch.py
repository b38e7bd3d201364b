"""`nodeCacheCapable: true`: the extender's own watch of Nodes and Pods through kubernetes-asyncio, against
the session's real kube-apiserver (tests/extender/conftest.py `lab`: Nodes and a namespace of the test's own).

The one fault the real server cannot produce on demand (the watch dropped while history is compacted, with
no await in between, so the reflector must relist) runs against tests/harness/kube_standin.py; the real 410
after an apiserver restart and an etcd compaction is tests/cluster/test_watch_restart.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from toposcale.extender.state import ClusterState

from tests.extender.conftest import Lab, node_obj, pod_obj
from tests.harness.kube_standin import KubeStandIn
from toposcale.kube import api_client


async def until(cond: Callable[[], Any], what: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


def stamp(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Watched:
    """The extender's ClusterState watching the real API server, with the test's two GPU Nodes."""

    state: ClusterState
    lab: Lab
    hgx: str
    a6000: str

    def pods(self) -> list[str]:
        """The bound GPU pods the state tracks in the test's namespace (other tests' pods are not ours)."""
        return sorted(a.key for a in self.state.pods.values() if a.key.startswith(self.lab.ns + "/"))


@pytest.fixture
async def watched(lab: Lab) -> AsyncIterator[Watched]:
    hgx, a6000 = lab.name("hgx"), lab.name("a6000")
    lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu", observed=stamp(-60)))
    lab.kube.add(node_obj(a6000, "a6000-8gpu-nvlink-bridge-pairs", used=[0], observed=stamp(-60)))
    api = await api_client(lab.kubeconfig)
    st = ClusterState("nvidia.com/gpu", reflect_grace_s=1.0)
    await st.start(api)
    try:
        await until(lambda: st.synced and st.view(hgx) and st.view(a6000), "initial list of nodes and pods")
        yield Watched(st, lab, hgx, a6000)
    finally:
        await st.stop()
        await api.close()


def names_args(pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": names}


async def test_names_only_filter_answers_from_the_watch(serve, watched: Watched) -> None:
    hgx, a6000, absent = watched.hgx, watched.a6000, watched.lab.name("gpu-9")
    async with serve(state=watched.state) as s:
        pod = pod_obj("vllm", 4, scope="nvlink")
        code, res = await s.post("/filter", names_args(pod, [a6000, hgx, absent]))
        assert code == 200
        assert res["Nodes"] is None
        # Only names from the input, in input order; a node the watch has not seen passes nothing it
        # cannot promise (a required scope), it is "fails now", not "never".
        assert res["NodeNames"] == [hgx]
        assert "at most 2 connected by NVLink" in res["FailedAndUnresolvableNodes"][a6000]
        assert "not in the extender's cache" in res["FailedNodes"][absent]
        code, prio = await s.post("/prioritize", names_args(pod_obj("vllm", 1), [hgx, a6000]))
        scores = {h["Host"]: h["Score"] for h in prio}
        assert scores[a6000] > scores[hgx]  # the 1-GPU pod goes where a pair is already broken
        code, health = await s.get("/healthz")
        assert '"synced":true' in health


async def test_node_changes_arrive_through_the_watch(serve, watched: Watched) -> None:
    state, kube, hgx, new = watched.state, watched.lab.kube, watched.hgx, watched.lab.name("new")
    async with serve(state=state) as s:
        pod = pod_obj("vllm", 8)
        _, res = await s.post("/filter", names_args(pod, [hgx]))
        assert res["NodeNames"] == [hgx]
        kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4]))  # a watch event
        await until(lambda: state.view(hgx).free_mask == 0b11100000, "MODIFIED event applied")
        kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu"))
        kube.add(node_obj(new, "dgx-a100-nvswitch-8gpu"))
        await until(lambda: state.view(new) is not None, "ADDED event applied")
        await until(lambda: state.view(hgx).free_mask == 0xFF, "the GPUs freed again")
        _, res = await s.post("/filter", names_args(pod, [hgx, new]))
        assert res["NodeNames"] == [hgx, new]
        kube.delete("Node", new)
        await until(lambda: state.view(new) is None, "DELETED event applied")


async def test_relist_after_the_watch_drops_and_history_is_compacted(serve, tmp_path: Path) -> None:
    # The watch drops, changes happen, history is compacted (no await in between, so the reflector cannot
    # reconnect early): resuming from its old resourceVersion gets 410 Expired, it must relist, and the
    # changes made in the gap must show up. Only the stand-in drops a watch and compacts on demand.
    async with KubeStandIn() as kube:
        kube.add(node_obj("hgx", "hgx-h100-nvswitch-8gpu", observed=stamp(-60)))
        api = await api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
        state = ClusterState("nvidia.com/gpu", reflect_grace_s=1.0)
        await state.start(api)
        try:
            await until(lambda: state.synced, "initial list of nodes and pods")
            nodes_reflector = state.reflectors[0]
            assert nodes_reflector.relists == 1
            async with serve(state=state) as s:
                pod = pod_obj("vllm", 8)
                kube.add(node_obj("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4]))  # a watch event
                await until(lambda: state.view("hgx").free_mask == 0b11100000, "MODIFIED event applied")
                kube.close_watches()
                kube.add(node_obj("hgx", "hgx-h100-nvswitch-8gpu"))
                kube.add(node_obj("new", "dgx-a100-nvswitch-8gpu"))
                kube.compact()
                await until(lambda: nodes_reflector.relists >= 2, "relist after 410")
                await until(lambda: state.view("new") is not None, "node created during the gap")
                _, res = await s.post("/filter", names_args(pod, ["hgx", "new"]))
                assert res["NodeNames"] == ["hgx", "new"]
                assert "410" in (nodes_reflector.last_error or "")
                kube.delete("Node", "new")
                await until(lambda: state.view("new") is None, "DELETED event applied")
        finally:
            await state.stop()
            await api.close()


async def test_bound_pods_are_assumed_until_the_agent_catches_up(serve, watched: Watched) -> None:
    state, lab, hgx = watched.state, watched.lab, watched.hgx
    async with serve(state=state) as s:
        big = names_args(pod_obj("big", 8), [hgx])
        _, res = await s.post("/filter", names_args(pod_obj("big", 8, scope="nvlink"), [hgx]))
        assert res["NodeNames"] == [hgx]
        # The scheduler binds a 4-GPU pod to hgx; the annotation (observed a minute ago) cannot show it.
        lab.kube.add(lab.pod("vllm-0", 4, node=hgx))
        await until(lambda: state.view(hgx).free_mask.bit_count() == 4, "4 GPUs assumed taken")
        _, res = await s.post("/filter", names_args(pod_obj("big", 8, scope="nvlink"), [hgx]))
        assert res["FailedNodes"][hgx].startswith("pod needs 8 GPUs, 4 free")
        _, doc = await s.post("/explain", names_args(pod_obj("four", 4), [hgx]))
        assert len(doc["nodes"][0]["gpus"]) == 4
        # The agent publishes an allocation observed after the bind: the assumption ends.
        lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu", used=[4, 5, 6, 7], observed=stamp(+5)))
        await until(lambda: state.view(hgx).free_mask == 0b00001111, "annotation replaces assumption")
        # A pod the kubelet admitted long before the annotation was observed is not counted twice
        # (what an extender restart sees for every running pod).
        old = lab.pod("old", 2, node=hgx, phase="Running")
        old["status"]["startTime"] = stamp(-3600)
        lab.kube.add(old)
        await until(lambda: len(watched.pods()) == 2, "running pod tracked")
        assert state.view(hgx).free_mask == 0b00001111
        lab.kube.delete("Pod", "old", lab.ns)
        # The pod ends: nothing assumed any more either way.
        lab.kube.delete("Pod", "vllm-0", lab.ns)
        await until(lambda: not watched.pods(), "pod gone")
        _, res = await s.post("/filter", big)
        assert res["NodeNames"] == [hgx]  # 4 free < 8, no scope: passes, the scheduler counts


async def test_explain_get_reads_the_pending_pod(serve, watched: Watched) -> None:
    lab, mine = watched.lab, {watched.hgx, watched.a6000}
    lab.kube.add(lab.pod("pending", 2, scope="nvlink"))
    async with serve(state=watched.state) as s:
        code, text = await s.get(f"/explain?pod={lab.ns}/pending")
        assert code == 200, text
        import orjson

        doc = orjson.loads(text)
        assert doc["gpus"] == 2 and doc["requiredScope"] == "nvlink"
        rows = [r for r in doc["nodes"] if r["node"] in mine]  # the session's other Nodes are not ours
        assert {r["node"] for r in rows} == mine
        assert all(r["tier"] == "nvlink" for r in rows)
        code, text = await s.get(f"/explain?pod={lab.ns}/absent")
        assert code == 404 and "not found" in text


async def test_gpu_counts_beyond_64_bits_from_the_watch(serve, watched: Watched) -> None:
    # Names-only routes and GET /explain answer a 1e30-GPU pod as an impossible pod, never a 500; a bound
    # pod holding such a count takes the node's GPUs in the cache, nothing breaks.
    import json

    lab, hgx, a6000 = watched.lab, watched.hgx, watched.a6000
    huge = lab.pod("huge", 4, scope="nvlink")
    huge["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1e30"}}
    lab.kube.add(huge)
    bound = lab.pod("bound", 4, node=a6000)
    bound["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1e30"}}
    lab.kube.add(bound)
    await until(lambda: len(watched.pods()) == 1, "bound pod tracked")
    async with serve(state=watched.state) as s:
        code, text = await s.get(f"/explain?pod={lab.ns}/huge")
        assert code == 200, text
        doc = json.loads(text)  # orjson reads no integer that large, the stdlib does
        assert doc["gpus"] == 10**30
        assert {r["outcome"] for r in doc["nodes"] if r["node"] in (hgx, a6000)} == {"never-fits"}
        code, res = await s.post("/filter", names_args(huge, [hgx, a6000]))
        assert code == 200 and set(res["FailedAndUnresolvableNodes"]) == {hgx, a6000}
        code, prio = await s.post("/prioritize", names_args(huge, [hgx, a6000]))
        assert code == 200 and {h["Score"] for h in prio} == {0}
        code, res = await s.post("/filter", names_args(pod_obj("two", 2), [hgx, a6000]))
        assert code == 200 and res["NodeNames"] == [hgx, a6000]
        _, metrics = await s.get("/metrics")
    assert 'code="500"' not in metrics
