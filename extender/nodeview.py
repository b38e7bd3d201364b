"""A Node as the extender sees it: its GPU topology and which GPUs are free, from the agent's annotations.

Parsing and schema-validating an annotation costs far more than scoring, and in `nodeCacheCapable: false`
mode every request carries every Node again, so parsed documents are cached by their exact text (bounded).
A node whose annotation is missing or invalid gets a view with `problem` set, never an exception.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from .topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    Allocation,
    AnnotationError,
    allocation_from_doc,
    parse_observed,
    topology_from_doc,
)
from .topology.model import Topology

_CACHE_LIMIT = 20_000
MAX_FUTURE_S = 300.0  # clock skew allowed between an agent and the extender for an allocation's `observed`


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    topology: Topology | None
    problem: str | None  # why the topology is unknown: "missing" / "invalid: ..." (None when known)
    free_mask: int | None  # None: allocation unknown (no or invalid annotation, kubelet unreachable)
    allocation_problem: str | None
    allocation: Allocation | None = None
    observed_at: float | None = None  # the allocation's `observed`, epoch seconds (set when free_mask is)
    stale: bool = False  # allocation older than the extender's --allocation-max-age (free_mask is None)
    dra: Any = None  # draview.DraNode: the scheduler allocates this node's GPUs via DRA (watch mode only)
    # Outcomes per (k, scope) for this exact view: a view is replaced, never changed, when the node changes.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def problem_kind(self) -> str:
        if self.problem is None:
            return ""
        return "missing" if self.problem.startswith("missing") else "invalid"


class _Lru(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        if len(self) > _CACHE_LIMIT:
            self.popitem(last=False)


_topologies: _Lru = _Lru()
_allocations: _Lru = _Lru()
_views: _Lru = _Lru()


def _parsed(cache: _Lru, parse: Any, text: str) -> Any:
    """Parse an annotation once per distinct text; an invalid one is remembered as its reason."""
    hit = cache.get(text)
    if hit is None:
        try:
            hit = parse(text)
        except AnnotationError as exc:
            hit = f"invalid: {exc}"
        cache.put(text, hit)
    return hit


def _topology(text: str) -> Topology | str:
    return _parsed(_topologies, topology_from_doc, text)


def _allocation(text: str) -> Allocation | str:
    return _parsed(_allocations, allocation_from_doc, text)


def free_mask_of(topo: Topology, alloc: Allocation) -> int | None:
    """Bitmask of GPUs neither allocated nor unhealthy; None when the agent could not learn the allocation."""
    if alloc.allocated is None:
        return None
    mask = (1 << len(topo)) - 1
    busy = alloc.allocated | alloc.unhealthy
    if busy:
        for i, g in enumerate(topo.gpus):
            if g.id in busy or (g.uuid is not None and g.uuid in busy):
                mask &= ~(1 << i)
    return mask


def view_from_annotations(name: str, annotations: Any, resource: str) -> NodeView:
    if not isinstance(annotations, dict):
        annotations = {}
    raw_topo = annotations.get(TOPOLOGY_ANNOTATION)
    raw_alloc = annotations.get(ALLOCATION_ANNOTATION)
    cacheable = isinstance(raw_topo, str) and (raw_alloc is None or isinstance(raw_alloc, str))
    key = (name, resource, raw_topo, raw_alloc) if cacheable else None
    if key is not None:
        hit = _views.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
    view = _view(name, raw_topo, raw_alloc, resource)
    if key is not None:
        _views.put(key, view)
    return view


def _view(name: str, raw_topo: Any, raw_alloc: Any, resource: str) -> NodeView:
    if raw_topo is None:
        return NodeView(name, None, f"missing {TOPOLOGY_ANNOTATION} annotation", None, None)
    if not isinstance(raw_topo, str):
        return NodeView(name, None, f"invalid: {TOPOLOGY_ANNOTATION} is not a string", None, None)
    topo = _topology(raw_topo)
    if isinstance(topo, str):
        return NodeView(name, None, topo, None, None)
    if topo.resource != resource:
        return NodeView(
            name, None, f"invalid: topology describes {topo.resource!r}, extender manages {resource!r}",
            None, None,
        )
    if not isinstance(raw_alloc, str):
        return NodeView(name, topo, None, None, f"missing {ALLOCATION_ANNOTATION} annotation")
    alloc = _allocation(raw_alloc)
    if isinstance(alloc, str):
        return NodeView(name, topo, None, None, f"{ALLOCATION_ANNOTATION} {alloc}")
    free = free_mask_of(topo, alloc)
    if free is None:
        return NodeView(
            name, topo, None, None,
            f"GPU allocation unknown (agent could not reach the kubelet, observed {alloc.observed})", alloc,
        )
    # The agent publishes only the topology's own ids (it writes `allocated: null` otherwise); an id the
    # topology lacks would leave the GPU it stands for counted free (issue 28: scored 10).
    known = {g.id for g in topo.gpus} | {g.uuid for g in topo.gpus if g.uuid}
    foreign = (alloc.allocated or frozenset()) | alloc.unhealthy
    foreign = foreign - known if foreign else foreign
    if foreign:
        return NodeView(
            name, topo, None, None,
            f"{ALLOCATION_ANNOTATION} names GPUs the topology lacks: {sorted(foreign)[:4]}", alloc,
        )
    return NodeView(name, topo, None, free, None, alloc, parse_observed(alloc.observed).timestamp())


_STALE = "stale"  # memo key of a view's stale twin, with the limit (outcome keys are (k, scope) tuples)


def stale_twin(view: NodeView, max_age_s: float, *, future: bool = False) -> NodeView:
    """The view with its allocation treated as unknown because it is too old, or (`future`) observed later
    than now by more than clock skew: such an `observed` would never turn stale, defeating
    --allocation-max-age (issue 28: 9999-12-31). Built once per view."""
    key = (_STALE, max_age_s, future)  # views are shared (cached by annotation text); reasons name the limit
    hit = view.memo.get(key)
    if hit is None:
        observed = view.allocation.observed if view.allocation is not None else "?"
        problem = (
            f"GPU allocation stale: observed {observed}, more than {max_age_s:g}s ago (the agent "
            "re-publishes at least every --refresh-interval: is it running on this node?)"
        )
        if future:
            problem = (
                f"GPU allocation unknown: observed {observed} is more than {MAX_FUTURE_S:g}s in the future "
                "(is the node's clock, or the annotation, wrong?)"
            )
        hit = replace(view, free_mask=None, stale=True, memo={}, allocation_problem=problem)
        view.memo[key] = hit
    return hit  # type: ignore[no-any-return]


def too_old_or_new(view: NodeView, now: float, max_age_s: float) -> NodeView | None:
    """The stale twin of `view` when its allocation is older than `max_age_s` or from the future at `now`
    (wall clock); None when it is current."""
    if view.observed_at is None:
        return None
    if view.observed_at > now + MAX_FUTURE_S:
        return stale_twin(view, max_age_s, future=True)
    if view.observed_at < now - max_age_s:
        return stale_twin(view, max_age_s)
    return None


def aged(view: NodeView | None, cutoff: float, max_age_s: float) -> NodeView | None:
    """`view`, or its stale twin when its allocation was observed before `cutoff` (now - max age) or is
    from the future."""
    if view is not None:
        return too_old_or_new(view, cutoff + max_age_s, max_age_s) or view
    return view


def view_of_node(node: Any, resource: str) -> NodeView | None:
    """The view of a v1.Node object; None when it has no name (nothing can be answered about it)."""
    if not isinstance(node, dict):
        return None
    meta = node.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    return view_from_annotations(name, meta.get("annotations"), resource)
