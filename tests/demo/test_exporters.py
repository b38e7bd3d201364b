"""The simulated vLLM replica and dcgm-exporter endpoints: real HTTP on loopback, text that Prometheus'
parser reads with the families, types and labels of the real exporters (tests/fixtures/metrics/)."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from toposcale.demo.fleet import build_fleet
from toposcale.demo.serving import new_request
from toposcale.demo.vllm_sim import HeldGPU, NodeExporter, ReplicaServer, SimReplica

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def series(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Sample name -> (family type, label names); robust to the parser splitting interleaved families."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, (fam.type, frozenset(s.labels)))
    return out


def label_names(fam: object) -> set[str]:
    return {k for s in fam.samples for k in s.labels}  # type: ignore[attr-defined]


async def fetch(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def busy_replica() -> SimReplica:
    r = SimReplica(
        "vllm-qwen-0",
        "demo",
        "gpu-hgx-h100-0",
        [HeldGPU(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 81559) for i in range(4)],
    )
    rng, t = random.Random(0), 0.0
    for _ in range(300):
        t += 0.5
        for _ in range(5):
            r.model.submit(new_request(rng, t, r.params))
        r.model.step(t, 0.5)
        r.publish(0.5)
    return r


async def test_replica_metrics_match_vllm_v1_families() -> None:
    r = busy_replica()
    server = ReplicaServer(r)
    await server.start()
    try:
        ctype, text = await fetch(server.url)
    finally:
        await server.stop()
    assert ctype.startswith("text/plain; version=0.0.4")
    ours = families(text)
    ours_series, real_series = series(text), series((FIXTURES / "vllm_v1.txt").read_text())
    # every series the real server shows (the config info aside) is served, same type, same label names
    missing = set(real_series) - set(ours_series)
    assert missing == {"vllm:cache_config_info"}
    for name, (kind, labels) in real_series.items():
        if name in missing:
            continue
        assert ours_series[name][1] == labels, name
        if not name.endswith("_created"):  # a timestamp companion; its TYPE line varies by client version
            assert ours_series[name][0] == kind, name
    samples = {s.name: s.value for f in ours.values() for s in f.samples if "le" not in s.labels}
    assert samples["vllm:num_requests_waiting"] > 0  # 10 rps into one replica: it queues
    assert 0 < samples["vllm:kv_cache_usage_perc"] <= 1
    assert samples["vllm:kv_cache_usage_perc"] == samples["vllm:gpu_cache_usage_perc"]
    assert samples["vllm:prompt_tokens_total"] > 0 and samples["vllm:prompt_tokens_created"] > 1e9
    assert samples["vllm:e2e_request_latency_seconds_count"] == r.model.success_total
    assert "vllm:time_to_first_token_seconds" in ours


async def test_node_exporter_labels_gpus_with_their_pod() -> None:
    node = build_fleet()[2]  # a6000 box, GPU 4 held by a batch job
    node.allocate("vllm-qwen-3", [node.topology.gpus[i].id for i in range(4)], "demo")
    exp = NodeExporter(node)
    exp.observe({"vllm-qwen-3": 87.0})
    await exp.start()
    try:
        _, text = await fetch(exp.url)
    finally:
        await exp.stop()
    ours = families(text)
    real = families((FIXTURES / "dcgm.txt").read_text())
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"):
        assert ours[name].type == real[name].type  # type: ignore[attr-defined]
        assert label_names(ours[name]) == label_names(real[name])
    util = {s.labels["gpu"]: s for s in ours["DCGM_FI_DEV_GPU_UTIL"].samples}  # type: ignore[attr-defined]
    assert len(util) == 8
    assert {util[str(i)].labels["pod"] for i in range(4)} == {"vllm-qwen-3"}
    assert util["0"].labels["namespace"] == "demo" and util["0"].value == 87
    assert util["4"].labels["namespace"] == "batch"
    assert util["7"].labels["pod"] == "" and util["7"].value == 0
    used = {s.labels["gpu"]: s.value for s in ours["DCGM_FI_DEV_FB_USED"].samples}  # type: ignore[attr-defined]
    free = {s.labels["gpu"]: s.value for s in ours["DCGM_FI_DEV_FB_FREE"].samples}  # type: ignore[attr-defined]
    assert used["0"] + free["0"] == node.memory_mib and used["7"] == 0
