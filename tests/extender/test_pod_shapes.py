"""Pods of the wrong shape and GPU counts in every Quantity form the apiserver accepts.

A pod whose fields have the wrong JSON type is the pod's error (PodError: the extender fails every node with
the reason, as it does for a bad scope), never a 500 and never a 0-GPU pod that passes everywhere. Counts
follow k8s.io/apimachinery resource.Quantity: "1k" is 1000, "1000m" is 1; extended resources must be whole.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from toposcale.extender.pods import PodError, gpu_request, pod_key, required_scope

from lab.objects import gpu_node, make_pod


def with_count(value: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "resources": {"limits": {"nvidia.com/gpu": value}}}]}}


@pytest.mark.parametrize(
    ("value", "want"),
    [("1k", 1000), ("1Ki", 1024), ("1000m", 1), ("2e0", 2), ("4.0", 4), ("4.", 4), ("+2", 2), ("0", 0),
     ("1e3", 1000), ("8000000n", None), (4, 4), (4.0, 4), ("1M", 1_000_000)],
)
def test_whole_numbers_in_any_quantity_form(value: Any, want: int | None) -> None:
    if want is None:
        with pytest.raises(PodError, match="not a whole number"):
            gpu_request(with_count(value))
    else:
        assert gpu_request(with_count(value)) == want


@pytest.mark.parametrize(
    ("value", "why"),
    [("500m", "not a whole number"), ("1.5", "not a whole number"), (" 4", "not a Kubernetes quantity"),
     ("1kk", "not a Kubernetes quantity"), ("", "not a Kubernetes quantity"),
     ("1e999999999", "not a Kubernetes quantity"), ("4" * 100, "not a Kubernetes quantity"),
     ([4], "not a Kubernetes quantity"), (None, "not a Kubernetes quantity"), (float("nan"), "quantity"),
     ("-1", "negative")],
)
def test_unusable_counts_are_pod_errors(value: Any, why: str) -> None:
    with pytest.raises(PodError, match=why):
        gpu_request(with_count(value))


@pytest.mark.parametrize(
    ("pod", "where"),
    [
        ("x", "pod must be an object"),
        ({"metadata": "x", "spec": {}}, "metadata must be an object"),
        ({"metadata": {}, "spec": "x"}, "spec must be an object"),
        ({"spec": {"containers": "x"}}, "spec.containers must be a list"),
        ({"spec": {"containers": {"name": "c"}}}, "spec.containers must be a list"),
        ({"spec": {"containers": ["x"]}}, r"containers\[0\] must be an object"),
        ({"spec": {"containers": [None]}}, r"containers\[0\] must be an object"),
        ({"spec": {"containers": [{"resources": "x"}]}}, r"containers\[0\].resources must be an object"),
        ({"spec": {"containers": [{"resources": {"limits": ["nvidia.com/gpu"]}}]}},
         "limits must be an object"),
        ({"spec": {"containers": [], "initContainers": 3}}, "initContainers must be a list"),
        ({"spec": {"containers": [], "initContainers": [[]]}}, r"initContainers\[0\] must be an object"),
        ({"spec": {"containers": [], "initContainers": [{"restartPolicy": 1}]}}, "restartPolicy"),
    ],
)
def test_wrong_shapes_are_pod_errors_not_zero_gpu_pods(pod: Any, where: str) -> None:
    with pytest.raises(PodError, match=where):
        gpu_request(pod)


@pytest.mark.parametrize(
    ("pod", "where"),
    [({"metadata": []}, "metadata must be an object"),
     ({"metadata": {"annotations": "x"}}, "annotations must be an object"),
     ({"metadata": {"annotations": {"toposcale.io/required-scope": ["nvlink"]}}}, "must be a string")],
)
def test_wrong_metadata_shapes_are_pod_errors(pod: Any, where: str) -> None:
    with pytest.raises(PodError, match=where):
        required_scope(pod)


@pytest.mark.parametrize("pod", ["x", {"metadata": "x"}, {"metadata": {"name": 3, "namespace": []}}, {}])
def test_pod_key_never_raises(pod: Any) -> None:
    assert "/" in pod_key(pod)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(metadata="x"),
        lambda p: p.update(spec="x"),
        lambda p: p["spec"].update(containers="x"),
        lambda p: p["spec"]["containers"][0].update(resources=[]),
        lambda p: p["metadata"].update(annotations=["toposcale.io/required-scope"]),
    ],
    ids=["metadata", "spec", "containers", "resources", "annotations"],
)
async def test_extender_fails_every_node_with_the_reason_for_a_misshapen_pod(serve, mutate) -> None:
    pod = make_pod("vllm", 4)
    mutate(pod)
    nodes = [gpu_node("hgx", "hgx-h100-nvswitch-8gpu"), gpu_node("bare", None)]
    body = {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}
    async with serve() as s:
        code, res = await s.post("/filter", body)
        pcode, prio = await s.post("/prioritize", body)
        _, metrics = await s.get("/metrics")
    assert code == pcode == 200
    assert res["Nodes"]["items"] == []  # never a 0-GPU pod that passes everywhere
    assert set(res["FailedAndUnresolvableNodes"]) == {"hgx", "bare"}
    assert "must be" in res["FailedAndUnresolvableNodes"]["hgx"]
    assert {h["Score"] for h in prio} == {0}
    assert 'code="500"' not in metrics


async def test_extender_counts_1k_gpus_as_1000(serve) -> None:
    pod = make_pod("vllm", 4)
    pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1k"}}
    body = {"Pod": pod, "Nodes": {"metadata": {}, "items": [gpu_node("hgx", "hgx-h100-nvswitch-8gpu")]},
            "NodeNames": None}
    async with serve() as s:
        code, doc = await s.post("/explain", body)
    assert code == 200 and doc["gpus"] == 1000


@pytest.mark.parametrize("count", ["1e30", "18446744073709551616", 1e20, "9" * 60, "9223372036854775807"])
@pytest.mark.parametrize("scope", [None, "nvlink"])
async def test_gpu_counts_beyond_64_bits_are_impossible_pods_on_every_route(serve, count, scope) -> None:
    # No node has that many GPUs: every route answers it as it answers a 100-GPU pod (never a 500; explain
    # used to fail encoding a count of 2^64 or more).
    def body(gpus: Any) -> dict[str, Any]:
        pod = make_pod("huge", 4, scope=scope)
        pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
        return {"Pod": pod, "Nodes": {"metadata": {}, "items": [gpu_node("hgx", "hgx-h100-nvswitch-8gpu")]},
                "NodeNames": None}

    async with serve() as s:
        answers = {}
        for gpus in (count, "100"):
            answers[gpus] = [await s.post(v, body(gpus)) for v in ("/filter", "/prioritize", "/explain")]
        _, metrics = await s.get("/metrics")
    (fcode, fres), (pcode, prio), (ecode, doc) = answers[count]
    assert fcode == pcode == ecode == 200
    want = answers["100"]
    assert fres["FailedNodes"] == want[0][1]["FailedNodes"]
    assert set(fres["FailedAndUnresolvableNodes"]) == set(want[0][1]["FailedAndUnresolvableNodes"])
    assert len(fres["Nodes"]["items"]) == len(want[0][1]["Nodes"]["items"])
    assert prio == want[1][1]
    assert doc["gpus"] == int(Fraction(count))  # exact, a JSON number
    assert [(r["outcome"], r["score"]) for r in doc["nodes"]] == [
        (r["outcome"], r["score"]) for r in want[2][1]["nodes"]
    ]
    assert 'code="500"' not in metrics


async def test_gpu_counts_summed_past_64_bits_explain(serve) -> None:
    pod = make_pod("sum", 4)
    half = str(2**63)
    pod["spec"]["containers"] = [
        {"name": f"c{i}", "resources": {"limits": {"nvidia.com/gpu": half}}} for i in range(2)
    ]
    async with serve() as s:
        code, doc = await s.post("/explain", {"Pod": pod, "Nodes": None, "NodeNames": ["a"]})
    assert code == 200 and doc["gpus"] == 2**64
