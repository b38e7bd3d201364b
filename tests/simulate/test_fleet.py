"""Fleet files: real topologies by relative path, agent annotation JSON, and clear errors for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from toposcale.extender.topology.annotations import TOPOLOGY_ANNOTATION, dumps, topology_to_doc
from toposcale.extender.topology.topo_text import parse_topo_text

from toposcale.simulate.fleet import FleetError, load_fleet

from .conftest import EXAMPLES, TOPOLOGIES


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_fleet_loads_its_real_topologies(path: Path) -> None:
    fleet = load_fleet(path)
    assert fleet.nodes > 0
    for t in fleet.types:
        src = (path.parent / t.source).read_text()
        assert src.startswith("# "), f"{t.source} lost its source line"
        assert t.gpus in (4, 8)


def test_topology_paths_are_relative_to_the_fleet_file(make_fleet, monkeypatch, tmp_path: Path) -> None:
    path = make_fleet(hgx_h100_nvswitch_8gpu=3, l40s_4gpu_two_per_socket=2)
    monkeypatch.chdir(tmp_path.parent)  # not the fleet's folder
    fleet = load_fleet(path)
    assert [(t.name, t.count, t.gpus) for t in fleet.types] == [
        ("hgx-h100-nvswitch-8gpu", 3, 8),
        ("l40s-4gpu-two-per-socket", 2, 4),
    ]
    assert (fleet.nodes, fleet.gpus) == (5, 32)


def test_agent_annotation_json_is_accepted_as_a_topology(tmp_path: Path) -> None:
    topo = parse_topo_text((TOPOLOGIES / "a6000-8gpu-nvlink-bridge-pairs.txt").read_text())
    doc = topology_to_doc(topo)
    (tmp_path / "annotation.json").write_text(dumps(doc))
    node = {"kind": "Node", "metadata": {"name": "gpu-1", "annotations": {TOPOLOGY_ANNOTATION: dumps(doc)}}}
    (tmp_path / "node.json").write_text(json.dumps(node))
    (tmp_path / "fleet.yaml").write_text(
        "nodes:\n"
        "  - {topology: annotation.json, count: 2, name: a}\n"
        "  - {topology: node.json, count: 1, name: b}\n"
    )
    fleet = load_fleet(tmp_path / "fleet.yaml")
    assert [t.topology.links for t in fleet.types] == [topo.links, topo.links]
    assert fleet.types[0].topology.fingerprint == topo.fingerprint


BAD = {
    "not-yaml": ("nodes: [", "not YAML"),
    "not-a-mapping": ("- a\n- b\n", "expected a mapping"),
    "no-nodes": ("nodes: []\n", "nodes: List should have at least 1 item"),
    "zero-count": ("nodes: [{topology: t.txt, count: 0}]\n", "nodes[0].count: Input should be greater than"),
    "text-count": ("nodes: [{topology: t.txt, count: ten}]\n", "nodes[0].count"),
    "typo": ("nodes: [{topology: t.txt, cuont: 1}]\n", "nodes[0].cuont: Extra inputs are not permitted"),
    "missing-file": ("nodes: [{topology: nowhere.txt, count: 1}]\n", "nodes[0].topology 'nowhere.txt'"),
    "not-topo": ("nodes: [{topology: junk.txt, count: 1}]\n", "no header row"),
    "bad-json": ("nodes: [{topology: broken.json, count: 1}]\n", "looks like JSON but is not"),
    "bad-annotation": ("nodes: [{topology: wrong.json, count: 1}]\n", "toposcale.io/gpu-topology"),
    "node-without-annotation": (
        "nodes: [{topology: node.json, count: 1}]\n",
        "has no toposcale.io/gpu-topology",
    ),
    "twice": ("nodes: [{topology: t.txt, count: 1}, {topology: t.txt, count: 2}]\n", "used twice"),
    "too-many": (
        "nodes: [{topology: t.txt, count: 60000}, {topology: t.txt, count: 60000, name: x}]\n",
        "more than the 100000",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fleet_files_raise_a_clear_error(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    shutil.copy(TOPOLOGIES / "l40s-4gpu-two-per-socket.txt", tmp_path / "t.txt")
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"version": 1, "gpus": "many"}))
    (tmp_path / "node.json").write_text(json.dumps({"kind": "Node", "metadata": {"annotations": None}}))
    (tmp_path / "fleet.yaml").write_text(text)
    with pytest.raises(FleetError) as err:
        load_fleet(tmp_path / "fleet.yaml")
    assert expected in str(err.value)
    assert "fleet.yaml" in str(err.value)


def test_a_missing_or_huge_fleet_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot read"):
        load_fleet(tmp_path / "absent.yaml")
    (tmp_path / "huge.yaml").write_text("#" * (2 << 20))
    with pytest.raises(FleetError, match="bytes, more than"):
        load_fleet(tmp_path / "huge.yaml")
