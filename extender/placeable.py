"""Placeable replicas: how many more pods like a template the cluster's GPUs take right now. Pure, no I/O.

Shared by the extender's `POST /placeable`, the simulator and the demo. The prediction is filter's and
prioritize's own (`scoring.decide_raw` for device-plugin nodes, DRA first-fit for DRA nodes): on each node
the next pod gets the set the device plugin (or the DRA allocator) is predicted to hand out, and the node
takes pods until its free GPUs can take no more, or the pod's `toposcale.io/required-scope` cannot be met.
Pods already bound but not yet in the agent's allocation annotation are taken out by the caller's views
(the watch cache's assumptions); Pending pods (no node yet, not gated) are placed first, each on the node
the extender scores best for it (ties: the first node in the cache's order; in the cluster the scheduler's
own plugins break them, so which of equally scored nodes a Pending pod takes is a guess, the slot it takes
is not), so they take the slots they will most likely take.

Per placed pod the tier of its predicted set is kept, so the answer says how many land

- `best`: on the best tier any k GPUs of that node can have (an NVSwitch box: nvlink; bridged pairs: for 4
  GPUs, whatever the best 4 of that box are);
- `numa`: on one NUMA node (the set meets `toposcale.io/required-scope: numa`, the filter's own check);
- `any`: anywhere the scheduler's prediction admits it.

A node whose topology or allocation is unknown takes nothing here (a failed source is never read as "all
free"): it is listed in `unknown`, so the count is a lower bound by exactly those nodes. A node that takes
no more pods says why (`HELD_BACK` keys), which the adapter serves as
`toposcale_unplaceable_replicas{reason}`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

from .decisions import Outcome, evaluate
from .draview import DraNode, dra_decision
from .nodeview import NodeView
from .topology import dra
from .topology.allocator import mask_of, wiring
from .topology.model import Tier, Topology
from .topology.scoring import MAX_SCORE, NodeDecision, best_tier, decide_raw, meets_scope

# Why a node takes no more pods of the template (or none of a tier):
NO_GPU = "no-gpu"  # too few free GPUs
NO_TOPOLOGY_SLOT = "no-topology-slot"  # GPUs free, but no set of the asked tier (numa / best)
REQUIRED_SCOPE = "required-scope"  # GPUs free, but none meeting the pod's toposcale.io/required-scope
HELD_BACK = (NO_GPU, NO_TOPOLOGY_SLOT, REQUIRED_SCOPE)
TIERS = ("best", "numa", "any")


@dataclass(frozen=True, slots=True)
class NodeSlots:
    """What one node takes of pods asking k GPUs (scope `need`), from a given free state."""

    count: int
    numa: int
    best: int
    tiers: tuple[str, ...]  # tier label of each pod's predicted set, in placement order
    held_back: str  # HELD_BACK key: why it takes no more ("" when it can never run out, k <= 0)
    reason: str  # the prediction's own words for the refusal that ended the count


@dataclass(slots=True)
class Placeable:
    gpus: int
    scope: str
    nodes: dict[str, NodeSlots]  # every judged node, by name (count may be 0)
    unknown: dict[str, str] = field(default_factory=dict)  # node -> why it could not be judged
    excluded: int = 0  # nodes the template may not go to (selector, affinity, taints, cordon)
    pending: int = 0  # Pending GPU pods placed first
    pending_placed: int = 0  # of which a judged node takes
    pending_on: dict[str, int] = field(default_factory=dict)  # node -> Pending pods placed there
    totals: dict[str, int] = field(default_factory=dict)  # tier -> pods (filled by `placeable`)
    full_by: dict[str, int] = field(default_factory=dict)  # HELD_BACK key -> nodes taking no more
    _doc: dict[str, Any] | None = field(default=None, repr=False)  # doc() with the default limit, kept

    def total(self, tier: str = "any") -> int:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        if not self.totals:
            self._sum()
        return self.totals[tier]

    def _sum(self) -> None:
        count = numa = best = 0
        full: dict[str, int] = {}
        for s in self.nodes.values():
            count += s.count
            numa += s.numa
            best += s.best
            if s.held_back:
                full[s.held_back] = full.get(s.held_back, 0) + 1
        self.totals = {"best": best, "numa": numa, "any": count}
        self.full_by = full

    def held_back(self, tier: str = "any") -> str:
        """Why no more pods of `tier` fit: no-topology-slot when pods fit anywhere but not on that tier;
        required-scope when some node has enough free GPUs but none meeting the scope; else no-gpu."""
        if tier != "any" and self.total("any") > self.total(tier):
            return NO_TOPOLOGY_SLOT
        if self.full_by.get(REQUIRED_SCOPE):
            return REQUIRED_SCOPE
        return NO_GPU

    def doc(self, limit: int = 100) -> dict[str, Any]:
        """The JSON answer: totals per tier, the nodes taking pods (most first, at most `limit`)."""
        if limit == 100 and self._doc is not None:
            return self._doc
        totals = {t: self.total(t) for t in TIERS}
        taking = [(-s.count, name) for name, s in self.nodes.items() if s.count]
        top = heapq.nsmallest(limit, taking)
        doc = {
            "gpus": self.gpus,
            "requiredScope": self.scope,
            "placeable": totals,
            "heldBack": {t: self.held_back(t) for t in TIERS},
            "nodes": [
                {
                    "node": name,
                    "any": self.nodes[name].count,
                    "numa": self.nodes[name].numa,
                    "best": self.nodes[name].best,
                    "tiers": list(self.nodes[name].tiers),
                }
                for _, name in top
            ],
            "nodesTaking": len(taking),
            "nodesJudged": len(self.nodes),
            "nodesFullBy": dict(self.full_by),
            "unknownNodes": len(self.unknown),
            "unknown": dict(sorted(self.unknown.items())[:limit]),
            "excludedNodes": self.excluded,
            "pending": {"pods": self.pending, "placed": self.pending_placed},
        }
        if limit == 100:
            self._doc = doc
        return doc


# ------------------------------------------------------------------ one node's free GPUs, as a state


@dataclass(frozen=True, slots=True)
class _Free:
    """A node's free GPUs as the predictor sees them: a device-plugin mask, or a DRA node's allocation."""

    topo: Topology
    mask: int = 0
    dra: DraNode | None = None

    def decide(self, k: int, need: Tier | None) -> NodeDecision | str:
        if self.dra is not None:
            return dra_decision(self.topo, self.dra, k, need)
        return decide_raw(self.topo, self.mask, k, need)

    def nfree(self) -> int:
        if self.dra is None:
            return self.mask.bit_count()
        pools = self.dra.pools
        return (len(pools.devices) if pools is not None else 0) - len(self.dra.allocated)

    def take(self, d: NodeDecision) -> _Free:
        chosen = mask_of(int(i) for i in d.gpus)
        if self.dra is None:
            return replace(self, mask=self.mask & ~chosen)
        pools = self.dra.pools
        assert pools is not None  # a decision was made on them
        idx = dra.join_topology(self.topo, pools.devices)
        taken = {
            dev.id for dev, i in zip(pools.devices, idx, strict=True) if i is not None and chosen >> i & 1
        }
        return replace(self, dra=replace(self.dra, allocated=self.dra.allocated | frozenset(taken)))


def _refusal(free: _Free, d: NodeDecision | str, k: int, need: Tier | None) -> str:
    """Why the node takes no (more) pods: the scope, when the same pod without it would fit."""
    if need is not None:
        if not isinstance(d, str) and d.unresolvable and k <= len(free.topo):
            return REQUIRED_SCOPE  # no k GPUs of this node ever meet the scope
        plain = free.decide(k, None)
        if not isinstance(plain, str) and plain.fits:
            return REQUIRED_SCOPE
    return NO_GPU  # too few free GPUs (or the DRA allocator found no devices: its words are in `reason`)


def _slots(free: _Free, k: int, need: Tier | None) -> NodeSlots:
    count = numa = best = 0
    tiers: list[str] = []
    top = best_tier(free.topo, k)
    while True:
        d = free.decide(k, need)
        if isinstance(d, str) or not d.fits:
            reason = d if isinstance(d, str) else d.reason
            return NodeSlots(count, numa, best, tuple(tiers), _refusal(free, d, k, need), reason)
        count += 1
        tier = d.tier
        if tier is None:  # one GPU: no link to rate, every placement is as good as any
            tiers.append("single-gpu")
            numa += 1
            best += 1
        else:
            tiers.append(tier.label)
            numa += meets_scope(free.topo, mask_of(int(i) for i in d.gpus), Tier.NUMA)
            best += top is None or tier <= top
        free = free.take(d)
        if not d.gpus:  # defensive: a fitting decision always names its set
            return NodeSlots(count, numa, best, tuple(tiers), NO_GPU, d.reason)


def node_slots(free: _Free, k: int, need: Tier | None) -> NodeSlots:
    """Memoized per (wiring, free mask, k, scope) for device-plugin nodes: identical boxes share the work."""
    if free.dra is not None:
        return _slots(free, k, need)
    w = wiring(free.topo)
    key = ("slots", free.mask, k, need)
    hit = w.memo.get(key)
    if hit is None:
        w.memo[key] = hit = _slots(free, k, need)
    return hit  # type: ignore[no-any-return]


def free_state(view: NodeView | None) -> _Free | str:
    """The node's free GPUs, or why they cannot be judged."""
    if view is None:
        return "node not in the extender's cache (yet)"
    if view.topology is None:
        return f"GPU topology unknown: {view.problem}"
    if view.dra is not None:
        if view.dra.pools is None:
            return view.dra.problem or "ResourceSlices unusable"
        return _Free(view.topology, dra=view.dra)
    if view.free_mask is None:
        return str(view.allocation_problem)
    return _Free(view.topology, mask=view.free_mask)


# ------------------------------------------------------------------ the fleet


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A Pending GPU pod: its shape, which nodes it may go to (`admits(node name)`), and `group`: pods with
    equal (k, need, group) may go to the same nodes (one ranking of the nodes serves them all)."""

    k: int
    need: Tier | None
    admits: Callable[[str], bool]
    group: object = None  # None: pods sharing the same `admits` callable are alike


_UNJUDGED = "node not in the extender's cache (yet)"


def _view_slots(view: NodeView, k: int, need: Tier | None) -> NodeSlots | str:
    """The node's slots from its view as cached (memoized on the view: replaced whenever the node changes)."""
    key = ("slots", k, need)
    hit = view.memo.get(key)
    if hit is None:
        st = free_state(view)
        hit = st if isinstance(st, str) else node_slots(st, k, need)
        view.memo[key] = hit
    return hit  # type: ignore[no-any-return]


def placeable(
    views: Iterable[NodeView | None],
    k: int,
    need: Tier | None,
    *,
    scope: str = "any",
    admits: Callable[[str], bool] | None = None,
    pending: Sequence[PendingPod] = (),
    names: Sequence[str] | None = None,
) -> Placeable:
    """How many more pods asking k GPUs (scope `need`) the nodes take now, Pending pods placed first.

    `views`: the nodes (None: not cached; then `names` gives their names, in the same order); `admits`:
    whether the template may go to a node at all (nodefit.excluded), all when None."""
    views = list(views)
    if names is None:
        names = [v.name for v in views if v is not None]
        if len(names) != len(views):
            raise ValueError("names are needed for views that are None")
    out = Placeable(k, scope, {})
    changed: dict[str, _Free] = {}
    if pending:
        changed = _place_pending(names, views, pending, out)
    if k <= 0:
        return out
    nodes = out.nodes
    unknown = out.unknown
    count = numa = best = 0
    full: dict[str, int] = {}
    memo_key = ("slots", k, need)
    for name, v in zip(names, views, strict=True):
        if admits is not None and not admits(name):
            out.excluded += 1
            continue
        if v is None:
            unknown[name] = _UNJUDGED
            continue
        if changed and name in changed:
            s: NodeSlots | str = node_slots(changed[name], k, need)
        else:
            s = v.memo.get(memo_key) or _view_slots(v, k, need)
        if isinstance(s, str):
            unknown[name] = s
            continue
        nodes[name] = s
        count += s.count
        numa += s.numa
        best += s.best
        if s.held_back:
            full[s.held_back] = full.get(s.held_back, 0) + 1
    out.totals = {"best": best, "numa": numa, "any": count}
    out.full_by = full
    return out


class _LazyViews(Sequence[NodeView | None]):
    def __init__(self, names: Sequence[str], view: Callable[[str], NodeView | None]) -> None:
        self.names, self.view = names, view

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: Any) -> Any:
        return self.view(self.names[i])


class SlotsTable:
    """The watch cache's running count for one (k, scope, template admission): each node's slots and the
    totals, kept between requests. A node whose view changed is `drop`ped (its part taken out of the totals)
    and counted again on the next `answer`, so a request after one node event costs that node, not the
    fleet (`ClusterState.placeable`; `placeable()` above is the same count from scratch)."""

    def __init__(self, k: int, need: Tier | None, scope: str) -> None:
        self.k, self.need, self.scope = k, need, scope
        self.slots: dict[str, NodeSlots] = {}
        self.unknown: dict[str, str] = {}
        self.excluded = 0
        self.count = self.numa = self.best = 0
        self.full: dict[str, int] = {}
        self.dirty: set[str] = set()

    def put(self, name: str, view: NodeView | None) -> None:
        self.drop(name)
        s = _UNJUDGED if view is None else _view_slots(view, self.k, self.need)
        if isinstance(s, str):
            self.unknown[name] = s
            return
        self.slots[name] = s
        self.count += s.count
        self.numa += s.numa
        self.best += s.best
        if s.held_back:
            self.full[s.held_back] = self.full.get(s.held_back, 0) + 1

    def drop(self, name: str) -> None:
        if self.unknown.pop(name, None) is not None:
            return
        s = self.slots.pop(name, None)
        if s is None:
            return
        self.count -= s.count
        self.numa -= s.numa
        self.best -= s.best
        if s.held_back:
            self.full[s.held_back] -= 1

    def answer(
        self,
        names: Sequence[str],
        view: Callable[[str], NodeView | None],
        pending: Sequence[PendingPod],
        outcomes_of: Callable[[int, Tier | None], Sequence[Outcome]],
    ) -> Placeable:
        """The count now: dirty nodes counted again, the Pending pods placed first (they need every view)."""
        for name in self.dirty:
            if name in self.slots or name in self.unknown:
                self.put(name, view(name))
        self.dirty.clear()
        out = Placeable(
            self.k,
            self.scope,
            dict(self.slots),
            unknown=dict(self.unknown),
            excluded=self.excluded,
            totals={"best": self.best, "numa": self.numa, "any": self.count},
            full_by={r: n for r, n in self.full.items() if n},
        )
        if not pending:
            return out
        lazy = _LazyViews(names, view)  # a node's view is needed only where a Pending pod goes
        changed = _place_pending(names, lazy, pending, out, outcomes_of)
        for name, st in changed.items():
            old = out.nodes.get(name)
            if old is None:  # the template may not go there (or it could not be judged)
                continue
            new = node_slots(st, self.k, self.need)
            out.nodes[name] = new
            for tier, a, b in (
                ("any", old.count, new.count),
                ("numa", old.numa, new.numa),
                ("best", old.best, new.best),
            ):
                out.totals[tier] += b - a
            if old.held_back != new.held_back:
                if old.held_back:
                    out.full_by[old.held_back] -= 1
                if new.held_back:
                    out.full_by[new.held_back] = out.full_by.get(new.held_back, 0) + 1
        out.full_by = {r: n for r, n in out.full_by.items() if n}
        return out


_UNUSABLE = 255  # a score byte no search reaches: the node does not take this pod (or may not)
_SCORE = itemgetter(Outcome._fields.index("score"))


def _score_byte(st: _Free, k: int, need: Tier | None) -> int:
    d = st.decide(k, need)
    return d.score if not isinstance(d, str) and d.fits else _UNUSABLE


def _fits(o: Outcome) -> bool:
    return o.passes and not o.unknown and o.decision is not None and o.decision.fits


def _place_pending(
    names: Sequence[str],
    views: Sequence[NodeView | None],
    pending: Sequence[PendingPod],
    out: Placeable,
    outcomes_of: Callable[[int, Tier | None], Sequence[Outcome]] | None = None,
) -> dict[str, _Free]:
    """Each Pending pod, in order, on the node the extender scores best for it (ties: the first in the
    cache's order); its predicted set is then taken. Returns the free state of every node a Pending pod went
    to. Per group of alike pods, the nodes' scores are one bytearray (filter's memoized outcomes), searched
    from the top score down at C speed; a node a pod went to is re-scored in every group."""
    out.pending = len(pending)
    changed: dict[str, _Free] = {}
    at: dict[str, int] = {}  # name -> position, of the changed nodes
    groups: dict[tuple[int, Tier | None, object], tuple[bytearray, list[Outcome], PendingPod]] = {}
    for pod in pending:
        gkey = (pod.k, pod.need, pod.group if pod.group is not None else id(pod.admits))
        g = groups.get(gkey)
        if g is None:
            # filter's own outcomes: the watch cache's outcome table (`outcomes_of`), else memoized per view
            if outcomes_of is not None:
                outcomes = list(outcomes_of(pod.k, pod.need))
            else:
                outcomes = evaluate(list(views), pod.k, pod.need)
            scores = bytearray(map(_SCORE, outcomes))
            for name, st in changed.items():
                scores[at[name]] = _score_byte(st, pod.k, pod.need)
            groups[gkey] = g = (scores, outcomes, pod)
        scores, outcomes, _ = g
        pos = -1
        for score in range(MAX_SCORE, -1, -1):
            pos = scores.find(score)
            while pos >= 0:
                name = names[pos]
                if pod.admits(name) and (name in changed or _fits(outcomes[pos])):
                    break
                scores[pos] = _UNUSABLE  # unknown, not fitting or not admitted: never looked at again
                pos = scores.find(score, pos + 1)
            if pos >= 0:
                break
        if pos < 0:
            continue  # no judged node takes it: it stays Pending (or goes to a node we cannot judge)
        name = names[pos]
        st = changed.get(name)
        if st is None:
            got = free_state(views[pos])
            assert not isinstance(got, str)  # it fits: its free GPUs are known
            st = got
        d = st.decide(pod.k, pod.need)
        assert not isinstance(d, str) and d.fits
        changed[name] = st = st.take(d)
        at[name] = pos
        for gk, (gscores, _, gpod) in groups.items():
            gscores[pos] = _score_byte(st, gk[0], gk[1]) if gpod.admits(name) else _UNUSABLE
        out.pending_placed += 1
        out.pending_on[name] = out.pending_on.get(name, 0) + 1
    return changed
