"""The Node annotations the agent writes and the extender reads: names, JSON documents, validation.

The JSON Schema (`annotations.schema.json`, beside this file) is the published contract; this module turns
documents into the model and back. Validation failures raise `AnnotationError` with a message a person can
act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from .model import GPU, Topology

TOPOLOGY_ANNOTATION = "toposcale.io/gpu-topology"
ALLOCATION_ANNOTATION = "toposcale.io/gpu-allocation"
REQUIRED_SCOPE_ANNOTATION = "toposcale.io/required-scope"
VERSION = 1


class AnnotationError(ValueError):
    """An annotation that is not a valid version-1 document."""


@dataclass(frozen=True, slots=True)
class Allocation:
    allocated: frozenset[str] | None  # None: the agent could not reach the kubelet, allocation unknown
    unhealthy: frozenset[str]
    observed: str


@cache
def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("annotations.schema.json").read_text()
    return json.loads(text)


@cache
def _validator(defname: str) -> jsonschema.Draft202012Validator:
    root = schema()
    sub = {"$ref": f"#/$defs/{defname}", "$defs": root["$defs"]}
    return jsonschema.Draft202012Validator(sub)


def _validate(defname: str, doc: Any, what: str) -> None:
    errors = sorted(_validator(defname).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(document)"
        raise AnnotationError(f"{what}: at {where}: {e.message}")


def _load(raw: str | dict[str, Any], what: str) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{what}: not JSON: {exc}") from None


def topology_to_doc(topo: Topology) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": VERSION,
        "resource": topo.resource,
        "gpus": [
            {
                "id": g.id,
                "index": g.index,
                "uuid": g.uuid,
                "pci": g.pci,
                "model": g.model,
                "memory": g.memory,
                "numa": g.numa,
                "cpus": g.cpus,
                "mig": g.mig,
            }
            for g in topo.gpus
        ],
        "links": [list(row) for row in topo.links],
    }
    if topo.unknown:
        doc["unknown"] = list(topo.unknown)
    return doc


def topology_from_doc(raw: str | dict[str, Any]) -> Topology:
    doc = _load(raw, TOPOLOGY_ANNOTATION)
    _validate("gpuTopology", doc, TOPOLOGY_ANNOTATION)
    gpus = [
        GPU(
            id=g["id"],
            index=g["index"],
            uuid=g.get("uuid"),
            pci=g.get("pci"),
            model=g.get("model"),
            memory=g.get("memory"),
            numa=g.get("numa", -1),
            cpus=g.get("cpus"),
            mig=g.get("mig"),
        )
        for g in doc["gpus"]
    ]
    try:
        return Topology(
            gpus=gpus, links=doc["links"], resource=doc["resource"], unknown=doc.get("unknown", [])
        )
    except ValueError as exc:
        raise AnnotationError(f"{TOPOLOGY_ANNOTATION}: {exc}") from None


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def allocation_to_doc(alloc: Allocation) -> dict[str, Any]:
    return {
        "version": VERSION,
        "allocated": None if alloc.allocated is None else sorted(alloc.allocated),
        "unhealthy": sorted(alloc.unhealthy),
        "observed": alloc.observed,
    }


def allocation_from_doc(raw: str | dict[str, Any]) -> Allocation:
    doc = _load(raw, ALLOCATION_ANNOTATION)
    _validate("gpuAllocation", doc, ALLOCATION_ANNOTATION)
    allocated = doc["allocated"]
    return Allocation(
        allocated=None if allocated is None else frozenset(allocated),
        unhealthy=frozenset(doc["unhealthy"]),
        observed=doc["observed"],
    )


def dumps(doc: dict[str, Any]) -> str:
    """Canonical text for an annotation value: stable, so an unchanged document never causes a patch."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
