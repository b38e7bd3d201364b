"""The DRA predictor (extender/topology/dra/) against the real kube-scheduler's allocator.

Many random states: fixture topologies published as NVIDIA-shaped ResourceSlices (devices in random slice
order, sometimes split over two slices, random `resource.kubernetes.io/pcieRoot` values, some missing),
devices taken by earlier claims, then waves of pods pinned one per node: `nvidia.com/gpu: k` (extended
resource via DRA, KEP-5004: the scheduler makes the claim) or a ResourceClaimTemplate `exactly: {count: k}`
with and without `matchAttribute: resource.kubernetes.io/pcieRoot`. Each wave sees the devices the earlier
waves got. For every pod, the devices the scheduler wrote into the claim (`status.allocation.devices.results`,
in order, with request names) must equal the prediction, and a pod predicted unsatisfiable must be reported
"cannot allocate all claims".

TOPOSCALE_DRA_ROUNDS (default 8) x TOPOSCALE_DRA_NODES (default 45) nodes x 3 waves: 1,080 pods by default
(about 100 s on two cores); TOPOSCALE_DRA_SEED (15) picks the states.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from typing import Any

from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.topo_text import parse_topo_text

from lab.peers.dra import CLASS, FIXTURES, DraLab, outcome, pod_claim_name

ROUNDS = int(os.environ.get("TOPOSCALE_DRA_ROUNDS", "8"))
NODES = int(os.environ.get("TOPOSCALE_DRA_NODES", "45"))
WAVES = 3
STYLES = ("extended", "claim", "claim-pcie")
TOPOLOGIES = {p.stem: parse_topo_text(p.read_text()) for p in sorted(FIXTURES.glob("*.txt"))}


def random_node(rng: random.Random, name: str) -> tuple[Any, list[dict]]:
    # Mostly 8-GPU boxes, so that three waves of pods still find devices.
    tname = rng.choice([t for t in sorted(TOPOLOGIES) for _ in range(3 if len(TOPOLOGIES[t]) >= 8 else 1)])
    topo = TOPOLOGIES[tname]
    n = len(topo)
    order = list(range(n))
    if rng.random() < 0.6:
        rng.shuffle(order)  # NVIDIA's driver fills the slice from a Go map
    mode = rng.random()
    if mode < 0.2:
        roots = None
    elif mode < 0.6:  # one root per socket, as the hardware would say
        roots = [f"pci0000:{(g.numa if g.numa >= 0 else i // 4) * 0x40:02x}" for i, g in enumerate(topo.gpus)]
    else:
        roots = [rng.choice(["pci0000:00", "pci0000:00", "pci0000:80", None]) for _ in range(n)]
    if n >= 2 and rng.random() < 0.3:
        cut = rng.randrange(1, n)
        names = rng.sample(["a", "m", "z", "b"], 2)
        slices = [
            synth.slice_from_topology(topo, name, order=part, pcie_roots=roots, name=f"{name}-{sfx}")
            for part, sfx in ((order[:cut], names[0]), (order[cut:], names[1]))
        ]
        for s in slices:
            s["spec"]["pool"]["resourceSliceCount"] = 2
    else:
        slices = [synth.slice_from_topology(topo, name, order=order, pcie_roots=roots)]
    return topo, slices


async def wait_decided(lab: DraLab, names: set[str], within: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        pods = await lab.pods()
        if all(outcome(pods[n]) for n in names if n in pods) or time.monotonic() > deadline:
            return pods
        await asyncio.sleep(0.4)


async def test_prediction_equals_real_allocation(kube_cluster: Any) -> None:
    rng = random.Random(int(os.environ.get("TOPOSCALE_DRA_SEED", "15")))
    stats: Counter[str] = Counter()
    mismatches: list[str] = []
    start = time.monotonic()
    async with DraLab(kube_cluster) as lab:
        templates: dict[tuple[int, bool], str] = {}
        for k in (1, 2, 3, 4):
            for match in (False, True):
                name = f"gpus-{k}{'-pcie' if match else ''}"
                await lab.template(name, k, match)
                templates[(k, match)] = name
        template_specs = {
            v: (
                await lab.api.get(f"/apis/resource.k8s.io/v1/namespaces/{lab.ns}/resourceclaimtemplates/{v}")
            )["spec"]["spec"]
            for v in templates.values()
        }
        classes = {CLASS: lab.device_class}
        await asyncio.sleep(1.0)  # the scheduler's informers see the DeviceClass and templates
        for rnd in range(ROUNDS):
            nodes: dict[str, list[dict]] = {}
            setups = []
            for i in range(NODES):
                name = f"{lab.ns}-r{rnd}-n{i}"
                _topo, slices = random_node(rng, name)
                nodes[name] = slices
                devs = [d["name"] for s in slices for d in s["spec"]["devices"]]
                taken = rng.sample(devs, min(len(devs), int(rng.random() ** 3 * len(devs))))
                setups.append((name, slices, taken))
            await lab.gather(lab.add_node(n, s) for n, s, _ in setups)
            await lab.gather(lab.take_devices(n, t) for n, _, t in setups)
            await asyncio.sleep(0.5)
            for wave in range(WAVES):
                claims = await lab.claims()
                allocated = dra.allocated_devices(claims.values())
                expected: dict[str, tuple[str, dra.Prediction]] = {}
                pods = []
                for node, slices in nodes.items():
                    style = rng.choice(STYLES)
                    k = rng.choice([4, 4, 2, 3, 1])
                    pname = f"p-{node.rsplit('-', 2)[-2]}-{node.rsplit('-', 1)[-1]}-w{wave}"
                    pools = dra.prepare_pools(slices, node)
                    if style == "extended":
                        reqs = dra.extended_resource_requests(
                            {
                                "spec": {
                                    "containers": [{"resources": {"requests": {"nvidia.com/gpu": str(k)}}}]
                                }
                            },
                            "nvidia.com/gpu",
                            CLASS,
                        )
                        cons: list = []
                        pod = lab.pod(pname, node, gpus=k)
                    else:
                        tname = templates[(k, style == "claim-pcie")]
                        reqs, cons = dra.claim_requests(template_specs[tname])
                        pod = lab.pod(pname, node, template=tname)
                    pred = dra.predict(pools, allocated, reqs, cons, classes)
                    assert pred.status in ("ok", "unsatisfiable"), pred
                    expected[pname] = (style, pred)
                    pods.append(pod)
                await lab.gather(lab.create_pod(p) for p in pods)
                got = await wait_decided(lab, set(expected))
                claims = await lab.claims()
                for pname, (style, pred) in expected.items():
                    pod = got.get(pname)
                    result = outcome(pod) if pod else None
                    stats[f"{style}:{pred.status}"] += 1
                    if result == "unschedulable" or result is None:
                        if pred.ok or result is None:
                            mismatches.append(f"{pname} ({style}): predicted {pred}, scheduler: {result}")
                        continue
                    cname = pod_claim_name(pod)
                    claim = claims.get(cname or "")
                    if claim is None:
                        mismatches.append(f"{pname} ({style}): bound, but no claim {cname}")
                        continue
                    if style == "extended":
                        ann = claim["metadata"].get("annotations", {})
                        assert ann.get(dra.EXTENDED_RESOURCE_CLAIM_ANNOTATION) == "true", claim["metadata"]
                    results = claim["status"]["allocation"]["devices"]["results"]
                    actual = tuple((r["driver"], r["pool"], r["device"]) for r in results)
                    actual_reqs = tuple(r["request"] for r in results)
                    if (actual, actual_reqs) != (pred.devices, pred.requests):
                        mismatches.append(
                            f"{pname} ({style}): scheduler {[a[2] for a in actual]} {actual_reqs}, "
                            f"predicted {pred}; slices {json.dumps(nodes[pod['spec']['nodeName']])[:2000]}"
                        )
                    else:
                        stats["agree"] += 1
                # Pods the allocator could not serve would retry forever: remove them.
                await lab.gather(
                    lab.api.delete(
                        f"/api/v1/namespaces/{lab.ns}/pods/{n}", params={"gracePeriodSeconds": "0"}
                    )
                    for n, p in got.items()
                    if n in expected and outcome(p) != "bound"
                )
    total = sum(v for k, v in stats.items() if ":" in k)
    print(
        f"\n[dra] {total} pods, {stats['agree']} allocations equal to the prediction, "
        f"{len(mismatches)} mismatches in {time.monotonic() - start:.1f} s; {dict(sorted(stats.items()))}"
    )
    assert not mismatches, "\n".join(mismatches[:10])
    assert total == ROUNDS * NODES * WAVES
    assert all(stats[f"{s}:ok"] > 0 for s in STYLES)
