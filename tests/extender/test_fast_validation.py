"""The annotations are validated by jsonschema-rs first (fast yes) and by jsonschema (the reference, and the
messages) when it says no. The fast path must never accept a document the reference refuses: mutated
versions of real documents (values replaced by other JSON values, keys dropped or added, strings with
newlines and non-ASCII digits) are judged by both, and every refusal of the reference is a refusal of the
product."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toposcale.extender.topology import annotations as ann
from toposcale.extender.topology.topo_text import parse_topo_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topologies"
TOPOLOGY = ann.topology_to_doc(parse_topo_text((FIXTURES / "hgx-h100-nvswitch-8gpu.txt").read_text()))
ALLOCATION = {"version": 1, "allocated": ["GPU-0"], "unhealthy": [], "observed": "2026-12-03T10:00:00Z"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "",
            "NV4",
            "NV4\n",
            "SYS",
            "X",
            "0-3",
            "0-3\n",
            "\u0660-\u0663",
            "GPU-0",
            "nvidia.com/gpu",
            "2026-12-03T10:00:00Z",
            "2026-12-03T10:00:00",
            "0000:1B:00.0",
        ]
    ),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)[1:]))
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop" and isinstance(parent, dict):
            parent.pop(where[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(values)
        else:
            parent[where[-1]] = draw(values)
    return doc


def reference_accepts(defname: str, doc: Any) -> bool:
    try:
        return not any(True for _ in ann._validator(defname).iter_errors(doc))
    except (RecursionError, jsonschema.SchemaError):
        return False


def product_accepts(defname: str, doc: Any) -> bool:
    try:
        ann._validate(defname, doc, "doc")
    except ann.AnnotationError:
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(TOPOLOGY))
def test_a_mutated_topology_is_accepted_only_when_the_reference_accepts_it(doc: dict[str, Any]) -> None:
    assert product_accepts("gpuTopology", doc) == reference_accepts("gpuTopology", doc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(ALLOCATION))
def test_a_mutated_allocation_is_accepted_only_when_the_reference_accepts_it(doc: dict[str, Any]) -> None:
    assert product_accepts("gpuAllocation", doc) == reference_accepts("gpuAllocation", doc)


def test_the_unmutated_documents_pass_the_fast_path() -> None:
    assert ann._fast_validator("gpuTopology").is_valid(TOPOLOGY)
    assert ann._fast_validator("gpuAllocation").is_valid(ALLOCATION)
