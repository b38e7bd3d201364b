"""One pod against many nodes: what filter, prioritize and explain answer for each node. Pure, no I/O.

Node views come from the request (full Node objects) or from the watch cache (names only); either way each
node ends up in exactly one outcome: passes (with a 0..10 score), fails now (FailedNodes: preemption or
waiting may help) or never fits (FailedAndUnresolvableNodes). Rules, in order:

- the pod asks no GPU of the managed resource: every node passes, score 0;
- the node's topology is unknown (no annotation, invalid annotation, not in the cache): passes with
  `NEUTRAL_SCORE` unless the pod requires a scope, which cannot then be promised (fails now);
- the node's allocation is unknown (agent could not reach the kubelet): the same; never guessed as "all free";
- otherwise `scoring.decide_raw`; a node short of free GPUs without a required scope still passes with
  score 0: the scheduler's own resource count is authoritative for counts, the annotation may lag.

Outcomes are shared objects, memoized on each node view per (k, scope), so a request over thousands of
unchanged nodes costs a dictionary lookup per node; `scoring` memoizes per (wiring, free mask, k, scope).
"""

from __future__ import annotations

from typing import NamedTuple

from .nodeview import NodeView
from .topology.model import Tier
from .topology.scoring import NEUTRAL_SCORE, NodeDecision, decide_raw, materialize


class Outcome(NamedTuple):
    passes: bool
    unresolvable: bool
    score: int
    reason: str  # set for outcomes without a decision; else built on demand by `reason_of`
    decision: NodeDecision | None = None  # raw (index-based); `reason_of` / explain materialize it
    unknown: str = ""  # "missing" / "invalid" / "uncached" / "allocation" when the extender could not judge


NO_GPU = Outcome(True, False, 0, "pod asks no managed GPU")


def _unknown(kind: str, why: str, scoped: bool) -> Outcome:
    if scoped:
        return Outcome(False, False, 0, f"{why}: a required scope cannot be checked", unknown=kind)
    return Outcome(True, False, NEUTRAL_SCORE, f"{why}: neutral score", unknown=kind)


UNCACHED = {
    s: _unknown("uncached", "node not in the extender's cache (yet)", s) for s in (False, True)
}


def outcome_for(view: NodeView | None, k: int, need: Tier | None) -> Outcome:
    """The outcome for one node (memoized on the view)."""
    scoped = need is not None
    if view is None:
        return UNCACHED[scoped]
    key = (k, need)
    hit = view.memo.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    topo = view.topology
    if topo is None:
        hit = _unknown(view.problem_kind, f"GPU topology unknown: {view.problem}", scoped)
    elif view.free_mask is None:
        hit = _unknown("allocation", f"{view.allocation_problem}", scoped)
    else:
        d = decide_raw(topo, view.free_mask, k, need)
        if d.fits:
            hit = Outcome(True, False, d.score, "", d)
        elif d.count_only and not scoped:
            hit = Outcome(True, False, 0, "", d)
        else:
            hit = Outcome(False, d.unresolvable, 0, "", d)
    view.memo[key] = hit
    return hit


def evaluate(views: list[NodeView | None], k: int, need: Tier | None) -> list[Outcome]:
    """Outcomes in input order (one per view; None = the extender has no view of that node)."""
    if k <= 0:
        return [NO_GPU] * len(views)
    key = (k, need)
    # The memo lookup inline: one dict.get per node in the common (unchanged node) case.
    return [
        (v.memo.get(key) or outcome_for(v, k, need)) if v is not None else outcome_for(None, k, need)
        for v in views
    ]


def reason_of(outcome: Outcome, view: NodeView | None) -> str:
    """The human reason (with this node's GPU ids), built only when someone will read it."""
    if outcome.reason or outcome.decision is None:
        return outcome.reason
    topo = view.topology if view is not None else None
    d = materialize(outcome.decision, topo) if topo is not None else outcome.decision
    if outcome.passes and not d.fits:
        return f"{d.reason} per the node's GPU annotations; passing, the scheduler's own count decides"
    return d.reason
