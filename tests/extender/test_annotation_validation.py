"""The annotation contract as the extender reads it: hostile or malformed annotation text (deep nesting, NV0,
X off the diagonal, repeated GPU indices, a non-RFC-3339 `observed`) is an invalid document, so the node is
answered neutral and the watch keeps going; every fixture the project ships still validates.

The watch-mode test runs against the session's real kube-apiserver (tests/extender/conftest.py `lab`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from toposcale.extender.nodeview import view_of_node
from toposcale.extender.state import ClusterState
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    AnnotationError,
    allocation_from_doc,
    dumps,
    topology_from_doc,
    topology_to_doc,
)
from toposcale.extender.topology.topo_text import parse_topo_text

from tests.extender.conftest import Lab, node_obj, pod_obj
from tests.extender.test_watch import until
from toposcale.kube import api_client

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEEP = "[" * 5000 + "]" * 5000  # ~10 KB: far below the 256 KiB annotation limit, far past any recursion limit


def two_gpus(links: list[list[str]], indexes: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    return {
        "version": 1,
        "resource": "nvidia.com/gpu",
        "gpus": [{"id": "GPU-a", "index": indexes[0]}, {"id": "GPU-b", "index": indexes[1]}],
        "links": links,
    }


def alloc(observed: Any) -> dict[str, Any]:
    return {"version": 1, "allocated": [], "unhealthy": [], "observed": observed}


@pytest.mark.parametrize(
    "text",
    [DEEP, '{"version":1,"gpus":' + DEEP + "}", "{" * 3000, '{"a":' * 3000 + "1" + "}" * 3000],
    ids=["brackets", "inside-object", "unclosed", "nested-objects"],
)
def test_deeply_nested_json_is_an_annotation_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(AnnotationError, match="gpu-topology"):
        topology_from_doc(text)
    with pytest.raises(AnnotationError, match="gpu-allocation"):
        allocation_from_doc(text)


def test_nested_value_inside_an_otherwise_valid_document_is_rejected_with_a_short_message() -> None:
    doc = two_gpus([["X", "NV1"], ["NV1", "X"]])
    doc["unknown"] = [json.loads("[" * 900 + "]" * 900)]
    with pytest.raises(AnnotationError) as err:
        topology_from_doc(dumps(doc))
    assert len(str(err.value)) < 500  # the schema message quotes the value; a log line must stay readable


@pytest.mark.parametrize(
    ("links", "why"),
    [
        ([["X", "NV0"], ["NV0", "X"]], "NV0"),  # zero bonded links is no NVLink
        ([["X", "NV01"], ["NV01", "X"]], "NV01"),
        ([["X", "X"], ["X", "X"]], "diagonal"),  # X means "the GPU itself"
        ([["NV4", "NV4"], ["NV4", "NV4"]], "must be 'X'"),
    ],
)
def test_link_codes_follow_the_nvidia_smi_legend(links: list[list[str]], why: str) -> None:
    with pytest.raises(AnnotationError, match=why):
        topology_from_doc(dumps(two_gpus(links)))


def test_nv_codes_with_bonds_are_valid() -> None:
    topo = topology_from_doc(dumps(two_gpus([["X", "NV18"], ["NV18", "X"]])))
    assert topo.links[0][1] == "NV18"


def test_gpu_index_values_must_be_unique() -> None:
    with pytest.raises(AnnotationError, match="index values must be unique"):
        topology_from_doc(dumps(two_gpus([["X", "NV2"], ["NV2", "X"]], indexes=(1, 1))))


@pytest.mark.parametrize(
    "observed",
    ["yesterday", "", "2026-11-26", "2026-11-26T10:00:00", "2026-13-01T10:00:00Z", "2026-11-26T25:00:00Z",
     "2026-11-26 10:00:00Z", "2026-11-26T10:00:00+0100", 1764151200],
)
def test_observed_must_be_an_rfc3339_date_time(observed: Any) -> None:
    with pytest.raises(AnnotationError, match="observed"):
        allocation_from_doc(dumps(alloc(observed)))


@pytest.mark.parametrize(
    "observed", ["2026-11-26T10:00:00Z", "2026-11-26T10:00:00.123456Z", "2026-11-26T11:00:00+01:00"]
)
def test_rfc3339_forms_the_agent_and_other_writers_use_are_accepted(observed: str) -> None:
    assert allocation_from_doc(dumps(alloc(observed))).observed == observed


@pytest.mark.parametrize("fixture", sorted((FIXTURES / "topologies").glob("*.txt")), ids=lambda p: p.stem)
def test_every_topology_fixture_still_validates(fixture: Path) -> None:
    topo = parse_topo_text(fixture.read_text())
    assert topology_from_doc(dumps(topology_to_doc(topo))).links == topo.links


@pytest.mark.parametrize(
    "printed",
    [FIXTURES / "nvml/h100-x4-vm-nvswitch-b/agent_once.json",
     FIXTURES / "nvml/h100-x4-vm-nvswitch/agent_once_first_run.json"],
    ids=lambda p: p.parent.name,
)
def test_documents_real_agents_printed_still_validate(printed: Path) -> None:
    docs = json.loads(printed.read_text())
    assert len(topology_from_doc(docs[TOPOLOGY_ANNOTATION]).gpus) == 4
    allocation_from_doc(docs[ALLOCATION_ANNOTATION])


def test_node_with_deep_annotation_is_a_neutral_node_view() -> None:
    for key in (TOPOLOGY_ANNOTATION, ALLOCATION_ANNOTATION):
        obj = node_obj("deep", "hgx-h100-nvswitch-8gpu", extra_annotations={})
        obj["metadata"]["annotations"][key] = DEEP
        view = view_of_node(obj, "nvidia.com/gpu")
        assert view is not None and view.free_mask is None  # nothing promised, nothing invented
        assert "not JSON" in (view.problem or view.allocation_problem or "")


async def test_extender_answers_a_node_with_deep_annotation_neutral_over_http(serve) -> None:
    deep = node_obj("deep", None, extra_annotations={TOPOLOGY_ANNOTATION: DEEP})
    ok = node_obj("ok", "hgx-h100-nvswitch-8gpu")
    body = {"Pod": pod_obj("vllm", 4), "Nodes": {"metadata": {}, "items": [deep, ok]}, "NodeNames": None}
    async with serve() as s:
        code, res = await s.post("/filter", body)
        pcode, prio = await s.post("/prioritize", body)
    assert code == pcode == 200
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["deep", "ok"]
    scores = {h["Host"]: h["Score"] for h in prio}
    assert scores["deep"] == 5 and scores["ok"] > 5


async def test_watch_survives_a_deep_annotation_and_sees_the_fix(lab: Lab) -> None:
    deep_name, hgx = lab.name("deep"), lab.name("hgx")
    lab.kube.add(node_obj(deep_name, None, extra_annotations={TOPOLOGY_ANNOTATION: DEEP}))
    lab.kube.add(node_obj(hgx, "hgx-h100-nvswitch-8gpu"))
    api = await api_client(lab.kubeconfig)
    state = ClusterState("nvidia.com/gpu")
    await state.start(api)
    try:
        await until(lambda: state.synced and state.view(hgx) is not None,
                    "initial list despite the deep annotation")
        deep = state.view(deep_name)
        assert deep is not None and deep.topology is None and "not JSON" in (deep.problem or "")
        assert state.view(hgx).topology is not None
        lab.kube.add(node_obj(deep_name, "hgx-h100-nvswitch-8gpu"))  # the agent overwrites it with the truth
        await until(lambda: (v := state.view(deep_name)) is not None and v.topology is not None,
                    "the corrected annotation, seen through the same watch")
    finally:
        await state.stop()
        await api.close()
