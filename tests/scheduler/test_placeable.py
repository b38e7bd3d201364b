"""Placeable replicas against the real kube-scheduler (issue 29, section 1).

The extender's `POST /placeable` says how many more pods like a template fit now, and on which nodes. The
test asks it for the vLLM example's 4-GPU pod while a few small pods already hold GPUs, then creates that
many pods plus one, all at once and ungated: the real scheduler (with the extender, the real device-plugin
policy in the kubelet) binds exactly that many, on the nodes the answer named, and exactly the extra one
stays Pending (Unschedulable). Asked again, the endpoint counts the Pending pod as taking the slot it waits
for: nothing more is placeable.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lab.peers.deployed import Deployed
from lab.peers.scheduler import (
    Extender,
    Fleet,
    Scheduler,
    Stream,
    failed_scheduling,
    gpu_pod,
    http_post,
    running,
    wait_for,
)


def placeable(ext: Extender, pod: dict) -> dict:
    status, text = http_post(ext.url + "/placeable", pod)
    assert status == 200, f"POST /placeable: {status} {text}"
    return json.loads(text)  # type: ignore[no-any-return]


def test_placeable_count_is_what_the_real_scheduler_binds(
    deployed: Deployed, fleet: Fleet, ns: str, tmp_path: Path
) -> None:
    ext = Extender(deployed, tmp_path)
    sched = Scheduler(deployed, tmp_path, ext.url)
    api = fleet.api
    with running(ext.start(), sched.start()):
        s = Stream(fleet, ns, ext)
        # small pods first, so that the count is not just "free GPUs / 4" per node
        s.place("small-hgx", 2, node="e2e-hgx")
        s.place("small-a100", 1, node="e2e-a100")
        s.place("small-l40s", 1, node="e2e-l40s")
        template = gpu_pod("template", 4, gated=False)
        template["metadata"]["namespace"] = ns
        doc = placeable(ext, template)
        n = doc["placeable"]["any"]
        named = {r["node"]: r["any"] for r in doc["nodes"]}
        print("\n/placeable:", json.dumps(doc["placeable"]), named)
        assert doc["unknownNodes"] == 0 and doc["pending"] == {"pods": 0, "placed": 0}, doc
        assert n == sum(named.values()) and n > 0
        assert set(named) <= set(fleet.nodes)  # the template's nodeSelector keeps other tests' nodes out
        # 8-GPU hgx with 2 taken: 1; a6000: 2; a100 and l40s with one taken: 0; the H100 VM: 1
        assert named == {"e2e-hgx": 1, "e2e-a6000": 2, "e2e-h100vm": 1}, named

        names = [f"vllm-{i}" for i in range(n + 1)]
        for name in names:
            s.create(name, 4, gated=False)

        def settled() -> tuple[list[str], list[str]] | None:
            pods = {p["metadata"]["name"]: p for p in api.get(f"/api/v1/namespaces/{ns}/pods")["items"]}
            bound = [x for x in names if pods[x]["spec"].get("nodeName")]
            waiting = [x for x in names if not pods[x]["spec"].get("nodeName")]
            if len(bound) == n and len(waiting) == 1 and failed_scheduling(api, ns, waiting[0]):
                return bound, waiting
            return None

        bound, waiting = wait_for(settled, 60, f"{n} pods bound and one FailedScheduling")
        landed = Counter(s.wait_running(x) for x in bound)
        assert dict(landed) == named, (dict(landed), named)
        fleet.wait_published()
        (extra,) = waiting
        pod = api.pod(ns, extra)
        assert not pod["spec"].get("nodeName")
        cond = {c["type"]: c for c in pod["status"].get("conditions", [])}["PodScheduled"]
        assert (cond["status"], cond["reason"]) == ("False", "Unschedulable"), cond

        def nothing_left() -> dict | None:
            again = placeable(ext, template)
            return again if again["pending"] == {"pods": 1, "placed": 0} else None

        again = wait_for(nothing_left, 30, "the extender to see the Pending pod")
        assert again["placeable"]["any"] == 0, again
    assert not fleet.kubelet.errors, fleet.kubelet.errors


def test_the_adapters_cap_reads_the_real_extender(
    deployed: Deployed, fleet: Fleet, ns: str, tmp_path: Path
) -> None:
    """adapter/placement.py as the adapter runs it (its ServiceAccount lists the pods, the template is a real
    pod as the API serves it, POST /placeable to the real extender over HTTP): two replicas running, the
    fleet fitting two more: vllm_desired_replicas' 10 is cut to 2 + 2 + the allowance 1."""
    import asyncio

    from prometheus_client import CollectorRegistry
    from toposcale.adapter.placement import Placement
    from toposcale.adapter.selectors import parse_selector
    from toposcale.adapter.victims_keeper import ExtenderClient

    from toposcale.core import kube

    ext = Extender(deployed, tmp_path)
    sched = Scheduler(deployed, tmp_path, ext.url)
    with running(ext.start(), sched.start()):
        s = Stream(fleet, ns, ext)
        s.place("small-hgx", 2, node="e2e-hgx")  # as above: 4 four-GPU slots left on the fleet
        s.place("small-a100", 1, node="e2e-a100")
        s.place("small-l40s", 1, node="e2e-l40s")
        for name in ("vllm-a", "vllm-b"):
            s.create(name, 4, gated=False)
            s.wait_running(name)
        fleet.wait_published()

        async def capped() -> tuple[int, dict]:
            api = await kube.api_client(str(deployed.kubeconfigs["toposcale-adapter"]))
            client = ExtenderClient(ext.url)
            try:
                p = Placement(api, client, CollectorRegistry())
                explain: dict = {}
                got = await p.cap(
                    "vllm_desired_replicas", ns, parse_selector("e2e-gpus=4"), 10, 2, 0, 1, explain
                )
                return got, explain
            finally:
                await client.close()
                await api.close()

        got, explain = asyncio.run(capped())
        rec = explain["placement"]
        print("\n", rec["summary"])
        assert rec["placeable"] == 2 and rec["unplacedPending"] == 0, rec
        assert got == 5 and rec["heldBack"] == 5 and rec["reason"] == "no-gpu", rec
        assert rec["summary"].startswith("wanted 10; 2 ready, 0 starting; 2 placeable (node e2e-")
