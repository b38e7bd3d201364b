"""An allocation the agent observed longer than --allocation-max-age ago is unknown, in both scheduler modes.

The agent re-publishes `toposcale.io/gpu-allocation` at least every --refresh-interval (300 s); an older
one means the agent stopped, and answering from it would be serving a made-up value. A stale node passes
with the neutral score, fails now for pods with a required scope, is counted under
`unknown_topology_nodes_total{reason="stale-allocation"}` and logged once. In names-only mode a node turns
stale with no watch event at all (the cache's entries carry their expiry): the watch runs against the
session's real kube-apiserver (tests/extender/conftest.py `lab`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from toposcale.extender.server import ServerConfig
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.scoring import NEUTRAL_SCORE

from tests.extender.conftest import Lab, node_obj, pod_obj
from tests.extender.test_watch import names_args, stamp, until
from toposcale.kube import api_client

STALE_METRIC = 'toposcale_extender_unknown_topology_nodes_total{reason="stale-allocation"}'
LOG_LINE = "node answered without usable GPU annotations"


def full_args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_full_nodes_with_an_old_allocation_are_unknown(serve, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [
        node_obj("fresh", "hgx-h100-nvswitch-8gpu", used=[0], observed=stamp(-60)),
        node_obj("old", "hgx-h100-nvswitch-8gpu", used=[0], observed=stamp(-1000)),
    ]
    caplog.set_level(logging.WARNING, "toposcale.extender")
    async with serve() as s:
        code, prio = await s.post("/prioritize", full_args(pod_obj("tp4", 4), nodes))
        assert code == 200
        scores = {h["Host"]: h["Score"] for h in prio}
        assert scores["old"] == NEUTRAL_SCORE and scores["fresh"] != NEUTRAL_SCORE
        code, res = await s.post("/filter", full_args(pod_obj("tp4", 4, scope="nvlink"), nodes))
        assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["fresh"]
        reason = res["FailedNodes"]["old"]
        assert "stale" in reason and "required scope cannot be checked" in reason
        assert res["FailedAndUnresolvableNodes"] == {}
        _, text = await s.get("/metrics")
        assert metric(text, STALE_METRIC) == 2.0
        # Once per node, not once per request.
        assert [r.__dict__.get("node") for r in caplog.records if r.getMessage() == LOG_LINE] == ["old"]
        # /explain says the same.
        _, doc = await s.post("/explain", full_args(pod_obj("tp4", 4), nodes))
        row = {r["node"]: r for r in doc["nodes"]}["old"]
        assert row["unknown"] == "stale-allocation" and "gpus" not in row


async def test_full_nodes_age_by_the_clock_and_zero_disables(serve) -> None:
    clock = {"now": time.time()}
    nodes = [node_obj("hgx", "hgx-h100-nvswitch-8gpu", used=[0], observed=stamp(0))]
    pod = pod_obj("tp4", 4, scope="nvlink")
    async with serve(ServerConfig(allocation_max_age_s=600), wall=lambda: clock["now"]) as s:
        _, res = await s.post("/filter", full_args(pod, nodes))
        assert len(res["Nodes"]["items"]) == 1
        clock["now"] += 601  # same Node object, the same cached view: only time passed
        _, res = await s.post("/filter", full_args(pod, nodes))
        assert res["Nodes"]["items"] == [] and "more than 600s ago" in res["FailedNodes"]["hgx"]
    async with serve(ServerConfig(allocation_max_age_s=0), wall=lambda: clock["now"] + 10**6) as s:
        _, res = await s.post("/filter", full_args(pod, nodes))
        assert len(res["Nodes"]["items"]) == 1


async def test_cached_node_turns_stale_without_a_watch_event_and_back(
    serve, lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    clock = {"offset": 0.0}
    hgx, l40s = lab.name("hgx"), lab.name("l40s")
    lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu", observed=stamp(0)))
    lab.kube.add(node_obj(l40s, "l40s-4gpu-two-per-socket", observed=stamp(0)))
    api = await api_client(lab.kubeconfig)
    st = ClusterState("nvidia.com/gpu", allocation_max_age_s=900, wall=lambda: time.time() + clock["offset"])
    await st.start(api)
    caplog.set_level(logging.WARNING, "toposcale.extender")

    def versions() -> list[str]:
        return [lab.kube.get("Node", n)["metadata"]["resourceVersion"] for n in (hgx, l40s)]

    try:
        await until(lambda: st.synced and st.view(hgx) and st.view(l40s), "initial list of nodes and pods")
        async with serve(state=st) as s:
            scoped = names_args(pod_obj("tp4", 4, scope="nvlink"), [hgx])
            plain = names_args(pod_obj("tp4", 4), [hgx, l40s])
            _, res = await s.post("/filter", scoped)
            assert res["NodeNames"] == [hgx]  # cached in the (4, nvlink) table: fits
            _, prio = await s.post("/prioritize", plain)
            assert prio[0]["Score"] != NEUTRAL_SCORE
            before = versions()
            clock["offset"] = 901.0  # the agent went quiet: no event, only time passes
            _, res = await s.post("/filter", scoped)
            assert res["NodeNames"] == [] and "GPU allocation stale" in res["FailedNodes"][hgx]
            _, prio = await s.post("/prioritize", plain)
            assert [h["Score"] for h in prio] == [NEUTRAL_SCORE, NEUTRAL_SCORE]
            _, res = await s.post("/filter", names_args(pod_obj("tp4", 4), [hgx]))
            assert res["NodeNames"] == [hgx]  # no scope: passes, neutral
            assert versions() == before  # nothing was written to the Nodes meanwhile
            _, text = await s.get("/metrics")
            assert metric(text, STALE_METRIC) >= 4.0
            logged = [r.__dict__.get("node") for r in caplog.records if r.getMessage() == LOG_LINE]
            assert sorted(logged) == [hgx, l40s]  # once each
            # The agent publishes again: a fresh allocation arrives through the watch, the node is back.
            lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu", observed=stamp(901)))
            await until(lambda: not st.view(hgx).stale, "fresh allocation applied")
            _, res = await s.post("/filter", scoped)
            assert res["NodeNames"] == [hgx]
    finally:
        await st.stop()
        await api.close()


def test_expiry_entries_of_replaced_views_stay_bounded() -> None:
    clock = {"now": time.time()}
    st = ClusterState("nvidia.com/gpu", wall=lambda: clock["now"])
    observed = stamp(0)
    node = node_obj("hgx", "hgx-h100-nvswitch-8gpu", observed=observed)
    st.nodes_relisted([node], "1")
    st.pods_relisted([], "1")
    for i in range(3000):  # every allocation change is a new view with its own expiry entry
        st.node_event("MODIFIED", node_obj("hgx", "hgx-h100-nvswitch-8gpu", used=[i % 8], observed=observed))
        st.table(4, None).entries(["hgx"])
    assert len(st._ages) <= 4 * len(st.base) + 1024 + 1
    assert not st.view("hgx").stale
    clock["now"] += 901  # observed is clock["now"] truncated to the second
    assert st.view("hgx").stale
