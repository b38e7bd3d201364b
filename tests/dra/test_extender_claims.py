"""The extender server for pods with explicit ResourceClaims (spec.resourceClaims from a ResourceClaimTemplate
or a named ResourceClaim): each DRA node is scored on the set DRA first-fit gives that claim, with its
`matchAttribute` constraints; unreadable templates, selectors the predictor does not evaluate and claims the
allocator cannot satisfy are neutral with a reason, never a 500. The watch state is fed by hand."""

from __future__ import annotations

from typing import Any

from toposcale.extender.state import ClusterState
from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.scoring import NEUTRAL_SCORE

from lab.objects import gpu_node, make_pod, topology

PAIRS = "a6000-8gpu-nvlink-bridge-pairs"  # NVLink pairs 0-1, 2-3 (socket 0), 4-5, 6-7 (socket 1)


def gpu_slice(node: str, order: list[int], roots: list[str | None] | None = None) -> dict[str, Any]:
    topo = topology(PAIRS, node)
    devs = [
        synth.nvidia_device(
            i,
            uuid=topo.gpus[i].id,
            pci=f"0000:{0x10 + i:02x}:00.0",
            pcie_root=roots[i] if roots is not None else None,
        )
        for i in order
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-gpu.nvidia.com"},
        "spec": {
            "driver": dra.DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devs,
        },
    }


def claim_spec(count: int, *, pcie: bool = False, cel: str | None = None) -> dict[str, Any]:
    ex: dict[str, Any] = {"deviceClassName": dra.DRIVER, "count": count}
    if cel:
        ex["selectors"] = [{"cel": {"expression": cel}}]
    devices: dict[str, Any] = {"requests": [{"name": "gpus", "exactly": ex}]}
    if pcie:
        devices["constraints"] = [{"matchAttribute": dra.PCIE_ROOT}]
    return {"devices": devices}


def template(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"spec": spec},
    }


def claim_pod(
    name: str, *, tmpl: str | None = None, claim: str | None = None, scope: str | None = None
) -> dict[str, Any]:
    pod = make_pod(name, 0, scope=scope)
    ref: dict[str, Any] = {"name": "gpus"}
    if tmpl:
        ref["resourceClaimTemplateName"] = tmpl
    if claim:
        ref["resourceClaimName"] = claim
    pod["spec"]["resourceClaims"] = [ref]
    pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpus"}]}
    return pod


# Socket 1's GPUs listed first, so first-fit is not simply gpu-0..3; roots: one per socket.
ORDER = [4, 6, 5, 7, 0, 1, 2, 3]
ROOTS = ["pci0000:00"] * 4 + ["pci0000:80"] * 4


def fed(*, extended_class: bool = False) -> ClusterState:
    st = ClusterState("nvidia.com/gpu")
    st.nodes_relisted([gpu_node("dra", PAIRS), gpu_node("plugin", PAIRS)], "1")
    st.pods_relisted([], "1")
    st.slices_relisted([gpu_slice("dra", ORDER, ROOTS)], "1")
    st.claims_relisted([], "1")
    # The class need not serve an extended resource for explicit claims.
    st.classes_relisted(
        [synth.gpu_device_class(extended_resource="nvidia.com/gpu" if extended_class else None)], "1"
    )
    st.templates_relisted(
        [
            template("four", claim_spec(4)),
            template("four-pcie", claim_spec(4, pcie=True)),
            template("nine", claim_spec(9)),
            template(
                "semver",
                claim_spec(
                    4,
                    cel="device.attributes['gpu.nvidia.com'].driverVersion.isGreaterThan(semver('550.0.0'))",
                ),
            ),
        ],
        "1",
    )
    return st


def names(pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": nodes}


async def answers(
    s: Any, pod: dict[str, Any], nodes: list[str]
) -> tuple[dict[str, Any], dict[str, int], Any]:
    code, doc = await s.post("/explain", names(pod, nodes))
    assert code == 200, doc
    code, prio = await s.post("/prioritize", names(pod, nodes))
    assert code == 200, prio
    code, res = await s.post("/filter", names(pod, nodes))
    assert code == 200, res
    return {r["node"]: r for r in doc["nodes"]} | {"": doc}, {h["Host"]: h["Score"] for h in prio}, res


async def test_template_claim_scored_on_first_fit(serve) -> None:
    async with serve(state=fed()) as s:
        rows, prio, res = await answers(s, claim_pod("p", tmpl="four"), ["dra", "plugin"])
        r = rows["dra"]
        # First-fit over the slice order: gpu-4, 6, 5, 7 (socket 1's two pairs), named in GPU order.
        assert r["reason"].startswith("DRA first-fit would give gpu-4,gpu-5,gpu-6,gpu-7: "), r
        assert r["outcome"] == "fits" and r["gpus"] == [f"GPU-dra-{i}" for i in (4, 5, 6, 7)]
        assert prio["dra"] == r["score"] > 0
        assert (
            rows["plugin"]["score"] == 0 and "no ResourceSlice serves this node" in rows["plugin"]["reason"]
        )
        assert res["NodeNames"] == ["dra", "plugin"]
        assert rows[""]["gpus"] == 4 and rows[""]["claim"] == "template default/four"


async def test_match_attribute_and_claims_taken(serve) -> None:
    st = fed()
    async with serve(state=st) as s:
        # gpu-4 held: first-fit gives 6,5,7,0 across sockets; with matchAttribute pcieRoot it cannot (only
        # 3 left under pci0000:80) and moves to socket 0's four.
        st.claim_event(
            "ADDED",
            {
                "metadata": {"name": "held", "namespace": "default"},
                "spec": claim_spec(1),
                "status": {
                    "allocation": {
                        "devices": {
                            "results": [
                                {"request": "gpus", "driver": dra.DRIVER, "pool": "dra", "device": "gpu-4"}
                            ]
                        }
                    }
                },
            },
        )
        plain, _, _ = await answers(s, claim_pod("p", tmpl="four"), ["dra"])
        assert plain["dra"]["reason"].startswith("DRA first-fit would give gpu-0,gpu-5,gpu-6,gpu-7"), plain
        pcie, prio, _ = await answers(s, claim_pod("q", tmpl="four-pcie"), ["dra"])
        assert pcie["dra"]["reason"].startswith("DRA first-fit would give gpu-0,gpu-1,gpu-2,gpu-3"), pcie
        assert prio["dra"] > plain["dra"]["score"]  # the same socket's two pairs beat a set across sockets
        # required-scope is checked on the predicted set
        _, _, res = await answers(s, claim_pod("r", tmpl="four", scope="numa"), ["dra"])
        assert "dra" in res["FailedNodes"], res
        _, _, res = await answers(s, claim_pod("t", tmpl="four-pcie", scope="numa"), ["dra"])
        assert res["NodeNames"] == ["dra"], res


async def test_generated_claim_and_named_claim(serve) -> None:
    st = fed(extended_class=True)
    async with serve(state=st) as s:
        # The resourceclaim controller's claim (named in the pod's status) is read, not the template.
        st.claim_event(
            "ADDED", {"metadata": {"name": "p-gpus-x1", "namespace": "default"}, "spec": claim_spec(2)}
        )
        pod = claim_pod("p", tmpl="four")
        pod["status"]["resourceClaimStatuses"] = [{"name": "gpus", "resourceClaimName": "p-gpus-x1"}]
        rows, _, _ = await answers(s, pod, ["dra"])
        assert rows["dra"]["reason"].startswith("DRA first-fit would give gpu-4,gpu-6"), rows
        assert rows[""]["claim"] == "ResourceClaim default/p-gpus-x1 from template default/four"
        rows, _, _ = await answers(s, claim_pod("n", claim="p-gpus-x1"), ["dra"])
        assert rows["dra"]["reason"].startswith("DRA first-fit would give gpu-4,gpu-6"), rows


async def test_bad_claims_are_neutral_with_a_reason(serve) -> None:
    st = fed()
    st.claim_event(
        "ADDED",
        {
            "metadata": {"name": "done", "namespace": "default"},
            "spec": claim_spec(1),
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "gpus", "driver": dra.DRIVER, "pool": "dra", "device": "gpu-0"}
                        ]
                    }
                }
            },
        },
    )
    cases = {
        "missing": (claim_pod("a", tmpl="nope"), "template default/nope is not in the extender's cache"),
        "unsatisfiable": (claim_pod("b", tmpl="nine"), "DRA prediction unsatisfiable"),
        "selector": (claim_pod("c", tmpl="semver"), "DRA prediction unknown"),
        "allocated": (claim_pod("d", claim="done"), "is already allocated"),
        "no-claim": (
            claim_pod("e", claim="ghost"),
            "ResourceClaim default/ghost is not in the extender's cache",
        ),
    }
    async with serve(state=st) as s:
        for what, (pod, want) in cases.items():
            rows, prio, res = await answers(s, pod, ["dra"])
            r = rows["dra"]
            assert r["outcome"] == "unknown" and r["score"] == NEUTRAL_SCORE, (what, r)
            assert want in r["reason"], (what, r)
            assert prio["dra"] == NEUTRAL_SCORE and res["NodeNames"] == ["dra"], what
        # Malformed claim references: still an answer
        pod = claim_pod("f", tmpl="four")
        pod["spec"]["resourceClaims"] = "gpus"
        rows, _, _ = await answers(s, pod, ["dra"])
        assert "not a list" in rows["dra"]["reason"]


async def test_full_node_mode_claim_pod(serve) -> None:
    async with serve(state=fed()) as s:
        body = {"Pod": claim_pod("p", tmpl="four-pcie"), "Nodes": {"items": [gpu_node("dra", PAIRS)]}}
        code, doc = await s.post("/explain", body)
        assert code == 200
        assert doc["nodes"][0]["reason"].startswith("DRA first-fit would give gpu-4,gpu-5,gpu-6,gpu-7"), doc
        code, prio = await s.post("/prioritize", body)
        assert code == 200 and prio[0]["Score"] == doc["nodes"][0]["score"]


async def test_claims_of_other_devices_are_not_gpu_claims(serve) -> None:
    st = fed()
    nic = {
        "metadata": {"name": "nic.example.com"},
        "spec": {"selectors": [{"cel": {"expression": "device.driver == 'nic.example.com'"}}]},
    }
    st.class_event("ADDED", nic)
    nic_spec = {"devices": {"requests": [{"name": "nic", "exactly": {"deviceClassName": "nic.example.com"}}]}}
    st.template_event("ADDED", template("nic", nic_spec))
    # An allocated NIC claim beside the GPU template: only the GPU claim is predicted.
    st.claim_event(
        "ADDED",
        {
            "metadata": {"name": "nic-held", "namespace": "default"},
            "spec": nic_spec,
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "nic", "driver": "nic.example.com", "pool": "dra", "device": "nic-0"}
                        ]
                    }
                }
            },
        },
    )
    async with serve(state=st) as s:
        rows, prio, _ = await answers(s, claim_pod("n", tmpl="nic"), ["dra"])
        assert rows["dra"]["reason"] == "pod asks no managed GPU" and prio["dra"] == 0, rows
        both = claim_pod("b", tmpl="four")
        both["spec"]["resourceClaims"].append({"name": "nic", "resourceClaimName": "nic-held"})
        rows, _, _ = await answers(s, both, ["dra"])
        assert rows["dra"]["reason"].startswith("DRA first-fit would give gpu-4,gpu-5,gpu-6,gpu-7"), rows
