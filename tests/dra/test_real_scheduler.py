"""DRA nodes through the real kube-scheduler with and without the extender (issue 15, Tests).

A fake DRA driver (lab/peers/dra.py): Nodes without a kubelet, the ResourceSlices NVIDIA's driver would
publish for them, the `gpu.nvidia.com` DeviceClass serving `nvidia.com/gpu`. Each node's
`toposcale.io/gpu-topology` is written with the agent's own serializer (`annotations.topology_to_doc`), its
GPUs' ids being the UUIDs its slice publishes (the join key). The extender runs in watch mode as the shipped
`toposcale-extender` ServiceAccount (deploy/ RBAC, the real authorizer), the "with" scheduler on the shipped
deploy/extender/scheduler-config.yaml (lab/peers/scheduler.py `Scheduler`), the "without" scheduler is
the session's default kube-scheduler (default profile).

- Placement: the same 6 pods of `nvidia.com/gpu: 4` arrive one by one at two identical fleets of 8-GPU nodes
  (three NVSwitch HGX, three A6000 boxes whose driver listed the devices interleaved across the sockets,
  0,4,1,5,2,6,3,7: a Go map's order, so first-fit there gives cross-socket sets). The devices the real
  scheduler wrote into each claim are rated; the simulator (`toposcale.simulate.compare`, allocator
  dra-first-fit, same fleet, same arrivals) predicts both runs.
- Explicit claims: pods with a ResourceClaimTemplate through the shipped configuration without
  `managedResources`: placed where the extender's prediction for the claim is best, the claim holding the
  predicted set.
- Mixed fleet: a device-plugin node beside DRA nodes, each scored with its own predictor.
- Bad input: a slice with attributes the class's selector cannot evaluate (and one nobody defined), a
  slice whose devices the topology annotation does not hold, a claim (a real ResourceClaimTemplate) the
  allocator cannot satisfy, a template never made: neutral with a reason, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import yaml
from toposcale.extender.topology import annotations
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.model import Tier, Topology
from toposcale.extender.topology.scoring import NEUTRAL_SCORE, set_tier
from toposcale.extender.topology.topo_text import parse_topo_text

from lab.peers.dra import FIXTURES, RES, TAINT, DraLab, outcome, pod_claim_name
from lab.peers.scheduler import SCHEDULER_NAME, Extender, Scheduler, http_post
from toposcale.simulate.compare import compare
from toposcale.simulate.fleet import Fleet, NodeType
from toposcale.simulate.tiers import single_numa
from toposcale.simulate.workload import PodSpec

HGX = (FIXTURES / "hgx-h100-nvswitch-8gpu.txt").read_text()
A6000 = (FIXTURES / "a6000-8gpu-nvlink-bridge-pairs.txt").read_text()
INTERLEAVED = [0, 4, 1, 5, 2, 6, 3, 7]
PODS = 6
FLEET = (("hgx", HGX, None), ("hgx", HGX, None), ("hgx", HGX, None)) + (("a6000", A6000, INTERLEAVED),) * 3


def topo_for(text: str, node: str) -> Topology:
    n = len(parse_topo_text(text))
    return parse_topo_text(text, ids=[synth.fake_uuid(node, i) for i in range(n)])


def permuted(topo: Topology, order: list[int] | None) -> Topology:
    """The same machine with its GPUs listed in slice order: what `synth.first_fit_mask` (the simulator's DRA
    node, one slice in list order) then allocates is what the real node's slice gives."""
    if order is None:
        return topo
    return Topology(
        gpus=[topo.gpus[i] for i in order], links=[[topo.links[i][j] for j in order] for i in order]
    )


async def add_dra_node(lab: DraLab, name: str, topo: Topology, slices: list[dict], labels: dict) -> None:
    await lab.add_node(name, slices)
    ann = annotations.dumps(annotations.topology_to_doc(topo))
    await lab.api.merge_patch(
        f"/api/v1/nodes/{name}",
        {"metadata": {"labels": labels, "annotations": {annotations.TOPOLOGY_ANNOTATION: ann}}},
    )


def pod(lab: DraLab, name: str, run: str, *, scheduler: str | None, gpus: int = 4) -> dict[str, Any]:
    q = {"nvidia.com/gpu": str(gpus)}
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.10.1.1",
                # cpu/memory in proportion, as tests/scheduler's pods: the nodes' fit scores are alike
                "resources": {
                    "requests": {"cpu": "8", "memory": "64Gi", **q},
                    "limits": {"memory": "64Gi", **q},
                },
            }
        ],
        "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"toposcale.test/dra-run": run},
        "terminationGracePeriodSeconds": 0,
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": lab.ns}, "spec": spec}


def explain(ext: Extender, p: dict[str, Any], nodes: list[str]) -> dict[str, dict[str, Any]]:
    code, text = http_post(ext.url + "/explain", {"Pod": p, "Nodes": None, "NodeNames": nodes})
    assert code == 200, f"POST /explain: {code} {text}"
    return {r["node"]: r for r in json.loads(text)["nodes"]}


async def wait_until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


async def stream(
    lab: DraLab, run: str, topos: dict[str, Topology], scheduler: str | None, ext: Extender | None
) -> list[tuple[str, int]]:
    """The pods one by one (each bound, its claim allocated, and seen by the extender, before the next):
    (node, GPU mask over the node's topology) per pod, from the claims the scheduler wrote."""
    placed: list[tuple[str, int]] = []
    for i in range(PODS):
        p = pod(lab, f"{run}-p{i}", run, scheduler=scheduler)
        await lab.create_pod(p)

        async def bound(name: str = p["metadata"]["name"]) -> dict | None:
            got = await lab.api.get(f"/api/v1/namespaces/{lab.ns}/pods/{name}")
            return got if outcome(got) == "bound" and pod_claim_name(got) else None

        got = await wait_until(bound, 60, f"pod {p['metadata']['name']} bound")
        node = got["spec"]["nodeName"]
        claim = await lab.api.get(f"{RES}/namespaces/{lab.ns}/resourceclaims/{pod_claim_name(got)}")
        devices = [r["device"] for r in claim["status"]["allocation"]["devices"]["results"]]
        pos = {f"gpu-{g.index}": j for j, g in enumerate(topos[node].gpus)}
        mask = sum(1 << pos[d] for d in devices)
        placed.append((node, mask))
        if ext is not None:  # the extender's claim watch has the allocation: its prediction avoids it
            held = {topos[node].gpus[j].id for j in range(len(topos[node])) if mask >> j & 1}

            async def seen(node: str = node, held: set = held, p: dict = p) -> bool:
                row = explain(ext, p, [node])[node]
                return not held & set(row.get("gpus") or []) and row["outcome"] != "uncached"

            await wait_until(seen, 20, f"the extender to see the claim on {node}")
    return placed


def shares(placed: list[tuple[str, int]], topos: dict[str, Topology]) -> tuple[float, float]:
    nv = sum(set_tier(topos[n], m) == Tier.NVLINK for n, m in placed)
    numa = sum(single_numa(topos[n], m) for n, m in placed)
    return nv / len(placed), numa / len(placed)


def simulated(policy: str, seeds: int) -> list[tuple[float, float]]:
    """The simulator's shares for the test's fleet and arrivals (pods that never end), one per seed."""
    types = tuple(
        NodeType(f"{kind}-{i}", permuted(topo_for(text, f"sim-{i}"), order), 1, kind)
        for i, (kind, text, order) in enumerate(FLEET)
    )
    fleet = Fleet(types)
    arrivals = [PodSpec(f"p{i}", float(i), 4, 1e9) for i in range(PODS)]
    out = []
    for seed in range(seeds):
        r = compare(fleet, arrivals, [policy], seed=seed, allocator="dra-first-fit")[0]
        assert r.placed == PODS
        out.append((r.tier_share(Tier.NVLINK) or 0.0, r.single_numa_share or 0.0))
    return out


async def test_placement_with_and_without_the_extender(deployed: Any, tmp_path: Path) -> None:
    # The simulator first: the extender-driven run is one outcome whatever the seed (the extender's score
    # decides; ties only between nodes giving equal sets); the baseline's spread over seeds is its tolerance.
    sim_with = set(simulated("toposcale", 5))
    assert len(sim_with) == 1, sim_with
    (want_nv, want_numa) = sim_with.pop()
    sim_without = simulated("spread", 40)  # the default profile: LeastAllocated, ties at random
    nv_lo, nv_hi = min(s[0] for s in sim_without), max(s[0] for s in sim_without)
    numa_lo, numa_hi = min(s[1] for s in sim_without), max(s[1] for s in sim_without)
    assert want_nv > nv_hi and want_numa > numa_hi, (want_nv, want_numa, sim_without)

    async with DraLab(deployed.cluster) as lab:
        topos: dict[str, Topology] = {}
        for run in ("without", "with"):
            for i, (_kind, text, order) in enumerate(FLEET):
                name = f"{lab.ns}-{run}-{i}"
                topo = topos[name] = topo_for(text, name)
                sl = synth.slice_from_topology(topo, name, order=order)
                await add_dra_node(lab, name, topo, [sl], {"toposcale.test/dra-run": f"{lab.ns}-{run}"})
        await asyncio.sleep(1.0)  # the schedulers' informers see the slices
        base = await stream(lab, f"{lab.ns}-without", topos, None, None)

        ext = Extender(deployed, tmp_path).start()
        sched = Scheduler(deployed, tmp_path, ext.url)
        try:
            nodes = [n for n in topos if "-with-" in n]
            probe = pod(lab, "probe", "x", scheduler=SCHEDULER_NAME)

            async def dra_rows() -> bool:
                rows = explain(ext, probe, nodes)
                return all(rows[n]["reason"].startswith("DRA first-fit would give") for n in nodes)

            await wait_until(dra_rows, 30, "the extender's DRA predictions for the fleet")
            sched.start()
            withx = await stream(lab, f"{lab.ns}-with", topos, SCHEDULER_NAME, ext)
        finally:
            sched.stop()
            ext.stop()

    got_with, got_without = shares(withx, topos), shares(base, topos)
    print(
        f"\n[dra placement] with the extender nvlink/1-NUMA {got_with}, without {got_without}; simulator: "
        f"with {(want_nv, want_numa)}, without nvlink {nv_lo}..{nv_hi}, 1-NUMA {numa_lo}..{numa_hi}"
    )
    # The extender's run is the simulator's exactly (one outcome, see above).
    assert got_with == (want_nv, want_numa), (withx, got_with)
    # The baseline is one the simulator's spread produces: within its range over 40 seeds (the real
    # scheduler breaks ties with its own random numbers, so only the range can be predicted).
    assert nv_lo <= got_without[0] <= nv_hi and numa_lo <= got_without[1] <= numa_hi, (base, got_without)
    # Hence the margin is at least the simulator's smallest one, which is positive.
    assert got_with[0] - got_without[0] >= want_nv - nv_hi > 0
    assert got_with[1] - got_without[1] >= want_numa - numa_hi > 0


async def test_mixed_fleet_and_bad_input(deployed: Any, tmp_path: Path) -> None:
    async with DraLab(deployed.cluster) as lab:
        ns = lab.ns
        run = {"toposcale.test/dra-run": f"{ns}-mixed"}
        good, plugin, attr, missing = (f"{ns}-{s}" for s in ("good", "plugin", "attr", "missing"))
        topo = topo_for(A6000, good)
        await add_dra_node(lab, good, topo, [synth.slice_from_topology(topo, good, order=INTERLEAVED)], run)
        # A device-plugin node: nvidia.com/gpu in its allocatable, no slice; topology and allocation as the
        # agent publishes them.
        ptopo = topo_for(A6000, plugin)
        await lab.add_node(plugin, [])
        alloc = annotations.Allocation(frozenset(), frozenset(), annotations.now_rfc3339())
        ann = {
            annotations.TOPOLOGY_ANNOTATION: annotations.dumps(annotations.topology_to_doc(ptopo)),
            annotations.ALLOCATION_ANNOTATION: annotations.dumps(annotations.allocation_to_doc(alloc)),
        }
        await lab.api.merge_patch(
            f"/api/v1/nodes/{plugin}", {"metadata": {"labels": run, "annotations": ann}}
        )
        await lab.api.call(
            "PATCH",
            f"/api/v1/nodes/{plugin}/status",
            {"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}},
            content_type="application/strategic-merge-patch+json",
        )
        # Bad: attributes the class's selector cannot evaluate; devices the annotation does not hold.
        atopo = topo_for(HGX, attr)
        bad = synth.slice_from_topology(atopo, attr)
        # gpu-0's `type` an int where the class's selector compares a string (CEL: no such overload), and an
        # attribute nobody defined: the latter is harmless, the former makes the prediction unknown.
        bad["spec"]["devices"][0]["attributes"]["type"] = {"int": 1}
        for d in bad["spec"]["devices"]:
            d["attributes"]["example.com/fancy"] = {"string": "x"}
        await add_dra_node(lab, attr, atopo, [bad], run)
        mtopo = topo_for(HGX, missing)
        other = synth.slice_from_topology(mtopo, missing)  # then other UUIDs and PCI addresses
        for k, d in enumerate(other["spec"]["devices"]):
            d["attributes"]["pcieBusID"] = {"string": f"0000:{0xE0 + k:02x}:00.0"}
            d["attributes"]["uuid"] = {"string": synth.fake_uuid("elsewhere", k)}
        await add_dra_node(lab, missing, mtopo, [other], run)
        await lab.template("nine", 9, False)
        nodes = [good, plugin, attr, missing]

        ext = Extender(deployed, tmp_path).start()
        try:
            p4 = pod(lab, "p4", "x", scheduler=SCHEDULER_NAME)

            async def settled() -> dict | None:
                rows = explain(ext, p4, nodes)
                return rows if rows[good]["reason"].startswith("DRA first-fit") else None

            rows = await wait_until(settled, 30, "the extender's DRA view")
            # Each node with its own predictor: first-fit over the interleaved slice on the DRA node, the
            # device plugin's best set on the same machine as a device-plugin node.
            assert rows[good]["reason"].startswith("DRA first-fit would give gpu-0,gpu-1,gpu-4,gpu-5: "), rows
            assert rows[good]["tier"] == "cross-socket"
            assert not rows[plugin]["reason"].startswith("DRA"), rows[plugin]
            assert rows[plugin]["tier"] in ("numa", "nvlink", "pcie-switch", "host-bridge"), rows[plugin]
            assert rows[plugin]["score"] > rows[good]["score"]
            for n, want in ((attr, "DRA prediction"), (missing, "missing from the topology")):
                assert rows[n]["outcome"] == "unknown" and rows[n]["score"] == NEUTRAL_SCORE, rows[n]
                assert want in rows[n]["reason"], rows[n]
            print(
                "\n[dra bad input] "
                + "; ".join(f"{n.rsplit('-', 1)[-1]}: {rows[n]['reason']}" for n in nodes)
            )
            # A claim from a real template no node can satisfy (9 of 8 GPUs), and one never made.
            p9 = pod(lab, "p9", "x", scheduler=SCHEDULER_NAME, gpus=0)
            p9["spec"]["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": "nine"}]

            async def template_seen() -> dict | None:
                r = explain(ext, p9, [good])
                return r if "not in the extender's cache" not in r[good]["reason"] else None

            r = (await wait_until(template_seen, 30, "the extender's template watch"))[good]
            assert r["outcome"] == "unknown" and r["score"] == NEUTRAL_SCORE, r
            assert "DRA prediction unsatisfiable" in r["reason"], r
            p9["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] = "never-made"
            r = explain(ext, p9, [good])[good]
            assert r["score"] == NEUTRAL_SCORE and "not in the extender's cache" in r["reason"], r
            for verb in ("filter", "prioritize"):
                for body_pod in (p4, p9):
                    code, text = http_post(
                        f"{ext.url}/{verb}", {"Pod": body_pod, "Nodes": None, "NodeNames": nodes}
                    )
                    assert code == 200, (verb, code, text)
        finally:
            ext.stop()
        assert "Traceback" not in ext.proc.text(), ext.proc.tail()


async def test_explicit_claims_through_the_real_scheduler(deployed: Any, tmp_path: Path) -> None:
    """Pods with a ResourceClaimTemplate (`exactly: {gpu.nvidia.com, count: 4}`), no nvidia.com/gpu: the
    scheduler sends them to an extender only without `managedResources` (HTTPExtender.IsInterested), so the
    shipped configuration is used with that list removed. The extender reads the template (or the claim the
    resourceclaim controller made from it) and rates each DRA node on first-fit's set for it: both pods go to
    the HGX node, whose sets are all-NVLink, and each claim holds the set /explain predicted just before."""
    async with DraLab(deployed.cluster) as lab:
        run = {"toposcale.test/dra-run": f"{lab.ns}-claims"}
        topos: dict[str, Topology] = {}
        for name, text, order in ((f"{lab.ns}-a6000", A6000, INTERLEAVED), (f"{lab.ns}-hgx", HGX, None)):
            topo = topos[name] = topo_for(text, name)
            await add_dra_node(lab, name, topo, [synth.slice_from_topology(topo, name, order=order)], run)
        await lab.template("four", 4, False)
        ext = Extender(deployed, tmp_path).start()
        sched = Scheduler(deployed, tmp_path, ext.url)
        del sched.config["extenders"][0]["managedResources"]
        sched.config_path.write_text(yaml.safe_dump(sched.config, sort_keys=False))
        try:
            nodes = list(topos)
            got_sets = []
            for i in range(2):
                p = pod(lab, f"c{i}", run["toposcale.test/dra-run"], scheduler=SCHEDULER_NAME, gpus=0)
                p["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpus"}]}
                p["spec"]["resourceClaims"] = [{"name": "gpus", "resourceClaimTemplateName": "four"}]

                async def predicted(p: dict = p, i: int = i) -> dict | None:
                    rows = explain(ext, p, nodes)
                    hgx = rows[nodes[1]]
                    ready = all(r["reason"].startswith("DRA first-fit") for r in rows.values())
                    # the previous pod's claim seen: its devices are out of the prediction
                    fresh = not got_sets or not set(hgx.get("gpus") or []) & got_sets[-1]
                    return rows if ready and fresh else None

                rows = await wait_until(predicted, 30, "the extender's claim predictions")
                assert rows[nodes[1]]["score"] > rows[nodes[0]]["score"], rows
                if i == 0:
                    sched.start()
                await lab.create_pod(p)

                async def bound(name: str = p["metadata"]["name"]) -> dict | None:
                    got = await lab.api.get(f"/api/v1/namespaces/{lab.ns}/pods/{name}")
                    return got if outcome(got) == "bound" and pod_claim_name(got) else None

                got = await wait_until(bound, 60, f"pod c{i} bound")
                assert got["spec"]["nodeName"] == nodes[1], got["spec"]["nodeName"]
                claim = await lab.api.get(f"{RES}/namespaces/{lab.ns}/resourceclaims/{pod_claim_name(got)}")
                topo = topos[nodes[1]]
                ids = {f"gpu-{g.index}": g.id for g in topo.gpus}
                held = {ids[r["device"]] for r in claim["status"]["allocation"]["devices"]["results"]}
                assert held == set(rows[nodes[1]]["gpus"]), (held, rows[nodes[1]])
                mask = sum(1 << j for j, g in enumerate(topo.gpus) if g.id in held)
                assert set_tier(topo, mask) == Tier.NVLINK and single_numa(topo, mask)
                got_sets.append(held)
                # the extender decided: kube-scheduler's own log has its scores for this pod's nodes
                scored = [a.extender for a in sched.attempts(lab.ns, f"c{i}") if a.extender]
                assert scored and scored[-1][nodes[1]] > scored[-1][nodes[0]], scored
        finally:
            sched.stop()
            ext.stop()
