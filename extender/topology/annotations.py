"""The Node annotations the agent writes and the extender reads: names, JSON documents, validation.

The JSON Schema (`annotations.schema.json`, beside this file) is the published contract; this module turns
documents into the model and back. Validation failures raise `AnnotationError` with a message a person can
act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema.validators
import jsonschema_rs
import orjson

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
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """A schema `pattern` as ECMA-262 reads it: there `$` is the end of the input, while Python's `$` also
    matches before a trailing newline (jsonschema uses re.search as is, so "NV4\\n" passed "^...NV[1-9]...$").
    Every `$` outside a character class and not escaped becomes `\\Z`."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        out.append(r"\Z" if c == "$" and not in_class else c)
        i += 1
    return re.compile("".join(out))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@cache
def _validator(defname: str) -> jsonschema.Draft202012Validator:
    root = schema()
    sub = {"$ref": f"#/$defs/{defname}", "$defs": root["$defs"]}
    return _Validator(sub)  # type: ignore[no-any-return]


@cache
def _fast_validator(defname: str) -> Any:
    """The same schema compiled by jsonschema-rs (Rust, ECMA-262 regexes like `_ecma_regex`): ~150x faster
    than the Python validator on a topology document (10 us against 1.6 ms), which is most of what reading
    5,000 Nodes costs at start-up. A document it refuses gets its first error as the message; one it cannot
    represent (an integer beyond 64 bits) goes to the Python validator."""
    root = schema()
    return jsonschema_rs.Draft202012Validator({"$ref": f"#/$defs/{defname}", "$defs": root["$defs"]})


_MESSAGE_LIMIT = 300  # a schema message quotes the offending value, which can be most of 256 KiB

# RFC 3339 date-time (the schema's `format: date-time`): an offset is required, a naive time is no instant.
# Matched whole (fullmatch), ASCII digits only.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _validate(defname: str, doc: Any, what: str) -> None:
    fast = _fast_validator(defname)
    try:
        if fast.is_valid(doc):
            return
        # Refused: the first error from the same Rust validator. The Python one's cost grows with the
        # document (seconds for a 9.5 MB topology, issue 28), and a client chooses the document.
        e = next(iter(fast.iter_errors(doc)))
    except (ValueError, OverflowError):  # a value it cannot represent (an integer beyond 64 bits...)
        pass
    else:
        where = "/".join(str(p) for p in e.instance_path) or "(document)"
        message = e.message if len(e.message) <= _MESSAGE_LIMIT else e.message[:_MESSAGE_LIMIT] + "..."
        raise AnnotationError(f"{what}: at {where}: {message}")
    try:
        errors = sorted(_validator(defname).iter_errors(doc), key=lambda e: list(e.absolute_path))
    except RecursionError:
        raise AnnotationError(f"{what}: nested too deeply") from None
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(document)"
        message = e.message if len(e.message) <= _MESSAGE_LIMIT else e.message[:_MESSAGE_LIMIT] + "..."
        raise AnnotationError(f"{what}: at {where}: {message}")


def load_json(raw: str | bytes, what: str) -> Any:
    """Annotation text as JSON. orjson caps nesting (1024 levels) with a JSONDecodeError, where the standard
    library raises RecursionError on ~10 KB of brackets; NaN/Infinity are rejected as the JSON spec says."""
    try:
        return orjson.loads(raw)
    except (TypeError, orjson.JSONDecodeError) as exc:
        raise AnnotationError(f"{what}: not JSON: {exc}") from None


# Kubernetes refuses an object whose annotations total more than this (apimachinery's
# TotalAnnotationSizeLimitB): a longer value never came from the apiserver, and parsing it costs (a 9.5 MB
# topology: 0.3 s of JSON decoding alone, on the extender's event loop).
MAX_ANNOTATIONS_BYTES = 256 * 1024


def _load(raw: str | dict[str, Any], what: str) -> Any:
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_ANNOTATIONS_BYTES:
        raise AnnotationError(
            f"{what}: {len(raw)} characters, more than Kubernetes allows for all of an object's annotations "
            f"({MAX_ANNOTATIONS_BYTES} bytes)"
        )
    return load_json(raw, what)


def parse_observed(value: str) -> datetime:
    """An `observed` timestamp (RFC 3339 with offset) as an aware datetime; ValueError otherwise."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time (e.g. 2026-01-02T03:04:05Z)")
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))


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


def _check_shape(doc: Any) -> None:
    """Refuse a topology by its size alone (more GPUs than the schema's maxItems, a links matrix larger than
    one row and column per GPU) before validating it: validation walks every cell, and a client (the
    extender reads full Node objects from its callers) can send a 1,024 x 1,024 matrix (issue 28: 15 s)."""
    if not isinstance(doc, dict):
        return
    gpus, links = doc.get("gpus"), doc.get("links")
    limit = _max_gpus()
    if isinstance(gpus, list) and len(gpus) > limit:
        raise AnnotationError(f"{TOPOLOGY_ANNOTATION}: at gpus: {len(gpus)} GPUs, at most {limit}")
    if isinstance(links, list):
        n = len(gpus) if isinstance(gpus, list) else limit
        if len(links) > n or any(isinstance(row, list) and len(row) > n for row in links):
            raise AnnotationError(
                f"{TOPOLOGY_ANNOTATION}: at links: larger than {n} x {n} (one row and column per GPU)"
            )


@cache
def _max_gpus() -> int:
    return int(schema()["$defs"]["gpuTopology"]["properties"]["gpus"]["maxItems"])


def topology_from_doc(raw: str | dict[str, Any]) -> Topology:
    doc = _load(raw, TOPOLOGY_ANNOTATION)
    _check_shape(doc)
    _validate("gpuTopology", doc, TOPOLOGY_ANNOTATION)
    indexes = [g["index"] for g in doc["gpus"]]
    if len(set(indexes)) != len(indexes):
        raise AnnotationError(f"{TOPOLOGY_ANNOTATION}: GPU index values must be unique, got {indexes}")
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
    try:
        parse_observed(doc["observed"])
    except ValueError as exc:
        raise AnnotationError(f"{ALLOCATION_ANNOTATION}: at observed: {exc}") from None
    allocated = doc["allocated"]
    return Allocation(
        allocated=None if allocated is None else frozenset(allocated),
        unhealthy=frozenset(doc["unhealthy"]),
        observed=doc["observed"],
    )


def dumps(doc: dict[str, Any]) -> str:
    """Canonical text for an annotation value: stable, so an unchanged document never causes a patch."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
