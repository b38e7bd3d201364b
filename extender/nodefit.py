"""Whether a pod may go to a node at all, before GPUs: what kube-scheduler's NodeUnschedulable, NodeAffinity
and TaintToleration filter plugins check. Pure, no I/O.

The filter and prioritize verbs never need this (the scheduler runs these plugins itself and sends only the
nodes they passed); `/placeable` does, since it answers for a pod template over every cached node. Rules,
from k8s.io/component-helpers/scheduling/corev1 (nodeaffinity, taints) and pkg/scheduler/framework/plugins:

- `spec.nodeSelector`: every key=value among the node's labels;
- `spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms`: ORed terms;
  a term ANDs its `matchExpressions` (In, NotIn, Exists, DoesNotExist, Gt, Lt over labels) and `matchFields`
  (`metadata.name` In/NotIn); a term with neither matches nothing;
- taints with effect NoSchedule or NoExecute must each be tolerated (PreferNoSchedule only scores); a
  toleration with an empty key and operator Exists tolerates everything, an empty effect every effect;
- `spec.unschedulable` (cordoned) excludes the node unless the pod tolerates
  `node.kubernetes.io/unschedulable:NoSchedule`.

Resources other than GPUs (cpu, memory, pods), pod (anti-)affinity and topology spread are not checked: the
answer is about GPUs, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """What the admission checks read from a v1.Node."""

    labels: dict[str, str]
    taints: tuple[dict[str, Any], ...]
    unschedulable: bool


def node_meta(node: Any) -> NodeMeta:
    """The labels, taints and cordon of a v1.Node object (malformed parts read as absent)."""
    meta = node.get("metadata") if isinstance(node, dict) else None
    spec = node.get("spec") if isinstance(node, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    labels = {k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) else {}
    spec = spec if isinstance(spec, dict) else {}
    taints = spec.get("taints")
    taints = tuple(t for t in taints if isinstance(t, dict)) if isinstance(taints, list) else ()
    return NodeMeta(labels, taints, spec.get("unschedulable") is True)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(text: Any) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


def _requirement(req: Any, value: str | None) -> bool:
    """One NodeSelectorRequirement against the value of its key (None: the key is absent)."""
    req = _obj(req)
    op = req.get("operator")
    values = req.get("values") if isinstance(req.get("values"), list) else []
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        have, want = _int(value), _int(values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want
    return False  # an unknown operator matches nothing (the apiserver would have rejected it)


def _term(term: Any, name: str, labels: dict[str, str]) -> bool:
    term = _obj(term)
    exprs = term.get("matchExpressions") if isinstance(term.get("matchExpressions"), list) else []
    fields = term.get("matchFields") if isinstance(term.get("matchFields"), list) else []
    if not exprs and not fields:
        return False
    for r in exprs:
        if not _requirement(r, labels.get(str(_obj(r).get("key")))):
            return False
    for r in fields:
        if _obj(r).get("key") != "metadata.name" or not _requirement(r, name):
            return False
    return True


def _tolerates(tolerations: list[Any], taint: dict[str, Any]) -> bool:
    for tol in tolerations:
        tol = _obj(tol)
        effect = tol.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = tol.get("key") or ""
        op = tol.get("operator") or "Equal"
        if not key:
            if op == "Exists":
                return True
            continue
        if key != taint.get("key"):
            continue
        if op == "Exists" or (op == "Equal" and (tol.get("value") or "") == (taint.get("value") or "")):
            return True
    return False


def excluded(pod: dict[str, Any], name: str, node: NodeMeta) -> str | None:
    """Why the pod may not go to this node (a short reason), or None when it may."""
    spec = _obj(pod.get("spec"))
    labels = node.labels
    for key, value in _obj(spec.get("nodeSelector")).items():
        if labels.get(key) != value:
            return "node(s) didn't match Pod's node affinity/selector"
    required = _obj(
        _obj(_obj(spec.get("affinity")).get("nodeAffinity")).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
    )
    terms = required.get("nodeSelectorTerms")
    if isinstance(terms, list) and not any(_term(t, name, labels) for t in terms):
        return "node(s) didn't match Pod's node affinity/selector"
    tolerations = spec.get("tolerations") if isinstance(spec.get("tolerations"), list) else []
    if node.unschedulable and not _tolerates(tolerations, UNSCHEDULABLE_TAINT):
        return "node(s) were unschedulable"
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
            return "node(s) had untolerated taint"
    return None
