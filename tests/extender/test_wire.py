"""The extender over HTTP, as kube-scheduler calls it (k8s.io/kube-scheduler/extender/v1 types, no JSON tags:
PascalCase keys). Served in-process on loopback by the real aiohttp app; `nodeCacheCapable: false` payloads
carry full v1.Node objects annotated by the agent."""

from __future__ import annotations

from typing import Any

import orjson

from lab.objects import gpu_node, make_pod


def fleet() -> list[dict[str, Any]]:
    return [
        gpu_node("hgx", "hgx-h100-nvswitch-8gpu"),
        gpu_node("hgx-busy", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4]),
        gpu_node("a6000", "a6000-8gpu-nvlink-bridge-pairs"),
        gpu_node("rtx-sys", "rtx4090-8gpu-all-sys"),
        gpu_node("l40s-busy", "l40s-4gpu-two-per-socket", used=[0, 1, 2]),
        gpu_node("bare", None),  # no agent yet
    ]


def args(pod: dict[str, Any], nodes: list[dict[str, Any]] | None = None, names: list[str] | None = None):
    return {
        "Pod": pod,
        "Nodes": None if nodes is None else {"metadata": {}, "items": nodes},
        "NodeNames": names,
    }


async def test_filter_full_nodes_pascal_case_and_echo(serve) -> None:
    nodes = fleet()
    async with serve() as s:
        code, res = await s.post("/filter", args(make_pod("vllm", 4), nodes))
    assert code == 200
    assert set(res) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert res["Error"] == ""
    assert res["NodeNames"] is None
    # Passing nodes are echoed as the very objects sent; the 4-GPU pod does not fit on l40s-busy (1 free)
    # but passes with score 0: without a required scope the scheduler's own GPU count is authoritative.
    echoed = {n["metadata"]["name"]: n for n in res["Nodes"]["items"]}
    assert set(echoed) == {"hgx", "hgx-busy", "a6000", "rtx-sys", "l40s-busy", "bare"}
    assert echoed["hgx"] == nodes[0]


async def test_prioritize_scores_by_topology(serve) -> None:
    async with serve() as s:
        code, res = await s.post("/prioritize", args(make_pod("vllm", 4), fleet()))
    assert code == 200
    assert isinstance(res, list)
    scores = {h["Host"]: h["Score"] for h in res}
    assert set(scores) == {"hgx", "hgx-busy", "a6000", "rtx-sys", "l40s-busy", "bare"}
    assert all(0 <= v <= 10 for v in scores.values())
    assert scores["hgx"] == max(scores.values())
    assert scores["hgx"] > scores["a6000"] > scores["rtx-sys"]
    assert scores["l40s-busy"] == 0 and scores["hgx-busy"] == 0
    assert scores["bare"] == 5  # unknown topology: neutral


async def test_lowercase_keys_accepted_answer_pascal(serve) -> None:
    body = {"pod": make_pod("vllm", 2), "nodes": {"items": fleet()[:2]}, "nodenames": None}
    async with serve() as s:
        code, res = await s.post("/filter", body)
        code2, prio = await s.post("/prioritize", body)
    assert code == code2 == 200
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["hgx", "hgx-busy"]
    assert set(prio[0]) == {"Host", "Score"}


async def test_required_scope_fails_with_reasons(serve) -> None:
    async with serve() as s:
        code, res = await s.post("/filter", args(make_pod("vllm", 4, scope="nvlink"), fleet()))
    assert code == 200
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["hgx"]
    never = res["FailedAndUnresolvableNodes"]
    assert "at most 2 connected by NVLink" in never["a6000"]
    assert "rtx-sys" in never
    assert "node has 4 GPUs but no two connected by NVLink" in never["l40s-busy"]
    now = res["FailedNodes"]
    assert "pod needs 4 GPUs, 3 free" in now["hgx-busy"]
    assert "cannot be checked" in now["bare"]
    assert res["Error"] == ""


async def test_invalid_scope_fails_every_node_unresolvable(serve) -> None:
    async with serve() as s:
        code, res = await s.post("/filter", args(make_pod("vllm", 4, scope="rack"), fleet()))
    assert code == 200
    assert res["Nodes"]["items"] == []
    assert set(res["FailedAndUnresolvableNodes"]) == {n["metadata"]["name"] for n in fleet()}
    assert "'rack' is not one of" in res["FailedAndUnresolvableNodes"]["hgx"]


async def test_pod_without_gpus_passes_everything_with_zero(serve) -> None:
    async with serve() as s:
        _, res = await s.post("/filter", args(make_pod("web", 0), fleet()))
        _, prio = await s.post("/prioritize", args(make_pod("web", 0), fleet()))
    assert len(res["Nodes"]["items"]) == len(fleet())
    assert res["FailedNodes"] == {} and res["FailedAndUnresolvableNodes"] == {}
    assert {h["Score"] for h in prio} == {0}


async def test_standalone_names_only_fails_with_clear_reason(serve) -> None:
    async with serve() as s:
        code, res = await s.post("/filter", args(make_pod("vllm", 4), names=["n1", "n2"]))
        code2, prio = await s.post("/prioritize", args(make_pod("vllm", 4), names=["n1", "n2"]))
    assert code == code2 == 200
    assert res["NodeNames"] == [] and res["Nodes"] is None
    assert set(res["FailedAndUnresolvableNodes"]) == {"n1", "n2"}
    assert "nodeCacheCapable: false" in res["FailedAndUnresolvableNodes"]["n1"]
    assert prio == [{"Host": "n1", "Score": 0}, {"Host": "n2", "Score": 0}]


async def test_bad_annotations_pass_neutral_and_log_once(serve, caplog) -> None:
    broken = gpu_node("broken", None, extra_annotations={"toposcale.io/gpu-topology": '{"version": 2}'})
    no_alloc = gpu_node("no-alloc", "a6000-8gpu-nvlink-bridge-pairs", allocation=None)
    unknown = gpu_node(
        "kubelet-down", "a6000-8gpu-nvlink-bridge-pairs",
        allocation='{"version":1,"allocated":null,"unhealthy":[],"observed":"2026-11-26T10:00:00Z"}',
    )
    body = args(make_pod("vllm", 2), [broken, no_alloc, unknown, gpu_node("ok", "hgx-h100-nvswitch-8gpu")])
    async with serve() as s:
        for _ in range(3):
            code, prio = await s.post("/prioritize", body)
            assert code == 200
        _, metrics = await s.get("/metrics")
    scores = {h["Host"]: h["Score"] for h in prio}
    assert scores["broken"] == scores["no-alloc"] == scores["kubelet-down"] == 5
    assert scores["ok"] > 5
    lines = [r for r in caplog.records if r.getMessage() == "node answered without usable GPU annotations"]
    # once per node, not once per request
    assert sorted(r.node for r in lines) == ["broken", "kubelet-down", "no-alloc"]
    assert 'toposcale_extender_unknown_topology_nodes_total{reason="invalid"} 3.0' in metrics
    assert 'toposcale_extender_unknown_topology_nodes_total{reason="allocation"} 6.0' in metrics


async def test_bad_input_is_400_with_status(serve) -> None:
    async with serve() as s:
        for body, needle in [
            (b"{not json", "malformed JSON"),
            (b"", "empty request body"),
            (b"[1, 2]", "must be a JSON object"),
            (orjson.dumps({"Nodes": None}), "Pod is missing"),
            (orjson.dumps({"Pod": {}, "Nodes": [1]}), "v1.NodeList"),
            (orjson.dumps({"Pod": {}, "NodeNames": [1, 2]}), "list of strings"),
        ]:
            for verb in ("/filter", "/prioritize", "/explain"):
                code, res = await s.post(verb, body)
                assert code == 400, (verb, body)
                assert res["kind"] == "Status" and res["code"] == 400 and res["reason"] == "BadRequest"
                assert needle in res["message"]
        # A bad node item is skipped, never a 500.
        weird = args(make_pod("vllm", 2), [{"metadata": {}}, "x", gpu_node("ok", "hgx-h100-nvswitch-8gpu")])
        code, res = await s.post("/filter", weird)
        assert code == 200
        assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["ok"]
        code, text = await s.get("/explain?pod=default/x")
        assert code == 404 and "POST the ExtenderArgs" in text
        code, text = await s.get("/explain?pod=nope")
        assert code == 400


async def test_body_size_bound(serve) -> None:
    from toposcale.extender.server import ServerConfig

    async with serve(ServerConfig(max_body_bytes=4_000)) as s:
        code, res = await s.post("/filter", args(make_pod("vllm", 2), fleet()))
    assert code == 413 and res["reason"] == "RequestEntityTooLarge"


async def test_explain_post_lists_sets_tiers_and_reasons(serve) -> None:
    async with serve() as s:
        code, doc = await s.post("/explain", args(make_pod("vllm", 4, scope="numa"), fleet()))
    assert code == 200
    assert doc["pod"] == "default/vllm" and doc["gpus"] == 4 and doc["requiredScope"] == "numa"
    rows = {r["node"]: r for r in doc["nodes"]}
    assert doc["nodes"][0]["node"] == "hgx"
    hgx = rows["hgx"]
    assert hgx["outcome"] == "fits" and hgx["tier"] == "nvlink"
    assert hgx["gpus"] in (
        [f"GPU-hgx-{i}" for i in range(4)], [f"GPU-hgx-{i}" for i in range(4, 8)]
    )
    assert set(hgx) >= {"score", "residual", "quality", "reason", "ties", "span"}
    assert rows["a6000"]["tier"] == "numa" and rows["a6000"]["outcome"] == "fits"
    assert rows["l40s-busy"]["outcome"] == "never-fits"
    assert rows["hgx-busy"]["outcome"] == "fails-now"
    assert rows["bare"]["unknown"] == "missing"


async def test_url_prefix_and_metrics(serve) -> None:
    from toposcale.extender.server import ServerConfig

    async with serve(ServerConfig(url_prefix="scheduler/")) as s:
        assert s.url.endswith("/scheduler")
        code, _ = await s.post("/filter", args(make_pod("vllm", 4), fleet()))
        assert code == 200
        code, _ = await s.post("/prioritize", args(make_pod("vllm", 4), fleet()))
        code, health = await s.get("/healthz")
        assert code == 200 and '"ok"' in health
        code, metrics = await s.get("/metrics")
    assert 'toposcale_extender_decision_seconds_count{verb="filter"} 1.0' in metrics
    assert 'toposcale_extender_nodes_scored_total{verb="prioritize"} 6.0' in metrics
    assert 'toposcale_extender_chosen_set_tier_total{tier="nvlink"} 1.0' in metrics
    assert 'toposcale_extender_unknown_topology_nodes_total{reason="missing"} 2.0' in metrics


def test_route_table_matches_contributing_paths() -> None:
    from toposcale.extender.wire import ROUTES

    paths = {path for _, path in ROUTES.values()}
    assert paths == {
        "/filter", "/prioritize", "/explain", "/placeable", "/freeing", "/healthz", "/readyz", "/metrics"
    }
    assert ROUTES["filter"] == ("POST", "/filter") and ROUTES["prioritize"] == ("POST", "/prioritize")


def test_priority_list_encoding_matches_json_for_any_name() -> None:
    from toposcale.extender.wire import priority_list

    for names in (["gpu-0", "gpu-1.example.com"], ['we"ird', "back\\slash", "tab\there", "ünï"]):
        scores = [3, 10, 0, 5][: len(names)]
        assert orjson.loads(priority_list(names, scores)) == [
            {"Host": n, "Score": s} for n, s in zip(names, scores, strict=True)
        ]


async def test_explain_names_the_nvlink_pair_for_free_socket_trade(serve) -> None:
    # A 1-GPU pod goes to the NVLink-pair box and breaks a pair, to keep the other box's free 4-GPU socket
    # whole: defensible for a fleet of 4-GPU pods, and now said where an operator looks.
    nodes = [gpu_node("pairs", "a6000-8gpu-nvlink-bridge-pairs", used=[0, 1]),
             gpu_node("pcie", "rtx4090-8gpu-node-per-socket", used=[0, 1, 2, 3])]
    async with serve() as s:
        code, doc = await s.post("/explain", args(make_pod("one", 1), nodes))
        assert code == 200
        best, other = doc["nodes"]
        assert (best["node"], other["node"]) == ("pairs", "pcie") and best["score"] > other["score"]
        assert best["breaks"] == ["an NVLink pair"] and other["breaks"] == ["a free 4-GPU socket"]
        assert best["reason"].endswith("; keeps a free 4-GPU socket on node pcie; breaks an NVLink pair here")
        assert other["reason"].endswith("; would break a free 4-GPU socket")
        code, doc = await s.post("/explain", args(make_pod("four", 4), nodes))  # a 4-GPU pod breaks neither
        assert all(r.get("breaks", []) == [] and "break" not in r["reason"] for r in doc["nodes"]), doc
